//! The identity section of a policy file, as written: the serde specs of every
//! identity source (JWT issuers, token sources, API keys, Envoy `jwt_authn`
//! claims, SPIFFE peers) and their defaults.
//!
//! Never imports: policy, decision, tenants or anything above them.

use serde::Deserialize;
use serde_json::{Map, Value as Json};

use super::binding;
use super::introspection::IntrospectionSpec;
use super::jwt::IssuerSpec;

/// Envoy's `jwt_authn` filter name, the default metadata namespace of its claims.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// Default `payload_in_metadata` key; must match the Envoy provider's setting.
pub const JWT_AUTHN_PAYLOAD_KEY: &str = "jwt_payload";

/// The identity section of a policy file, as written.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
    /// Issuers whose JWTs portcullis validates itself.
    #[serde(default)]
    pub jwt: Vec<IssuerSpec>,
    /// DPoP proofs (RFC 9449) for sender-constrained tokens.
    #[serde(default)]
    pub dpop: Option<binding::DpopSpec>,
    /// Opaque tokens, validated by the issuer's introspection endpoint.
    #[serde(default)]
    pub introspection: Option<IntrospectionSpec>,
    /// Where a token for `jwt` or `introspection` is read from; default
    /// `Authorization: Bearer`.
    #[serde(default)]
    pub token_sources: Option<Vec<TokenSourceSpec>>,
    /// API keys for machine clients, stored as SHA-256 hashes.
    #[serde(default)]
    pub api_keys: Option<ApiKeysSpec>,
    /// Claims verified by Envoy's `jwt_authn` filter.
    #[serde(default)]
    pub envoy_jwt_authn: Option<EnvoyJwtSpec>,
    /// mTLS peers with a SPIFFE ID.
    #[serde(default)]
    pub spiffe: Option<SpiffeSpec>,
    /// Request headers that carry credentials (default `authorization`). A
    /// credential in one of them that no source verified is denied, never
    /// treated as anonymous.
    #[serde(default)]
    pub credential_headers: Option<Vec<String>>,
    /// Also honour revocations pushed live through the server's shared store
    /// (`portcullis revoke`), on top of revocation files. When the replica
    /// cannot vouch that what it read is current (the store is down or its
    /// circuit open), callers a list could revoke get 503
    /// `shared_state_unavailable`, unless the server chose
    /// `revocation_on_unavailable: fail_open_revocation_only`.
    #[serde(default)]
    pub live_revocation: bool,
}

/// One place a token may be: a header (with an auth scheme), a cookie, or a
/// query parameter. Exactly one of `header`, `cookie`, `query`.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSourceSpec {
    #[serde(default)]
    pub header: Option<String>,
    /// The auth scheme before the token (`Bearer`), compared case-insensitively;
    /// default `Bearer` for `authorization`, none for other headers.
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
    /// A query parameter; removed from the request before it goes upstream, so
    /// the token does not land in access logs.
    #[serde(default)]
    pub query: Option<String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysSpec {
    /// The header that carries the key (default `x-api-key`).
    #[serde(default = "default_api_key_header")]
    pub header: String,
    pub keys: Vec<ApiKeySpec>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// Hex SHA-256 of the key.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Present only to refuse it with a clear message: keys are never stored
    /// in plaintext.
    #[serde(default)]
    #[schemars(skip)]
    pub key: Option<serde::de::IgnoredAny>,
    /// The caller's subject (`claims.sub`).
    pub subject: String,
    /// More claims the rules see (e.g. `scope: [reports:read]`).
    #[serde(default)]
    pub claims: Map<String, Json>,
}

fn default_api_key_header() -> String {
    "x-api-key".into()
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvoyJwtSpec {
    /// Issuers (`iss`) this tenant trusts. Claims from any other issuer are denied.
    pub issuers: Vec<String>,
    #[serde(default = "default_namespace")]
    pub metadata_namespace: String,
    #[serde(default = "default_payload_key")]
    pub payload_key: String,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpiffeSpec {
    /// Trust domains (`acme.example`) whose workloads are identities here.
    pub trust_domains: Vec<String>,
    /// When set, only these workloads: SPIFFE IDs where `*` stands for one
    /// whole path segment (`spiffe://acme.example/ns/shop/sa/*`).
    #[serde(default)]
    pub ids: Vec<String>,
}

fn default_namespace() -> String {
    JWT_AUTHN_NAMESPACE.to_string()
}

fn default_payload_key() -> String {
    JWT_AUTHN_PAYLOAD_KEY.to_string()
}
