//! Stage 4: a tenant's rules, compiled once and evaluated per request.
//!
//! [`compile`] turns one policy file into an immutable [`CompiledTenant`],
//! reporting every error with the file and line. [`CompiledTenant::evaluate`]
//! cannot fail: it returns an [`Outcome`], and a condition that errors at run time
//! is [`Outcome::PolicyError`], which denies. It never allows.
//!
//! Evaluation order: the route index yields the rules whose path template matches;
//! method and host narrow them; every matching deny rule is checked first (any one
//! that holds denies); then allow rules in file order, the first that holds allows;
//! otherwise the tenant's default applies.

mod cel;
pub mod cost;
pub mod data;
pub mod downstream;
pub mod file;
mod native;
mod rule_set;
mod sections;
pub mod template;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::cel::Value;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

pub use crate::foundation::document::{API_VERSION, PolicyError};
use crate::identity::{Identity, IdentityConfig};
use crate::request::input::{Body, Input};
use crate::request::path::{RouteIndex, Template};
pub use cel::{Condition, Fields, MAX_CONDITION_BYTES, Reads, json_to_cel};
pub use file::{Effect, Mode, PolicyFile};
use rule_set::RuleSet;
use template::{HeaderTemplate, Scope};
pub use template::{Rendered, valid_header_name};

/// Claims a token commonly carries: JWT (RFC 7519 §4.1), OpenID Connect Core
/// §5.1, OAuth access tokens (RFC 9068, RFC 8693 `act`/`may_act`, RFC 7800
/// `cnf`), and what portcullis itself sets (`spiffe_id`). A condition reading any
/// other claim must declare it under `claims:`, or it is warned about.
pub const KNOWN_CLAIMS: [&str; 34] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "scope",
    "scp",
    "acr",
    "amr",
    "auth_time",
    "azp",
    "client_id",
    "cnf",
    "act",
    "may_act",
    "sid",
    "nonce",
    "typ",
    "email",
    "email_verified",
    "name",
    "preferred_username",
    "given_name",
    "family_name",
    "groups",
    "roles",
    "entitlements",
    "spiffe_id",
    "locale",
    "phone_number",
    "org_id",
    "tenant_id",
];

/// HTTP methods (RFC 9110 §9, RFC 5789 `PATCH`).
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

pub use crate::foundation::limits::MAX_POLICY_FILE_BYTES;
pub use crate::foundation::limits::MAX_RULES_PER_TENANT;

/// A host name or `*.suffix` wildcard, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com` matches `a.example.com` and `a.b.example.com`, not
    /// `example.com`. Holds `.example.com`.
    Suffix(String),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let lower = text.trim().to_ascii_lowercase();
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && !s.starts_with('.')
                && !s.ends_with('.')
        };
        if let Some(rest) = lower.strip_prefix("*.") {
            if valid(rest) {
                return Ok(HostPattern::Suffix(format!(".{rest}")));
            }
        } else if valid(&lower) {
            return Ok(HostPattern::Exact(lower));
        }
        Err(format!(
            "host {text:?} must be a DNS name or a '*.' wildcard, without port"
        ))
    }

    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub id: Arc<str>,
    pub effect: Effect,
    pub public: bool,
    methods: Vec<String>,
    template: Template,
    hosts: Vec<HostPattern>,
    /// Shared with every rule, in any tenant, that has the same source.
    condition: Option<Arc<Condition>>,
    /// What the caller's token must carry for the rule to apply.
    needs: Needs,
    /// A dry-run rule is evaluated and reported, never decides.
    mode: Mode,
}

/// A rule's demands on the credential itself, checked before its condition.
#[derive(Debug, Default)]
struct Needs {
    scopes: Vec<String>,
    acr: Vec<String>,
    max_auth_age: Option<u64>,
}

/// What a rule asked of the credential that the caller's lacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmet {
    /// The scopes the rule names (all of them, as RFC 6750 §3 `scope`).
    Scope(Vec<String>),
    /// A stronger or more recent authentication (RFC 9470 §3).
    StepUp {
        acr_values: Vec<String>,
        max_age: Option<u64>,
    },
}

impl Needs {
    /// The first demand the caller does not meet.
    fn unmet(&self, identity: &Identity, now: u64) -> Option<Unmet> {
        let claims = &identity.claims;
        if !self.scopes.is_empty() {
            let held = claims.get("scope").and_then(Json::as_array);
            let has = |s: &String| held.is_some_and(|h| h.iter().any(|v| v.as_str() == Some(s)));
            if !self.scopes.iter().all(has) {
                return Some(Unmet::Scope(self.scopes.clone()));
            }
        }
        let acr_ok = self.acr.is_empty()
            || claims
                .get("acr")
                .and_then(Json::as_str)
                .is_some_and(|a| self.acr.iter().any(|w| w == a));
        let age_ok = self.max_auth_age.is_none_or(|max| {
            claims
                .get("auth_time")
                .and_then(Json::as_u64)
                .is_some_and(|t| now.saturating_sub(t) <= max)
        });
        if !acr_ok || !age_ok {
            return Some(Unmet::StepUp {
                acr_values: self.acr.clone(),
                max_age: self.max_auth_age,
            });
        }
        None
    }
}

impl Rule {
    /// No `methods` means any method.
    fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    /// No `hosts` means any host.
    fn allows_host(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(host))
    }
}

/// A tenant's rule set, compiled and immutable; shared by `Arc`.
#[derive(Debug)]
pub struct CompiledTenant {
    pub id: Arc<str>,
    /// The file it came from.
    pub source: PathBuf,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: Arc<str>,
    pub hosts: Vec<HostPattern>,
    pub identity: IdentityConfig,
    pub default: Effect,
    /// A dry-run tenant's decisions are reported and then allowed.
    pub mode: Mode,
    /// Request headers the decision log records (never credentials).
    pub log_headers: Vec<String>,
    cors: Option<Cors>,
    /// The rules, resources and response; shared with every tenant whose
    /// files have the same (see [`rule_set`]).
    set: Arc<RuleSet>,
    /// Union of what the conditions read: only these fields are built per
    /// check. The set's, kept here too for the evaluation.
    reads: Arc<Reads>,
    /// What the static checks found that is worth fixing but not fatal.
    pub warnings: Vec<PolicyError>,
    /// Every issuer the tenant trusts (`identity.jwt`, `introspection`,
    /// `envoy_jwt_authn`), and those it declares as shared with other tenants.
    pub issuers: Vec<String>,
    pub shared_issuers: Vec<String>,
}

