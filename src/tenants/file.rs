//! Policy files as written: the serde shapes of `apiVersion: portcullis/v1`.
//!
//! Unknown fields are errors everywhere, so a misspelt key (`rule:` for `rules:`)
//! fails loudly instead of silently dropping a rule. [`super::compile()`] turns these
//! into the validated, compiled form.
//!
//! Never imports: the pipeline or anything above it.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::identity::IdentitySpec;
use crate::policy::{Effect, Mode};

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
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
    /// `dry_run`: decisions are computed, logged and counted as what they would
    /// have been, and every request is allowed (for onboarding a tenant).
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub cors: CorsSpec,
    #[serde(default)]
    pub response: ResponseSpec,
    /// Claim names this tenant's tokens carry beyond the registered ones
    /// (`sub`, `scope`, `roles`, ...): conditions and header templates that read
    /// any other claim get a warning, since a misspelt claim is always absent.
    #[serde(default)]
    pub claims: Vec<String>,
    /// Issuers this tenant knowingly shares with other tenants. Two tenants
    /// trusting one issuer is an error unless both files list it here.
    #[serde(default)]
    pub shared_issuers: Vec<String>,
    /// What the decision log records of this tenant's requests beyond the
    /// standard fields.
    #[serde(default)]
    pub audit: AuditSpec,
    /// What a client whose credential is refused is told: `generic` (every
    /// token failure is `invalid_token`, with no description) or `detailed`
    /// (the exact reason). Absent: the server's `client_errors`. The decision
    /// log, metrics and traces keep the exact reason either way.
    #[serde(default)]
    pub client_errors: Option<crate::foundation::client_errors::ClientErrors>,
    /// Another policy language decides in place of `rules` (which must then
    /// be empty): `rego` (docs/rego.md).
    #[serde(default)]
    pub policy: Option<PolicySpec>,
}

/// `policy:` — the engine that decides instead of the YAML rules.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema, Hash)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// OPA-Envoy's Rego, run by regorus (docs/rego.md).
    #[serde(default)]
    pub rego: Option<RegoSpec>,
    /// Cedar policies validated against a schema (docs/cedar.md).
    #[serde(default)]
    pub cedar: Option<CedarSpec>,
}

/// `policy.cedar`: the policies, the schema they are validated against, the
/// entities, and the routes that name requests to Cedar.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, Hash)]
#[serde(deny_unknown_fields)]
pub struct CedarSpec {
    /// A `.cedar` file of policies, beside the policy file (or in
    /// `policy_files` directories).
    pub policies: String,
    /// The schema: Cedar syntax (`.cedarschema`) or JSON (`.json`).
    pub schema: String,
    /// Cedar's entities JSON (group membership, resource data), validated
    /// against the schema.
    #[serde(default)]
    pub entities: Option<String>,
    /// Request headers the context exposes as `context.headers` (never
    /// credentials).
    #[serde(default)]
    pub headers: Vec<String>,
    /// The routes Cedar decides; a request on none is denied.
    pub routes: Vec<CedarRouteSpec>,
}

/// One route of a Cedar tenant.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, Hash)]
#[serde(deny_unknown_fields)]
pub struct CedarRouteSpec {
    /// Route template: `/tenants/{tenant}/orders/{order}`.
    pub path: String,
    /// HTTP methods (upper case); empty or absent means any (then `action`
    /// is required).
    #[serde(default)]
    pub methods: Vec<String>,
    /// The action's id (`Action::"<action>"`); absent, `"<METHOD> <path>"`.
    #[serde(default)]
    pub action: Option<String>,
    /// The resource's entity type; absent, `Route`.
    #[serde(default)]
    pub resource: Option<String>,
}

/// `policy.rego`: the modules, the data and the decision's rule.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, Hash)]
#[serde(deny_unknown_fields)]
pub struct RegoSpec {
    /// `.rego` files, beside the policy file (or in `policy_files` directories).
    pub files: Vec<String>,
    /// JSON or YAML documents merged into `data`.
    #[serde(default)]
    pub data: Vec<String>,
    /// The rule whose value is the decision; OPA-Envoy's default.
    #[serde(default = "default_query")]
    pub query: String,
}

fn default_query() -> String {
    crate::policy::rego::DEFAULT_QUERY.to_string()
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditSpec {
    /// Request headers whose values every decision line records (a
    /// break-glass justification, a change ticket). Credential headers
    /// (`authorization`, `cookie`, `dpop`, the tenant's credential headers) are
    /// refused.
    #[serde(default)]
    pub log_headers: Vec<String>,
}

/// Silences `portcullis lint` findings on one rule: the kinds, and the
/// reason (required) they are accepted.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, Hash)]
#[serde(deny_unknown_fields)]
pub struct LintSilence {
    /// Finding kinds: `any-caller`, `superset-scopes`, `wildcard-write`.
    pub allow: Vec<String>,
    /// Why the finding is accepted; shown by `portcullis lint`.
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, Hash)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
    /// `dry_run`: evaluated, and what it would have done is logged, counted and
    /// traced, but it takes no part in the decision.
    #[serde(default)]
    pub mode: Mode,
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
    /// Scopes the caller's token must all carry (`claims.scope`). When the rule
    /// would otherwise apply and no rule allows, the answer is 403
    /// `insufficient_scope` naming them (RFC 6750 §3.1).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Acceptable `acr` values: the caller must have authenticated this way.
    /// Otherwise, when no rule allows, 401 `insufficient_user_authentication`
    /// with `acr_values` (RFC 9470 §3).
    #[serde(default)]
    pub acr: Vec<String>,
    /// The caller's `auth_time` must be at most this old (RFC 9470 `max_age`).
    #[serde(default, with = "crate::foundation::duration::opt_duration")]
    #[schemars(with = "Option<String>")]
    pub max_auth_age: Option<std::time::Duration>,
    /// Findings of `portcullis lint` this rule is known to have, and why
    /// they are accepted.
    #[serde(default)]
    pub lint: Option<LintSilence>,
    /// This rule's own downstream token, instead of the tenant's.
    #[serde(default)]
    pub downstream_token: Option<crate::policy::downstream::DownstreamSpec>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, Hash)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    pub path: String,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsSpec {
    /// Answer CORS preflights (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) without a credential, since browsers never
    /// send one. portcullis answers them itself (204); they never reach the
    /// upstream.
    #[serde(default)]
    pub allow_preflight: bool,
    /// Origins allowed to call (`https://app.example.com`), or `"*"`. Required
    /// with `allow_preflight`.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Request headers a browser may send (default `authorization`, `content-type`).
    #[serde(default)]
    pub allow_headers: Option<Vec<String>>,
    /// How long a browser may cache the answer (default `10m`).
    #[serde(default, with = "crate::foundation::duration::opt_duration")]
    #[schemars(with = "Option<String>")]
    pub max_age: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema, Hash)]
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
    /// Mint a narrowed token for the upstream, which replaces `Authorization`.
    #[serde(default)]
    pub downstream_token: Option<crate::policy::downstream::DownstreamSpec>,
}
