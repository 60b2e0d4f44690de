//! The tenant compiler: one policy file's text into a [`CompiledTenant`],
//! with every error and warning named by file and line. Its rules, resources
//! and response compile once per distinct text and are shared
//! (`super::share`).
//!
//! Never imports: the pipeline or anything above it.

use crate::foundation::policy_files::PolicyFilesConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::foundation::document::{API_VERSION, PolicyError};
use crate::identity::IdentityConfig;
use crate::request::path::{RouteIndex, Template};

use super::file::PolicyFile;
use super::lines::{LineIndex, line_of};
use super::{sections, share};
use crate::policy::cel;
use crate::policy::cel::{Condition, Reads};
use crate::policy::rule_set::RuleSet;
use crate::policy::template::{self, HeaderTemplate, valid_header_name};
use crate::policy::tenant::{Cors, Needs};
use crate::policy::{CompiledTenant, Effect, HostPattern, Mode, Rule};

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
        &PolicyFilesConfig::from(allowed_dirs.to_vec()),
        &crate::foundation::limits::Limits::default(),
    )
}

/// [`compile_with`] under the server's `limits` (rules per tenant, token size,
/// token and replay caches) and its whole `policy_files` (shared directories
/// and each tenant's own).
pub fn compile_limited(
    file: &Path,
    text: &str,
    policy_files: &PolicyFilesConfig,
    limits: &crate::foundation::limits::Limits,
) -> Result<CompiledTenant, Vec<PolicyError>> {
    // Nesting and aliases are bounded before any parse: the parser's time grows
    // with the square of the depth. Every parse below reads this text or a
    // part of it.
    if let Err(e) = crate::foundation::yaml::check(text) {
        return Err(vec![PolicyError {
            file: file.to_path_buf(),
            line: e.line,
            message: e.message,
        }]);
    }
    // A file whose shared sections compiled before need not parse them again.
    compile_split(file, text, policy_files, limits, sections::split(text))
}