/// The digest portcullis reports for a policy file's bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Compiles one policy file's text. `file` names it in errors. Files it names
/// must be in its own directory.
pub fn compile(file: &Path, text: &str) -> Result<CompiledTenant, Vec<PolicyError>> {
    compile_with(file, text, &[])
}

/// [`compile`], with `allowed_dirs` besides the file's directory for the files
/// it names (`policy_files.allowed_dirs`; see [`crate::foundation::policy_files`]).
pub fn compile_with(
    file: &Path,
    text: &str,
    allowed_dirs: &[PathBuf],
) -> Result<CompiledTenant, Vec<PolicyError>> {
    compile_limited(
        file,
        text,
        allowed_dirs,
        &crate::foundation::limits::Limits::default(),
    )
}

/// [`compile_with`] under the server's `limits` (rules per tenant, token size,
/// token and replay caches).
pub fn compile_limited(
    file: &Path,
    text: &str,
    allowed_dirs: &[PathBuf],
    limits: &crate::foundation::limits::Limits,
) -> Result<CompiledTenant, Vec<PolicyError>> {
    // A file whose shared sections compiled before need not parse them again.
    compile_split(file, text, allowed_dirs, limits, sections::split(text))
}

/// [`compile_limited`], from `split` when the file could be read in pieces,
/// else from the whole text.
fn compile_split(
    file: &Path,
    text: &str,
    allowed_dirs: &[PathBuf],
    limits: &crate::foundation::limits::Limits,
    split: Option<sections::Split<'_>>,
) -> Result<CompiledTenant, Vec<PolicyError>> {
    let err = |line: Option<usize>, message: String| PolicyError {
        file: file.to_path_buf(),
        line,
        message,
    };
    let (parsed, texts) = match split {
        Some(split) => (Ok(split.spec), Some(split.texts)),
        None => (serde_yaml::from_str::<PolicyFile>(text), None),
    };
    // Check the version before the shape, so a newer file gets a clear message
    // rather than a list of unknown fields. A file that parses with the right
    // version (the common case) is not parsed a second time for this.
    let current = matches!(&parsed, Ok(spec) if spec.api_version == API_VERSION);
    if !current && let Ok(Json::Object(doc)) = serde_yaml::from_str::<Json>(text) {
        match doc.get("apiVersion") {
            Some(Json::String(v)) if v == API_VERSION => {}
            Some(Json::String(v)) if v.starts_with("portcullis/") => {
                return Err(vec![err(
                    line_of(text, 0, "apiVersion"),
                    format!(
                        "apiVersion {v:?} is not supported by this portcullis, which reads {API_VERSION}; upgrade portcullis or keep the file at {API_VERSION}"
                    ),
                )]);
            }
            Some(other) => {
                return Err(vec![err(
                    line_of(text, 0, "apiVersion"),
                    format!("apiVersion must be {API_VERSION:?}, found {other}"),
                )]);
            }
            None => {
                return Err(vec![err(
                    Some(1),
                    format!("file does not start with apiVersion: {API_VERSION}"),
                )]);
            }
        }
    }
    let mut spec: PolicyFile = parsed.map_err(|e| {
        vec![err(
            e.location().map(|l| l.line()),
            format!("invalid policy file: {e}"),
        )]
    })?;
    let mut errors = Vec::new();

    let tenant_ok = !spec.tenant.is_empty()
        && spec
            .tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !tenant_ok {
        errors.push(err(
            line_of(text, 0, "tenant"),
            format!(
                "tenant {:?} must be letters, digits, '-', '_' or '.'",
                spec.tenant
            ),
        ));
    }

    let mut hosts = Vec::new();
    for h in &spec.hosts {
        match HostPattern::parse(h) {
            Ok(p) => hosts.push(p),
            Err(e) => errors.push(err(line_of(text, 0, "hosts"), e)),
        }
    }

    // A bare file name has the empty parent, which would resolve nowhere.
    let base = file.parent().filter(|p| !p.as_os_str().is_empty());
    let files = crate::foundation::policy_files::FileScope::new(
        base.unwrap_or_else(|| Path::new(".")),
        allowed_dirs,
    );
    let identity = IdentityConfig::compile(&spec.identity, &spec.tenant, &files)
        .and_then(|mut i| i.apply_limits(limits, &spec.tenant).map(|()| i))
        .map_err(|e| errors.push(err(line_of(text, 0, "identity"), e)))
        .ok();

    // Tenants made from one template share their compiled rules; a set that
    // compiled clean from equal inputs is reused without compiling again.
    let reads_cookies = identity.as_ref().is_some_and(IdentityConfig::reads_cookies);
    let shared_key = rule_set::Inputs::of(
        &spec,
        texts.as_ref(),
        reads_cookies,
        limits.max_rules_per_tenant,
    )
    .digest();
    let reused = rule_set::clean(&shared_key);
    if reused.is_none()
        && let Some(texts) = &texts
        && sections::parse_into(texts, &mut spec).is_none()
    {
        // A section that does not parse on its own: read the whole file.
        return compile_split(file, text, allowed_dirs, limits, None);
    }
    let compiled = match reused {
        Some(set) => Rules::Reused(set),
        None => Rules::Compiled(Box::new(compile_rules(
            &spec,
            text,
            reads_cookies,
            limits,
            &err,
            &mut errors,
        ))),
    };
    // Headers logged with every decision: never a credential.
    let mut log_headers = Vec::new();
    for name in &spec.audit.log_headers {
        let lower = name.to_ascii_lowercase();
        let credential = ["authorization", "proxy-authorization", "cookie", "dpop"]
            .contains(&lower.as_str())
            || identity
                .as_ref()
                .is_some_and(|i| i.credential_headers().contains(&lower));
        match valid_header_name(&lower) {
            Err(e) => errors.push(err(
                line_of(text, 0, "log_headers"),
                format!("audit.log_headers: {e}"),
            )),
            Ok(()) if credential => errors.push(err(
                line_of(text, 0, "log_headers"),
                format!("audit.log_headers: {lower:?} carries credentials and is never logged"),
            )),
            Ok(()) => log_headers.push(lower),
        }
    }
    let cors = if spec.cors.allow_preflight {
        let at = line_of(text, 0, "cors");
        if spec.cors.allow_origins.is_empty() {
            errors.push(err(
                at,
                "cors.allow_preflight needs cors.allow_origins (origins, or \"*\")".into(),
            ));
        }
        for o in &spec.cors.allow_origins {
            let ok = o == "*"
                || ((o.starts_with("https://") || o.starts_with("http://"))
                    && !o.ends_with('/')
                    && template::safe_value(o));
            if !ok {
                errors.push(err(
                    at,
                    format!("cors.allow_origins: {o:?} must be \"*\" or scheme://host[:port]"),
                ));
            }
        }
        let headers = spec
            .cors
            .allow_headers
            .clone()
            .unwrap_or_else(|| vec!["authorization".into(), "content-type".into()]);
        for h in &headers {
            if h.is_empty() || !template::safe_value(h) {
                errors.push(err(
                    at,
                    format!("cors.allow_headers: {h:?} is not a header name"),
                ));
            }
        }
        Some(Cors {
            any_origin: spec.cors.allow_origins.iter().any(|o| o == "*"),
            origins: spec.cors.allow_origins.clone(),
            headers: headers.join(", ").to_ascii_lowercase(),
            max_age: spec
                .cors
                .max_age
                .unwrap_or(std::time::Duration::from_secs(600))
                .as_secs()
                .to_string(),
        })
    } else {
        None
    };

    let mut warnings = Vec::new();
    if let Rules::Compiled(draft) = &compiled {
        static_checks(
            &spec,
            &draft.set.rules,
            &draft.rule_lines,
            &draft.set.headers,
            &mut |line, message| warnings.push(err(line, message)),
            &mut |line, message| errors.push(err(line, message)),
            text,
        );
    }
    let mut issuers: Vec<String> = spec.identity.jwt.iter().map(|i| i.issuer.clone()).collect();
    issuers.extend(spec.identity.introspection.iter().map(|i| i.issuer.clone()));
    issuers.extend(
        spec.identity
            .envoy_jwt_authn
            .iter()
            .flat_map(|e| e.issuers.iter().cloned()),
    );
    issuers.sort();
    issuers.dedup();
    for shared in &spec.shared_issuers {
        if !issuers.contains(shared) {
            errors.push(err(
                line_of(text, 0, "shared_issuers"),
                format!("shared_issuers: {shared:?} is not an issuer this tenant trusts"),
            ));
        }
    }

    match identity {
        Some(identity) if errors.is_empty() => {
            let set = match compiled {
                Rules::Reused(set) => set,
                Rules::Compiled(draft) => {
                    let clean = warnings.is_empty();
                    rule_set::share(shared_key, RuleSet { clean, ..draft.set })
                }
            };
            Ok(CompiledTenant {
                id: Arc::from(spec.tenant.as_str()),
                source: file.to_path_buf(),
                digest: Arc::from(digest_of(text.as_bytes()).as_str()),
                hosts,
                identity,
                default: spec.default,
                mode: spec.mode,
                log_headers,
                cors,
                reads: Arc::clone(&set.reads),
                set,
                warnings,
                issuers,
                shared_issuers: spec.shared_issuers.clone(),
            })
        }
        _ => Err(errors),
    }
}

