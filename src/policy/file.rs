//! Policy files as written: the serde shapes of `apiVersion: portcullis/v1`.
//!
//! Unknown fields are errors everywhere, so a misspelt key (`rule:` for `rules:`)
//! fails loudly instead of silently dropping a rule. [`super::compile`] turns these
//! into the validated, compiled form.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::identity::IdentitySpec;

/// The only `apiVersion` this binary understands.
pub const API_VERSION: &str = "portcullis/v1";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub tenant: String,
    /// Hosts that select this tenant when tenancy is host-based: exact names or
    /// `*.example.com` wildcards.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub identity: IdentitySpec,
    /// Attributes attached to routes (`resource.attributes` in conditions).
    #[serde(default)]
    pub resources: Vec<ResourceSpec>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// What happens when no rule matches.
    #[serde(default)]
    pub default: Effect,
    #[serde(default)]
    pub cors: CorsSpec,
    #[serde(default)]
    pub response: ResponseSpec,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    #[default]
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
    /// HTTP methods (upper case); empty or absent means any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Route template: `/tenants/{tenant}/orders/{order}`, `/static/{rest...}`.
    pub path: String,
    /// Restricts the rule to these hosts (exact or `*.` wildcard).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// A CEL condition over `claims`, `resource` and `context`; absent is true.
    #[serde(default)]
    pub when: Option<String>,
    pub effect: Effect,
    /// An allow rule that also applies to anonymous callers. Without it, allow
    /// rules apply only to identified callers.
    #[serde(default)]
    pub public: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    pub path: String,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSpec {
    /// Allow CORS preflights (`OPTIONS` with `Access-Control-Request-Method`)
    /// without a credential, since browsers never send one on a preflight.
    #[serde(default)]
    pub allow_preflight: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseSpec {
    /// Headers portcullis owns on allowed requests: set from a template, or
    /// removed when the template has no value, so a client's own value never
    /// reaches the upstream.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers removed from allowed requests (e.g. the caller's `authorization`).
    #[serde(default)]
    pub remove: Vec<String>,
}
