//! A compiled tenant as data: its rules, hosts, identity sources, mode and
//! default, built once by the tenant compiler ([`crate::tenants::compile()`])
//! and read by every check.
//!
//! Never imports: decision, tenants or anything above them.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value as Json;

use crate::foundation::document::PolicyError;
use crate::identity::{Identity, IdentityConfig};
use crate::request::path::Template;

use super::Reads;
use super::cel::Condition;
use super::rule_set::RuleSet;

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    #[default]
    Deny,
}

/// Whether a tenant's or a rule's decisions are enforced or only observed.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    DryRun,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry_run",
        }
    }
}

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
    pub(crate) methods: Vec<String>,
    pub(crate) template: Template,
    pub(crate) hosts: Vec<HostPattern>,
    /// Shared with every rule, in any tenant, that has the same source.
    pub(crate) condition: Option<Arc<Condition>>,
    /// What the caller's token must carry for the rule to apply.
    pub(crate) needs: Needs,
    /// A dry-run rule is evaluated and reported, never decides.
    pub(crate) mode: Mode,
}

/// A rule's demands on the credential itself, checked before its condition.
#[derive(Debug, Default)]
pub(crate) struct Needs {
    pub(crate) scopes: Vec<String>,
    pub(crate) acr: Vec<String>,
    pub(crate) max_auth_age: Option<u64>,
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
    pub(crate) fn unmet(&self, identity: &Identity, now: u64) -> Option<Unmet> {
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
    pub(crate) fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    /// No `hosts` means any host.
    pub(crate) fn allows_host(&self, host: &str) -> bool {
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
    /// What a refused client is told; `None` leaves it to the server.
    pub client_errors: Option<crate::foundation::client_errors::ClientErrors>,
    pub(crate) cors: Option<Cors>,
    /// The rules, resources and response; shared with every tenant whose
    /// files have the same (see [`rule_set`]).
    pub(crate) set: Arc<RuleSet>,
    /// A Rego tenant's compiled policy (`policy.rego`); it decides in place
    /// of the rules. Shared with every tenant whose modules, data and query
    /// are the same.
    pub(crate) rego: Option<Arc<super::rego::RegoPolicy>>,
    /// A Cedar tenant's compiled policy (`policy.cedar`); it decides in place
    /// of the rules. Shared with every tenant whose files and routes are the
    /// same.
    pub(crate) cedar: Option<Arc<super::cedar::CedarPolicy>>,
    /// Union of what the conditions read: only these fields are built per
    /// check. The set's, kept here too for the evaluation.
    pub(crate) reads: Arc<Reads>,
    /// Set when the tenant's worst check is heavy (see [`super::heavy`]).
    pub(crate) heavy: Option<super::heavy::HeavyGate>,
    /// What the static checks found that is worth fixing but not fatal.
    pub warnings: Vec<PolicyError>,
    /// Every issuer the tenant trusts (`identity.jwt`, `introspection`,
    /// `envoy_jwt_authn`), and those it declares as shared with other tenants.
    pub issuers: Vec<String>,
    pub shared_issuers: Vec<String>,
    /// The files the policy names (JWKS, CA bundles, keys, secrets) as the
    /// compile read them: a reload compiles the tenant again when one changes.
    pub named_files: Vec<crate::foundation::policy_files::NamedFile>,
}

/// A tenant's compiled CORS preflight settings.
#[derive(Debug)]
pub(crate) struct Cors {
    pub(crate) any_origin: bool,
    pub(crate) origins: Vec<String>,
    /// `Access-Control-Allow-Headers` value.
    pub(crate) headers: String,
    /// `Access-Control-Max-Age` value, in seconds.
    pub(crate) max_age: String,
}