/// A file's rule set: one compiled clean from equal inputs, or its own.
enum Rules {
    Reused(Arc<RuleSet>),
    Compiled(Box<Draft>),
}

/// A file's rules, resources and response, compiled (to be shared, see
/// [`rule_set`]), with each rule's line for the checks that follow.
struct Draft {
    set: RuleSet,
    rule_lines: Vec<Option<usize>>,
}

/// Compiles what [`rule_set::Inputs`] names, pushing every error found.
fn compile_rules(
    spec: &PolicyFile,
    text: &str,
    reads_cookies: bool,
    limits: &crate::foundation::limits::Limits,
    err: &dyn Fn(Option<usize>, String) -> PolicyError,
    errors: &mut Vec<PolicyError>,
) -> Draft {
    if spec.rules.len() > limits.max_rules_per_tenant {
        errors.push(err(
            line_of(text, 0, "rules"),
            format!(
                "{} rules; the limit (limits.max_rules_per_tenant) is {}",
                spec.rules.len(),
                limits.max_rules_per_tenant
            ),
        ));
    }
    let mut rules = Vec::with_capacity(spec.rules.len());
    let mut rule_downstream = std::collections::HashMap::new();
    let mut index = RouteIndex::default();
    let mut ids = std::collections::HashSet::new();
    let mut rule_lines = Vec::new();
    let lines = LineIndex::new(text);
    for spec_rule in &spec.rules {
        let at = lines.id_line(&spec_rule.id).unwrap_or(0);
        let rule_err = |key: &str, message: String| {
            err(
                line_of(text, at.saturating_sub(1), key),
                format!("rule {:?}: {message}", spec_rule.id),
            )
        };
        if spec_rule.id.is_empty() || !ids.insert(spec_rule.id.clone()) {
            errors.push(rule_err(
                "id",
                "rule ids must be unique and non-empty".into(),
            ));
        }
        let template = Template::parse(&spec_rule.path)
            .map_err(|e| errors.push(rule_err("path", e.to_string())))
            .ok();
        let condition = match &spec_rule.when {
            Some(src) => Condition::compile_shared(src)
                .map(Some)
                .map_err(|e| errors.push(rule_err("when", e)))
                .unwrap_or(None),
            None => None,
        };
        let mut methods = Vec::new();
        for m in &spec_rule.methods {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                errors.push(rule_err(
                    "methods",
                    format!("method {m:?} must be an upper-case HTTP method"),
                ));
            }
            methods.push(m.clone());
        }
        let mut rule_hosts = Vec::new();
        for h in &spec_rule.hosts {
            match HostPattern::parse(h) {
                Ok(p) => rule_hosts.push(p),
                Err(e) => errors.push(rule_err("hosts", e)),
            }
        }
        // RFC 6749 §3.3 scope tokens; they are quoted in a challenge header.
        let scope_ok = |s: &String| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
        };
        if let Some(bad) = spec_rule
            .scopes
            .iter()
            .chain(&spec_rule.acr)
            .find(|s| !scope_ok(s))
        {
            errors.push(rule_err(
                "scopes",
                format!("{bad:?} is not a scope or acr token (printable ASCII, no space, quote or backslash)"),
            ));
        }
        let demands = !spec_rule.scopes.is_empty()
            || !spec_rule.acr.is_empty()
            || spec_rule.max_auth_age.is_some();
        if demands && (spec_rule.public || spec_rule.effect == Effect::Deny) {
            errors.push(rule_err(
                "scopes",
                "scopes, acr and max_auth_age apply to non-public allow rules only".into(),
            ));
        }
        if spec_rule.public && spec_rule.effect == Effect::Deny {
            errors.push(rule_err(
                "public",
                "public applies to allow rules only; deny rules apply to everyone".into(),
            ));
        }
        if let Some(spec) = &spec_rule.downstream_token {
            if spec_rule.effect == Effect::Deny {
                errors.push(rule_err(
                    "downstream_token",
                    "downstream_token applies to allow rules only".into(),
                ));
            }
            match crate::policy::downstream::Downstream::compile(spec) {
                Ok(d) => {
                    rule_downstream.insert(Arc::from(spec_rule.id.as_str()), d);
                }
                Err(e) => errors.push(rule_err("downstream_token", e)),
            }
        }
        if let Some(template) = template {
            rule_lines.push(lines.line_of(at.saturating_sub(1), "id"));
            index.insert(&template, rules.len());
            rules.push(Rule {
                id: Arc::from(spec_rule.id.as_str()),
                effect: spec_rule.effect,
                public: spec_rule.public,
                methods,
                template,
                hosts: rule_hosts,
                condition,
                needs: Needs {
                    scopes: spec_rule.scopes.clone(),
                    acr: spec_rule.acr.clone(),
                    max_auth_age: spec_rule.max_auth_age.map(|d| d.as_secs()),
                },
                mode: spec_rule.mode,
            });
        }
    }

    index.shrink_to_fit();
    let mut resources = Vec::new();
    let mut resource_index = RouteIndex::default();
    for r in &spec.resources {
        match Template::parse(&r.path) {
            Ok(t) => {
                resource_index.insert(&t, resources.len());
                resources.push((t, r.attributes.clone()));
            }
            Err(e) => errors.push(err(
                line_of_value(text, "path", &r.path),
                format!("resource {:?}: {e}", r.path),
            )),
        }
    }
    resource_index.shrink_to_fit();

    let mut headers = Vec::new();
    for (name, source) in &spec.response.headers {
        // Found only for a message: a miss scans the file twice.
        let at = || line_of(text, 0, name);
        if let Err(e) = valid_header_name(name) {
            errors.push(err(at(), format!("response.headers: {e}")));
            continue;
        }
        match HeaderTemplate::parse(source) {
            Ok(t) => headers.push((name.clone(), t)),
            Err(e) => errors.push(err(at(), format!("response.headers.{name}: {e}"))),
        }
    }
    let mut remove = Vec::new();
    for name in &spec.response.remove {
        let lower = name.to_ascii_lowercase();
        match valid_header_name(&lower) {
            Ok(()) if spec.response.headers.contains_key(&lower) => errors.push(err(
                line_of(text, 0, "remove"),
                format!("response.remove: {lower:?} is also in response.headers; an owned header is already set or removed"),
            )),
            Ok(()) => remove.push(lower),
            Err(e) => errors.push(err(line_of(text, 0, "remove"), format!("response.remove: {e}"))),
        }
    }

    let downstream = spec.response.downstream_token.as_ref().and_then(|d| {
        crate::policy::downstream::Downstream::compile(d)
            .map_err(|e| {
                errors.push(err(
                    line_of(text, 0, "downstream_token"),
                    format!("response.{e}"),
                ))
            })
            .ok()
    });
    // Envoy applies removals after it sets headers: removing Authorization
    // would delete the minted token too.
    let mints = spec.response.downstream_token.is_some() || !rule_downstream.is_empty();
    // Envoy cannot remove one cookie: a token read from a cookie would travel
    // on beside the minted one unless the cookie header goes.
    if mints && reads_cookies && !remove.iter().any(|h| h == "cookie") {
        errors.push(err(
            line_of(text, 0, "downstream_token"),
            "a downstream_token with a cookie token source needs cookie in response.remove, or the caller's token travels on".into(),
        ));
    }
    if mints && remove.iter().any(|h| h == "authorization") {
        errors.push(err(
            line_of(text, 0, "remove"),
            "response.remove must not name authorization with a downstream_token: the minted token replaces it".into(),
        ));
    }
    let mut reads = Reads::default();
    for c in rules.iter().filter_map(|r| r.condition.as_ref()) {
        reads.union(c.reads());
    }
    Draft {
        set: RuleSet {
            rules,
            index,
            resources,
            resource_index,
            headers,
            remove,
            downstream,
            rule_downstream,
            reads: Arc::new(reads),
            clean: false,
        },
        rule_lines,
    }
}