/// [`compile_limited`], from `split` when the file could be read in pieces,
/// else from the whole text.
fn compile_split(
    file: &Path,
    text: &str,
    policy_files: &PolicyFilesConfig,
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
            crate::foundation::yaml_error::line(&e),
            format!(
                "invalid policy file: {}",
                crate::tenants::did_you_mean::hint(&e.to_string())
            ),
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
    // Each list's line is found once, not once per bad entry: a scan per entry
    // of a long list far down the file was quadratic.
    let hosts_at = std::cell::OnceCell::new();
    for h in &spec.hosts {
        match HostPattern::parse(h) {
            Ok(p) => hosts.push(p),
            Err(e) => errors.push(err(*hosts_at.get_or_init(|| line_of(text, 0, "hosts")), e)),
        }
    }

    // A bare file name has the empty parent, which would resolve nowhere.
    let base = file.parent().filter(|p| !p.as_os_str().is_empty());
    // A tenant with directories of its own is known by its file's name as well
    // as by what the file says: otherwise any author could write `tenant:
    // globex` and be given globex's directories.
    let own_dirs = policy_files.tenants.contains_key(&spec.tenant);
    let named_as_tenant = file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".yaml").or_else(|| n.strip_suffix(".yml")))
        == Some(spec.tenant.as_str());
    if own_dirs && !named_as_tenant {
        errors.push(err(
            line_of(text, 0, "tenant"),
            format!(
                "tenant `{}` has directories of its own (policy_files.tenants), so its policy must be the file `{}.yaml`",
                spec.tenant, spec.tenant
            ),
        ));
    }
    let scope_of = if own_dirs && !named_as_tenant {
        ""
    } else {
        spec.tenant.as_str()
    };
    let files = policy_files.scope(base.unwrap_or_else(|| Path::new(".")), scope_of);
    let identity = IdentityConfig::compile(&spec.identity, &spec.tenant, &files)
        .and_then(|mut i| i.apply_limits(limits, &spec.tenant).map(|()| i))
        .map_err(|e| errors.push(err(line_of(text, 0, "identity"), e)))
        .ok();

    // Tenants made from one template share their compiled rules; a set that
    // compiled clean from equal inputs is reused without compiling again.
    let reads_cookies = identity.as_ref().is_some_and(IdentityConfig::reads_cookies);
    let shared_key = share::Inputs::of(
        &spec,
        texts.as_ref(),
        reads_cookies,
        (limits.max_rules_per_tenant, limits.max_check_cost),
    )
    .digest();
    let reused = share::clean(&shared_key);
    if reused.is_none()
        && let Some(texts) = &texts
        && sections::parse_into(texts, &mut spec).is_none()
    {
        // A section that does not parse on its own: read the whole file.
        return compile_split(file, text, policy_files, limits, None);
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
    let log_headers_at = std::cell::OnceCell::new();
    let log_headers_at = || *log_headers_at.get_or_init(|| line_of(text, 0, "log_headers"));
    for name in &spec.audit.log_headers {
        let lower = name.to_ascii_lowercase();
        let credential = ["authorization", "proxy-authorization", "cookie", "dpop"]
            .contains(&lower.as_str())
            || identity
                .as_ref()
                .is_some_and(|i| i.credential_headers().contains(&lower));
        match valid_header_name(&lower) {
            Err(e) => errors.push(err(log_headers_at(), format!("audit.log_headers: {e}"))),
            Ok(()) if credential => errors.push(err(
                log_headers_at(),
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
    let shared_at = std::cell::OnceCell::new();
    for shared in &spec.shared_issuers {
        // `issuers` is sorted: a search, not a scan per entry.
        if issuers.binary_search(shared).is_err() {
            errors.push(err(
                *shared_at.get_or_init(|| line_of(text, 0, "shared_issuers")),
                format!("shared_issuers: {shared:?} is not an issuer this tenant trusts"),
            ));
        }
    }

    // Another engine decides in place of the rules.
    let rego = match spec.policy.as_ref().and_then(|p| p.rego.as_ref()) {
        None => None,
        Some(rego_spec) => {
            let at = line_of(text, 0, "policy");
            if !spec.rules.is_empty() || texts.as_ref().is_some_and(|t| t[0].is_some()) {
                errors.push(err(
                    at,
                    "policy.rego decides in place of rules: a tenant has one or the other".into(),
                ));
            }
            match super::rego::load(rego_spec, &files, file, at) {
                Ok(p) => Some(p),
                Err(mut e) => {
                    errors.append(&mut e);
                    None
                }
            }
        }
    };

    let cedar = match spec.policy.as_ref().and_then(|p| p.cedar.as_ref()) {
        None => None,
        Some(cedar_spec) => {
            let at = line_of(text, 0, "policy");
            if !spec.rules.is_empty() || texts.as_ref().is_some_and(|t| t[0].is_some()) {
                errors.push(err(
                    at,
                    "policy.cedar decides in place of rules: a tenant has one or the other".into(),
                ));
            }
            if rego.is_some() || spec.policy.as_ref().is_some_and(|p| p.rego.is_some()) {
                errors.push(err(
                    at,
                    "policy names both rego and cedar: a tenant has one engine".into(),
                ));
            }
            if spec.default == Effect::Allow {
                errors.push(err(
                    line_of(text, 0, "default"),
                    "default: allow does not apply to a Cedar tenant: Cedar denies what no permit allows".into(),
                ));
            }
            let credential_headers = identity
                .as_ref()
                .map(|i| i.credential_headers().to_vec())
                .unwrap_or_default();
            match super::cedar::load(
                cedar_spec,
                &files,
                (file, text, at),
                &spec.resources,
                &credential_headers,
            ) {
                Ok(p) => Some(p),
                Err(mut e) => {
                    errors.append(&mut e);
                    None
                }
            }
        }
    };

    match identity {
        Some(identity) if errors.is_empty() => {
            let set = match compiled {
                Rules::Reused(set) => set,
                Rules::Compiled(draft) => {
                    let clean = warnings.is_empty();
                    share::share(shared_key, RuleSet { clean, ..draft.set })
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
                client_errors: spec.client_errors,
                cors,
                reads: Arc::clone(&set.reads),
                heavy: (set.check_cost > crate::policy::heavy::HEAVY_CHECK_COST).then(|| {
                    crate::policy::heavy::HeavyGate::new(crate::policy::heavy::heavy_share())
                }),
                set,
                rego,
                cedar,
                warnings,
                issuers,
                shared_issuers: spec.shared_issuers.clone(),
                named_files: files.named_files(),
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
                lines.line_of(at.saturating_sub(1), key),
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
                lines.value_line("path", &r.path),
                format!("resource {:?}: {e}", r.path),
            )),
        }
    }
    resource_index.shrink_to_fit();

    let mut headers = Vec::new();
    for (name, source) in &spec.response.headers {
        // Found only for a message.
        let at = || lines.line_of(0, name);
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
                lines.line_of(0, "remove"),
                format!("response.remove: {lower:?} is also in response.headers; an owned header is already set or removed"),
            )),
            Ok(()) => remove.push(lower),
            Err(e) => errors.push(err(lines.line_of(0, "remove"), format!("response.remove: {e}"))),
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
    // The whole check is bounded, not only each condition: many rules that
    // each pass add up (see `policy::cost::check_cost`).
    let cost = crate::policy::cost::check_cost(rules.iter().map(|r| {
        let steps = r.condition.as_ref().map_or(0, |c| c.cost());
        (&*r.id, r.methods.as_slice(), steps)
    }));
    if cost.steps > limits.max_check_cost as u64 {
        let method = cost
            .method
            .as_deref()
            .map_or("any method".to_string(), |m| format!("method {m}"));
        errors.push(err(
            line_of(text, 0, "rules"),
            format!(
                "the conditions one request can reach ({method}) may cost {} steps together on the largest input; the limit (limits.max_check_cost) is {} (costliest: {}; narrow rules by method, or make conditions cheaper)",
                cost.steps,
                limits.max_check_cost,
                cost.heaviest.join(", ")
            ),
        ));
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
            check_cost: cost.steps,
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
    // Built only when a header needs its line: most files never do.
    let lines = std::cell::OnceCell::new();
    // The parameters some allow rule binds, gathered once (not once per
    // header and parameter).
    let bound: std::collections::HashSet<&str> = rules
        .iter()
        .filter(|r| r.effect == Effect::Allow)
        .flat_map(|r| r.template.params())
        .collect();
    for (name, template) in headers {
        let at = || lines.get_or_init(|| LineIndex::new(text)).line_of(0, name);
        for claim in template.claims() {
            if let Some(m) = unknown_claim(claim) {
                warn(at(), format!("response.headers.{name}: template {m}"));
            }
        }
        for param in template.params() {
            if !bound.contains(param) {
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
    // rule wholly inside that route can never decide. The deny rules that can
    // shadow are indexed by route, so each rule meets only those covering it
    // (comparing every pair was quadratic in the rules).
    let mut denies = RouteIndex::default();
    for (j, d) in rules.iter().enumerate() {
        if d.effect == Effect::Deny
            && d.mode == Mode::Enforce
            && d.condition.is_none()
            && d.hosts.is_empty()
        {
            denies.insert(&d.template, j);
        }
    }
    for (i, rule) in rules.iter().enumerate() {
        // In rule order, as `covering` returns them: the first one names it.
        let shadow = denies
            .covering(&rule.template)
            .into_iter()
            .map(|j| (j, &rules[j]))
            .find(|(j, d)| {
                *j != i
                    && (rule.effect == Effect::Allow || *j < i)
                    && (d.methods.is_empty()
                        || (!rule.methods.is_empty()
                            && rule.methods.iter().all(|m| d.methods.contains(m))))
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