/// The checks that need the whole file: claims no token is known to carry
/// (warnings), header templates reading path parameters no allow rule binds
/// (errors), and rules that can never match (warnings).
#[allow(clippy::too_many_arguments)]
fn static_checks(
    spec: &PolicyFile,
    rules: &[Rule],
    rule_lines: &[Option<usize>],
    headers: &[(String, HeaderTemplate)],
    warn: &mut dyn FnMut(Option<usize>, String),
    error: &mut dyn FnMut(Option<usize>, String),
    text: &str,
) {
    let api_key_claims = spec
        .identity
        .api_keys
        .iter()
        .flat_map(|k| k.keys.iter().flat_map(|k| k.claims.keys()));
    let known: std::collections::BTreeSet<&str> = KNOWN_CLAIMS
        .iter()
        .copied()
        .chain(spec.claims.iter().map(String::as_str))
        .chain(api_key_claims.map(String::as_str))
        .collect();
    // Templated rules read the same claims over and over: word each once.
    let mut worded: std::collections::HashMap<String, Option<String>> =
        std::collections::HashMap::new();
    let mut unknown_claim = |claim: &str| -> Option<String> {
        if known.contains(claim) {
            return None;
        }
        worded
            .entry(claim.to_string())
            .or_insert_with(|| {
                let hint = cel::suggest(claim, known.iter().copied())
                    .map(|k| format!(" (did you mean claims.{k}?)"))
                    .unwrap_or_default();
                Some(format!(
                    "reads claims.{claim}, which is neither a registered claim nor declared under claims:{hint}"
                ))
            })
            .clone()
    };
    for (rule, line) in rules.iter().zip(rule_lines) {
        if let Some(c) = &rule.condition {
            for claim in c.claims() {
                if let Some(m) = unknown_claim(claim) {
                    warn(*line, format!("rule {:?}: condition {m}", rule.id));
                }
            }
        }
        if let Some(m) = rule
            .methods
            .iter()
            .find(|m| !STANDARD_METHODS.contains(&m.as_str()))
        {
            warn(
                *line,
                format!(
                    "rule {:?}: method {m:?} is not a standard HTTP method; the rule matches only requests that use it",
                    rule.id
                ),
            );
        }
    }
    for (name, template) in headers {
        let at = || line_of(text, 0, name);
        for claim in template.claims() {
            if let Some(m) = unknown_claim(claim) {
                warn(at(), format!("response.headers.{name}: template {m}"));
            }
        }
        for param in template.params() {
            let bound = rules
                .iter()
                .any(|r| r.effect == Effect::Allow && r.template.params().any(|p| p == param));
            if !bound {
                error(
                    at(),
                    format!(
                        "response.headers.{name}: template reads params.{param}, but no allow rule's path has {{{param}}}"
                    ),
                );
            }
        }
    }
    // Deny rules are all checked before any allow rule: one without a
    // condition or host restriction denies everything its route covers, and a
    // rule wholly inside that route can never decide.
    for (i, rule) in rules.iter().enumerate() {
        let shadow = rules.iter().enumerate().find(|(j, d)| {
            *j != i
                && d.effect == Effect::Deny
                && d.mode == Mode::Enforce
                && d.condition.is_none()
                && d.hosts.is_empty()
                && (rule.effect == Effect::Allow || *j < i)
                && (d.methods.is_empty()
                    || (!rule.methods.is_empty()
                        && rule.methods.iter().all(|m| d.methods.contains(m))))
                && d.template.covers(&rule.template)
        });
        if let Some((j, d)) = shadow {
            let at = rule_lines[j]
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            warn(
                rule_lines[i],
                format!(
                    "rule {:?} can never match: deny rule {:?}{at} has no condition and denies every request on its route first",
                    rule.id, d.id
                ),
            );
        }
    }
}

/// The first line at or after `from` (0-based) whose key is `key`.
fn line_of(text: &str, from: usize, key: &str) -> Option<usize> {
    line_of_skipping(text, text.lines().skip(from), from, key)
}

/// [`line_of`] over `rest`, the lines of `text` from line index `from` on.
fn line_of_skipping<'t>(
    text: &'t str,
    rest: impl Iterator<Item = &'t str>,
    from: usize,
    key: &str,
) -> Option<usize> {
    let is_key = |line: &str| {
        let t = line.trim_start().trim_start_matches("- ").trim_start();
        t.strip_prefix(key)
            .and_then(|r| r.trim_start_matches(['"', '\'']).strip_prefix(':'))
            .is_some()
            || t.strip_prefix('"')
                .or_else(|| t.strip_prefix('\''))
                .and_then(|t| t.strip_prefix(key))
                .is_some_and(|r| r.trim_start_matches(['"', '\'']).starts_with(':'))
    };
    rest.enumerate()
        .map(|(i, l)| (i + from, l))
        .find(|(_, l)| is_key(l))
        .or_else(|| text.lines().enumerate().find(|(_, l)| is_key(l)))
        .map(|(i, _)| i + 1)
}

/// The value of a `key: value` line (the value may be quoted).
fn value_of<'l>(line: &'l str, key: &str) -> Option<&'l str> {
    let t = line.trim_start().trim_start_matches("- ").trim_start();
    let rest = t.strip_prefix(key)?.strip_prefix(':')?.trim();
    Some(rest.trim_matches(['"', '\'']))
}

/// The line of `key: value` (the value may be quoted).
fn line_of_value(text: &str, key: &str, value: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .find_map(|(i, l)| (value_of(l, key) == Some(value)).then_some(i + 1))
}

/// A file's line starts and the first line of each `id:` value, built once so
/// that finding every rule's line is linear in the file rather than quadratic
/// (each lookup used to scan the file from its start). Answers exactly as
/// [`line_of`] and [`line_of_value`] do.
struct LineIndex<'t> {
    text: &'t str,
    /// Byte offset of each line `str::lines` yields.
    starts: Vec<usize>,
    ids: std::collections::HashMap<&'t str, usize>,
}

impl<'t> LineIndex<'t> {
    fn new(text: &'t str) -> Self {
        let mut starts = Vec::new();
        let mut ids = std::collections::HashMap::new();
        let mut at = 0;
        for (i, line) in text.lines().enumerate() {
            starts.push(at);
            // `lines` drops the '\n' (and a '\r' before it); step past both.
            at += line.len();
            if text[at..].starts_with("\r\n") {
                at += 2;
            } else if text[at..].starts_with('\n') {
                at += 1;
            }
            if let Some(v) = value_of(line, "id") {
                ids.entry(v).or_insert(i + 1);
            }
        }
        Self { text, starts, ids }
    }

    /// As `line_of_value(text, "id", id)`.
    fn id_line(&self, id: &str) -> Option<usize> {
        self.ids.get(id).copied()
    }

    /// As `line_of(text, from, key)`.
    fn line_of(&self, from: usize, key: &str) -> Option<usize> {
        let rest = self
            .starts
            .get(from)
            .map_or("", |&start| &self.text[start..]);
        line_of_skipping(self.text, rest.lines(), from, key)
    }
}

/// What one rule did, for `portcullis check` explanations.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleTrace {
    pub rule: String,
    pub effect: Effect,
    pub result: String,
}

/// A tenant's compiled CORS preflight settings.
#[derive(Debug)]
struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    /// `Access-Control-Allow-Headers` value.
    headers: String,
    /// `Access-Control-Max-Age` value, in seconds.
    max_age: String,
}

/// The result of evaluating a tenant's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A CORS preflight portcullis answers itself, with these headers.
    CorsPreflight(Vec<(String, String)>),
    /// A CORS preflight from an origin, or for a method, the tenant does not allow.
    CorsRejected,
    Allow(Arc<str>),
    Deny(Arc<str>),
    /// A matching rule's condition failed to evaluate.
    PolicyError(Arc<str>, String),
    /// A matching rule reads a body that is truncated or not JSON.
    BodyUnavailable(Arc<str>),
    /// A matching rule reads the query, and a parameter name repeats.
    AmbiguousQuery(Arc<str>),
    /// No rule held: the tenant's default applies.
    NoMatch,
    /// No rule held, and an allow rule that would have applied asked for more
    /// than the caller's credential carries.
    Unmet(Arc<str>, Unmet),
}

/// Evaluation output: the outcome, the deciding rule's path parameters, and
/// (when asked) what every candidate rule did.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub outcome: Outcome,
    pub params: Vec<(String, String)>,
    pub trace: Vec<RuleTrace>,
    /// Dry-run rules that held (or failed) before the outcome was reached.
    pub dry_run: Vec<DryRunHit>,
}

/// What a dry-run rule would have done: `allow`, `deny`, or the reason code of
/// the deny it would have caused (`policy_error`, `body_unavailable`,
/// `ambiguous_query`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DryRunHit {
    pub rule: Arc<str>,
    pub would: &'static str,
}

impl CompiledTenant {
    pub fn rule_count(&self) -> usize {
        self.set.rules.len()
    }

    /// The rule ids, in file order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.set.rules.iter().map(|r| &*r.id)
    }

    /// Evaluates the rules for one request. Never fails; never allows on error.
    pub fn evaluate(&self, input: &Input, identity: &Identity, explain: bool) -> Evaluation {
        self.evaluate_with_data(input, identity, explain, None)
    }

    /// [`CompiledTenant::evaluate`] with the tenant's data document (`data` in
    /// conditions; an empty map without one).
    pub fn evaluate_with_data(
        &self,
        input: &Input,
        identity: &Identity,
        explain: bool,
        data: Option<&Value>,
    ) -> Evaluation {
        let resource = &input.resource;
        let mut trace = Vec::new();
        let mut dry_run: Vec<DryRunHit> = Vec::new();
        if let Some(cors) = &self.cors
            && resource.method == "OPTIONS"
            && let (Some(origin), Some(method)) = (
                resource.headers.get("origin"),
                resource.headers.get("access-control-request-method"),
            )
        {
            return Evaluation {
                outcome: self.preflight(cors, resource, origin, method),
                params: Vec::new(),
                trace,
                dry_run: Vec::new(),
            };
        }
        // The parameters each distinct template binds, bound once: rules on
        // one route share a template, and binding copies every value.
        let mut bound: Vec<(&Template, Vec<(String, String)>)> = Vec::new();
        let candidates: Vec<(&Rule, usize)> = self
            .set
            .index
            .lookup(&resource.segments)
            .into_iter()
            .filter_map(|i| {
                let rule = &self.set.rules[i];
                let params = match bound.iter().position(|(t, _)| **t == rule.template) {
                    Some(k) => k,
                    None => {
                        let params = rule.template.matches(&resource.segments)?;
                        bound.push((&rule.template, params));
                        bound.len() - 1
                    }
                };
                let method_ok = rule.allows_method(&resource.method);
                let host_ok = rule.allows_host(&resource.host);
                if explain && !(method_ok && host_ok) {
                    trace.push(RuleTrace {
                        rule: rule.id.to_string(),
                        effect: rule.effect,
                        result: if method_ok {
                            "path matched; host did not".into()
                        } else {
                            "path matched; method did not".into()
                        },
                    });
                }
                (method_ok && host_ok).then_some((rule, params))
            })
            .collect();

        let attributes = self
            .set
            .resource_index
            .lookup(&resource.segments)
            .first()
            .map(|&i| &self.set.resources[i].1);
        let mut base: Option<Base> = None;
        let request = Request {
            input,
            identity,
            data,
        };
        let mut unmet: Option<(Arc<str>, Unmet)> = None;
        let now = crate::request::input::unix_seconds(input.context.time);
        let ordered = candidates
            .iter()
            .filter(|(r, _)| r.effect == Effect::Deny)
            .chain(candidates.iter().filter(|(r, _)| r.effect == Effect::Allow));
        for &(rule, k) in ordered {
            let params = &bound[k].1;
            let note = |trace: &mut Vec<RuleTrace>, result: &str| {
                if explain {
                    trace.push(RuleTrace {
                        rule: rule.id.to_string(),
                        effect: rule.effect,
                        result: result.to_string(),
                    });
                }
            };
            if rule.effect == Effect::Allow && !rule.public && identity.is_anonymous() {
                note(
                    &mut trace,
                    "skipped: needs an identified caller (not public)",
                );
                continue;
            }
            if rule.mode == Mode::DryRun {
                match self.dry_run_rule(rule, &request, (params, attributes), &mut base) {
                    Some(would) => {
                        note(&mut trace, &format!("dry run: would {would}"));
                        dry_run.push(DryRunHit {
                            rule: rule.id.clone(),
                            would,
                        });
                    }
                    None => note(&mut trace, "dry run: condition is false"),
                }
                continue;
            }
            if let Some(missing) = rule.needs.unmet(identity, now) {
                note(
                    &mut trace,
                    "skipped: the credential lacks what the rule needs",
                );
                unmet.get_or_insert_with(|| (rule.id.clone(), missing));
                continue;
            }
            let holds = match &rule.condition {
                None => Ok(true),
                Some(c)
                    if c.reads_body()
                        && matches!(resource.body, Body::Truncated | Body::Unparsed) =>
                {
                    note(&mut trace, "body is truncated or not JSON");
                    return Evaluation {
                        outcome: Outcome::BodyUnavailable(rule.id.clone()),
                        params: params.clone(),
                        trace,
                        dry_run: std::mem::take(&mut dry_run),
                    };
                }
                Some(c) if resource.query_repeated && c.reads().resource.wants("query") => {
                    note(&mut trace, "query repeats a parameter name");
                    return Evaluation {
                        outcome: Outcome::AmbiguousQuery(rule.id.clone()),
                        params: params.clone(),
                        trace,
                        dry_run: std::mem::take(&mut dry_run),
                    };
                }
                Some(c) => self.holds(c, &request, (params, attributes), &mut base),
            };
            match holds {
                Ok(true) => {
                    note(&mut trace, "matched");
                    let outcome = match rule.effect {
                        Effect::Allow => Outcome::Allow(rule.id.clone()),
                        Effect::Deny => Outcome::Deny(rule.id.clone()),
                    };
                    return Evaluation {
                        outcome,
                        params: params.clone(),
                        trace,
                        dry_run: std::mem::take(&mut dry_run),
                    };
                }
                Ok(false) => note(&mut trace, "condition is false"),
                Err(message) => {
                    note(&mut trace, &format!("error: {message}"));
                    return Evaluation {
                        outcome: Outcome::PolicyError(rule.id.clone(), message),
                        params: params.clone(),
                        trace,
                        dry_run: std::mem::take(&mut dry_run),
                    };
                }
            }
        }
        Evaluation {
            outcome: match unmet {
                Some((rule, missing)) => Outcome::Unmet(rule, missing),
                None => Outcome::NoMatch,
            },
            params: Vec::new(),
            trace,
            dry_run,
        }
    }

    /// What a dry-run rule would have done, if anything; it never decides.
    fn dry_run_rule(
        &self,
        rule: &Rule,
        request: &Request,
        own: RuleOwn,
        base: &mut Option<Base>,
    ) -> Option<&'static str> {
        let effect = match rule.effect {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        };
        let Some(c) = &rule.condition else {
            return Some(effect);
        };
        let resource = &request.input.resource;
        if c.reads_body() && matches!(resource.body, Body::Truncated | Body::Unparsed) {
            return Some("body_unavailable");
        }
        if resource.query_repeated && c.reads().resource.wants("query") {
            return Some("ambiguous_query");
        }
        match self.holds(c, request, own, base) {
            Ok(true) => Some(effect),
            Ok(false) => None,
            Err(_) => Some("policy_error"),
        }
    }

    /// Whether `c` holds for this rule: natively where that gives CEL's
    /// boolean, else in the interpreter, whose roots are built once per
    /// request in `base` (and only when a condition needs them).
    fn holds(
        &self,
        c: &Condition,
        request: &Request,
        (params, attributes): RuleOwn,
        base: &mut Option<Base>,
    ) -> Result<bool, String> {
        let Request {
            input,
            identity,
            data,
        } = *request;
        let inputs = native::Inputs {
            claims: &identity.claims,
            resource: &input.resource,
            params,
            attributes,
        };
        if let Some(b) = c.evaluate_native(&inputs) {
            return Ok(b);
        }
        base.get_or_insert_with(|| Base::new(&self.reads, &self.id, input, identity, data))
            .evaluate(c, params, attributes)
    }

    /// Answers a CORS preflight: the origin must be allowed, and some allow rule
    /// must route the requested method on this path and host. The answer never
    /// reaches the upstream, so a handler that ignores the method cannot run an
    /// anonymous `OPTIONS` as if it were the real request.
    fn preflight(
        &self,
        cors: &Cors,
        resource: &crate::request::input::Resource,
        origin: &str,
        method: &str,
    ) -> Outcome {
        let origin_ok = (cors.any_origin || cors.origins.iter().any(|o| o == origin))
            && template::safe_value(origin);
        let method = method.trim();
        let routed = self
            .set
            .index
            .lookup(&resource.segments)
            .into_iter()
            .any(|i| {
                let rule = &self.set.rules[i];
                rule.effect == Effect::Allow
                    && rule.mode == Mode::Enforce
                    && rule.allows_method(method)
                    && rule.allows_host(&resource.host)
                    && rule.template.matches(&resource.segments).is_some()
            });
        if !origin_ok || !routed || !template::safe_value(method) || method.is_empty() {
            return Outcome::CorsRejected;
        }
        Outcome::CorsPreflight(vec![
            ("access-control-allow-origin".into(), origin.to_string()),
            ("access-control-allow-methods".into(), method.to_string()),
            ("access-control-allow-headers".into(), cors.headers.clone()),
            ("access-control-max-age".into(), cors.max_age.clone()),
            ("vary".into(), "origin".into()),
        ])
    }

    /// What to mint for the upstream when `rule` allowed (its own setting, or
    /// the tenant's).
    pub fn downstream(
        &self,
        rule: Option<&Arc<str>>,
    ) -> Option<&crate::policy::downstream::Downstream> {
        rule.and_then(|r| self.set.rule_downstream.get(r))
            .or(self.set.downstream.as_ref())
    }

    /// Headers to set and remove on an allowed request: every owned header is
    /// either set (overwriting the client's) or removed. `Err` when a value
    /// would be unsafe.
    pub fn response_headers(
        &self,
        identity: &Identity,
        params: &[(String, String)],
    ) -> Result<HeaderEdits, String> {
        let scope = Scope {
            claims: &identity.claims,
            params,
            tenant: &self.id,
            subject: identity.subject.as_deref(),
            auth_method: identity.method.as_str(),
        };
        let mut set = Vec::new();
        let mut remove = self.set.remove.clone();
        for (name, template) in &self.set.headers {
            match template.render(&scope) {
                Rendered::Value(v) => set.push((name.clone(), v)),
                Rendered::Missing => remove.push(name.clone()),
                Rendered::Unsafe => return Err(format!("value for header {name:?} is unsafe")),
            }
        }
        Ok(HeaderEdits { set, remove })
    }
}

/// What an allowed request's headers become on the way to the upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Set with overwrite: the client's value never survives.
    pub set: Vec<(String, String)>,
    /// Removed by exact name; never also in `set`.
    pub remove: Vec<String>,
}

/// What every condition of one request reads.
#[derive(Clone, Copy)]
struct Request<'a> {
    input: &'a Input,
    identity: &'a Identity,
    data: Option<&'a Value>,
}

/// What differs per rule: its path parameters and the resource's attributes.
type RuleOwn<'a> = (&'a [(String, String)], Option<&'a BTreeMap<String, String>>);

/// The parts of the CEL input shared by every rule of one request, converted
/// into CEL's runtime form once.
struct Base {
    prepared: cel::Prepared,
    /// The resource fields shared by every rule, when conditions also read
    /// `resource.params` or `resource.attributes` (which differ per rule and
    /// are added per evaluation); `None` when `prepared` holds it whole.
    resource: Option<std::collections::HashMap<String, Value>>,
    want_params: bool,
    want_attributes: bool,
}

impl Base {
    fn new(
        reads: &Reads,
        tenant: &str,
        input: &Input,
        identity: &Identity,
        data: Option<&Value>,
    ) -> Base {
        let r = &input.resource;
        let c = &input.context;
        let strings = |m: &BTreeMap<String, String>| {
            cel::map(m.iter().map(|(k, v)| (k.as_str(), cel::string(v))))
        };
        let opt = |s: &Option<String>| s.as_deref().map_or(Value::Null, cel::string);
        let want = &reads.resource;
        let mut resource = std::collections::HashMap::new();
        let mut put = |key: &str, value: &dyn Fn() -> Value| {
            if want.wants(key) {
                resource.insert(key.to_string(), value());
            }
        };
        put("host", &|| cel::string(&r.host));
        put("method", &|| cel::string(&r.method));
        put("path", &|| cel::string(&r.path));
        put("query", &|| strings(&r.query_params));
        put("headers", &|| strings(&r.headers));
        put("body", &|| match &r.body {
            Body::Json(j) => cel::json_to_cel(j),
            _ => Value::Null,
        });
        put("context_extensions", &|| strings(&r.context_extensions));
        put("grpc", &|| Value::Bool(r.grpc));
        put("scheme", &|| cel::string(&r.scheme));
        put("protocol", &|| cel::string(&r.protocol));
        put("destination", &|| opt(&r.destination));

        let want = &reads.context;
        let mut context = Vec::new();
        let mut put = |key: &'static str, value: &dyn Fn() -> Value| {
            if want.wants(key) {
                context.push((key, value()));
            }
        };
        put("time", &|| {
            Value::Int(
                i64::try_from(crate::request::input::unix_seconds(c.time)).unwrap_or(i64::MAX),
            )
        });
        put("source", &|| opt(&c.source));
        put("peer", &|| {
            c.peer.as_ref().map_or(Value::Null, |p| {
                cel::map([
                    ("principal", cel::string(&p.principal)),
                    ("spiffe_id", p.spiffe_id().map_or(Value::Null, cel::string)),
                    ("has_certificate", Value::Bool(p.certificate.is_some())),
                ])
            })
        });
        put("sni", &|| cel::string(&c.sni));
        put("request_id", &|| cel::string(&c.request_id));
        put("tenant", &|| cel::string(tenant));
        put("sender_constraint", &|| cel::string(identity.binding.kind));
        put("key_thumbprint", &|| opt(&identity.binding.thumbprint));
        put("auth", &|| {
            cel::map([
                ("method", cel::string(identity.method.as_str())),
                ("subject", opt(&identity.subject)),
                ("issuer", opt(&identity.issuer)),
                ("token_id", opt(&identity.token_id)),
            ])
        });
        let want_params = reads.resource.wants("params");
        let want_attributes = reads.resource.wants("attributes");
        let per_rule = want_params || want_attributes;
        let claims = cel::map(
            identity
                .claims
                .iter()
                .map(|(k, v)| (k.as_str(), cel::json_to_cel(v))),
        );
        let (shared, resource) = if per_rule {
            (None, Some(resource))
        } else {
            (Some(Value::from(resource)), None)
        };
        Base {
            prepared: cel::Prepared::new(
                claims,
                cel::map(context),
                data.cloned().unwrap_or_else(|| cel::map([])),
                shared,
            ),
            resource,
            want_params,
            want_attributes,
        }
    }

    /// Evaluates one rule's condition with its params and attributes.
    fn evaluate(
        &self,
        condition: &Condition,
        params: &[(String, String)],
        attributes: Option<&BTreeMap<String, String>>,
    ) -> Result<bool, String> {
        let Some(shared) = &self.resource else {
            return condition.evaluate_prepared(&self.prepared, None);
        };
        let mut resource = shared.clone();
        if self.want_params {
            resource.insert(
                "params".into(),
                cel::map(params.iter().map(|(k, v)| (k.as_str(), cel::string(v)))),
            );
        }
        if self.want_attributes {
            resource.insert(
                "attributes".into(),
                cel::map(
                    attributes
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.as_str(), cel::string(v))),
                ),
            );
        }
        condition.evaluate_prepared(&self.prepared, Some(Value::from(resource)))
    }
}

#[cfg(test)]
mod line_index_tests {
    use super::*;

    /// The index answers exactly as the scans it replaces, including repeated
    /// ids, quoted values, CRLF line ends, a bare '\r' and an unterminated
    /// last line.
    #[test]
    fn line_index_agrees_with_the_scans() {
        let texts = [
            "rules:\n  - id: a\n    path: /x\n  - id: \"b\"\n    when: 'true'\n  - id: a\n    path: /y",
            "rules:\r\n  - id: a\r\n    path: /x\r\n  - id: 'b'\r\n    path: /z\r\n",
            "a\rb\nrules:\n- id: c\n  path: /p\n\n- id: d\n",
            "",
        ];
        for text in texts {
            let index = LineIndex::new(text);
            for id in ["a", "b", "c", "d", "e", ""] {
                assert_eq!(
                    index.id_line(id),
                    line_of_value(text, "id", id),
                    "{text:?} {id}"
                );
            }
            for from in 0..12 {
                for key in ["id", "path", "when", "rules", "nope"] {
                    assert_eq!(
                        index.line_of(from, key),
                        line_of(text, from, key),
                        "{text:?} {from} {key}"
                    );
                }
            }
        }
    }
}
