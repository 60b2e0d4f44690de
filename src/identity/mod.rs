//! Stage 3: who is calling, from a verified credential.
//!
//! Each tenant lists the identity sources it trusts: JWTs that portcullis
//! validates itself against the tenant's own issuers ([`jwt`], keys in [`keys`]),
//! claims Envoy's `jwt_authn` filter already verified (read from
//! `metadata_context`), and the SPIFFE ID of an mTLS peer.
//!
//! What this stage must never do: accept a credential it could not verify (an
//! invalid credential never falls back to anonymous), accept claims from an issuer
//! the tenant does not trust, or put a token into an error or a log line.

pub mod binding;
pub mod counters;
pub mod http;
pub mod introspection;
pub mod jwt;
pub mod keys;
pub mod revocation;

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value as Json};

use crate::request::input::Input;
use introspection::{IntrospectionSpec, Introspector};
use jwt::{Attempt, Issuer, IssuerSpec, TokenError};
use keys::RemoteKeys;

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

/// API keys, compiled: the header and each key's hash with its identity.
#[derive(Debug)]
struct ApiKeys {
    header: String,
    keys: Vec<ApiKey>,
}

#[derive(Debug)]
struct ApiKey {
    hash: [u8; 32],
    subject: String,
    claims: Arc<Map<String, Json>>,
}

impl ApiKeys {
    fn compile(spec: &ApiKeysSpec) -> Result<ApiKeys, String> {
        let header = spec.header.to_ascii_lowercase();
        if header.is_empty()
            || !header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "identity.api_keys.header {:?} is not a header name",
                spec.header
            ));
        }
        if spec.keys.is_empty() {
            return Err("identity.api_keys.keys must list at least one key".into());
        }
        let mut keys = Vec::new();
        for (i, k) in spec.keys.iter().enumerate() {
            if k.key.is_some() {
                return Err(format!(
                    "identity.api_keys.keys[{i}]: plaintext keys are refused; store sha256: the hex SHA-256 of the key"
                ));
            }
            let hash = k
                .sha256
                .as_deref()
                .and_then(|h| hex::decode(h.trim()).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    format!("identity.api_keys.keys[{i}]: sha256 must be 64 hex digits")
                })?;
            if k.subject.is_empty() {
                return Err(format!(
                    "identity.api_keys.keys[{i}]: subject must not be empty"
                ));
            }
            if keys.iter().any(|k: &ApiKey| k.hash == hash) {
                return Err(format!(
                    "identity.api_keys.keys[{i}]: the same key is listed twice"
                ));
            }
            let mut claims = k.claims.clone();
            claims.insert("sub".into(), Json::String(k.subject.clone()));
            keys.push(ApiKey {
                hash,
                subject: k.subject.clone(),
                claims: Arc::new(claims),
            });
        }
        Ok(ApiKeys { header, keys })
    }

    /// The key's identity. Every stored hash is compared, in constant time, so
    /// the time taken says nothing about which key (or how much of one) matched.
    fn find(&self, presented: &str) -> Option<&ApiKey> {
        use sha2::Digest as _;
        use subtle::ConstantTimeEq as _;
        let hash: [u8; 32] = sha2::Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (i, key) in self.keys.iter().enumerate() {
            if bool::from(key.hash.ct_eq(&hash)) {
                found = Some(i);
            }
        }
        found.map(|i| &self.keys[i])
    }
}

/// Where a token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Header {
        name: String,
        scheme: Option<String>,
    },
    Cookie(String),
    Query(String),
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

/// A well-formed SPIFFE ID (SPIFFE ID spec §2): `spiffe://` + a lower-case
/// trust domain + path segments of letters, digits, `.`, `-`, `_`, none empty,
/// `.` or `..`, no query, fragment, port or user info. Returns the trust
/// domain and the segments.
fn parse_spiffe_id(id: &str) -> Option<(&str, Vec<&str>)> {
    let rest = id.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    let segments: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    let segments_ok = segments.iter().all(|s| {
        !s.is_empty()
            && *s != "."
            && *s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    });
    (domain_ok && segments_ok && !(rest.contains('/') && path.is_empty()))
        .then_some((domain, segments))
}

/// Whether `id` matches a pattern where `*` is one whole segment.
fn spiffe_matches(pattern: &str, domain: &str, segments: &[&str]) -> bool {
    let Some(rest) = pattern.strip_prefix("spiffe://") else {
        return false;
    };
    let mut parts = rest.split('/');
    if parts.next() != Some(domain) {
        return false;
    }
    let want: Vec<&str> = parts.collect();
    want.len() == segments.len() && want.iter().zip(segments).all(|(w, s)| *w == "*" || w == s)
}

fn default_namespace() -> String {
    JWT_AUTHN_NAMESPACE.to_string()
}

fn default_payload_key() -> String {
    JWT_AUTHN_PAYLOAD_KEY.to_string()
}

/// A tenant's identity sources, validated.
#[derive(Debug)]
pub struct IdentityConfig {
    sources: Vec<Source>,
    credential_headers: Vec<String>,
    /// portcullis' own JWT issuers, and where their tokens are read from.
    issuers: Vec<Issuer>,
    token_sources: Vec<TokenSource>,
    token_cache: jwt::TokenCache,
    /// Largest token looked at (`limits.max_token_bytes`).
    max_token_bytes: usize,
    introspection: Option<Arc<Introspector>>,
    api_keys: Option<ApiKeys>,
    dpop: Option<binding::Dpop>,
}

/// One way of turning a request into an [`Identity`].
#[derive(Debug, Clone)]
enum Source {
    EnvoyJwt(EnvoyJwtSpec),
    Spiffe(SpiffeSpec),
}

impl IdentityConfig {
    /// Validates a tenant's identity section; `files` says where the files
    /// it names may be (see [`crate::foundation::policy_files`]).
    pub fn compile(
        spec: &IdentitySpec,
        tenant: &str,
        files: &crate::foundation::policy_files::FileScope,
    ) -> Result<IdentityConfig, String> {
        let mut issuers: Vec<Issuer> = Vec::new();
        for issuer in &spec.jwt {
            if issuers.iter().any(|i| i.issuer == issuer.issuer) {
                return Err(format!(
                    "identity.jwt: issuer {:?} is listed twice",
                    issuer.issuer
                ));
            }
            issuers.push(Issuer::compile(issuer, files)?);
        }
        let token_sources = match &spec.token_sources {
            None => vec![TokenSource::Header {
                name: "authorization".into(),
                scheme: Some("bearer".into()),
            }],
            Some(list) if list.is_empty() => {
                return Err("identity.token_sources must not be empty".into());
            }
            Some(list) => list
                .iter()
                .map(TokenSource::compile)
                .collect::<Result<_, _>>()?,
        };
        let introspection = spec
            .introspection
            .as_ref()
            .map(|i| Introspector::compile(i, files).map(Arc::new))
            .transpose()?;
        let takes_tokens = !issuers.is_empty() || introspection.is_some();
        if spec.token_sources.is_some() && !takes_tokens {
            return Err(
                "identity.token_sources needs identity.jwt or identity.introspection".into(),
            );
        }
        let api_keys = spec.api_keys.as_ref().map(ApiKeys::compile).transpose()?;
        let mut sources = Vec::new();
        if let Some(jwt) = &spec.envoy_jwt_authn {
            if jwt.issuers.is_empty() || jwt.issuers.iter().any(String::is_empty) {
                return Err(
                    "identity.envoy_jwt_authn.issuers must list at least one issuer".into(),
                );
            }
            sources.push(Source::EnvoyJwt(jwt.clone()));
        }
        if let Some(spiffe) = &spec.spiffe {
            if spiffe.trust_domains.is_empty()
                || spiffe
                    .trust_domains
                    .iter()
                    .any(|d| d.is_empty() || d.contains('/') || d.contains(':'))
            {
                return Err("identity.spiffe.trust_domains must list bare trust domains such as acme.example".into());
            }
            for pattern in &spiffe.ids {
                let concrete = pattern.replace("/*", "/x");
                let in_domain = parse_spiffe_id(&concrete)
                    .is_some_and(|(d, _)| spiffe.trust_domains.iter().any(|t| t == d));
                if !in_domain {
                    return Err(format!(
                        "identity.spiffe.ids: {pattern:?} must be a SPIFFE ID in one of trust_domains (`*` for a whole segment)"
                    ));
                }
            }
            sources.push(Source::Spiffe(spiffe.clone()));
        }
        let mut credential_headers: Vec<String> = spec
            .credential_headers
            .clone()
            .unwrap_or_else(|| vec!["authorization".to_string()])
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        // A header that carries our own tokens or API keys is a credential
        // header too: sent and not verified, it never falls back to anonymous.
        let own = token_sources
            .iter()
            .filter(|_| takes_tokens)
            .filter_map(|s| match s {
                TokenSource::Header { name, .. } => Some(name.clone()),
                _ => None,
            })
            .chain(api_keys.iter().map(|k| k.header.clone()));
        for name in own.collect::<Vec<_>>() {
            if !credential_headers.contains(&name) {
                credential_headers.push(name);
            }
        }
        Ok(IdentityConfig {
            sources,
            credential_headers,
            issuers,
            token_sources,
            token_cache: jwt::TokenCache::default(),
            max_token_bytes: jwt::MAX_TOKEN_BYTES,
            introspection,
            api_keys,
            dpop: spec
                .dpop
                .as_ref()
                .map(|d| binding::Dpop::compile(d, tenant, files))
                .transpose()?,
        })
    }

    /// Applies the server's limits: the largest token, the token cache's size,
    /// and the DPoP replay cache's (a policy may not ask for more).
    pub fn apply_limits(
        &mut self,
        limits: &crate::foundation::limits::Limits,
        tenant: &str,
    ) -> Result<(), String> {
        self.max_token_bytes = limits.max_token_bytes;
        self.token_cache = jwt::TokenCache::with_capacity(limits.token_cache_size);
        match &mut self.dpop {
            Some(dpop) => dpop.limit_replay_cache(tenant, limits.replay_cache_size),
            None => Ok(()),
        }
    }

    /// Verified tokens cached now (at most `limits.token_cache_size`).
    pub fn cached_tokens(&self) -> usize {
        self.token_cache.len()
    }

    /// Request headers that carry credentials (the caller's token or key must
    /// not travel on beside a minted downstream token).
    pub fn credential_headers(&self) -> &[String] {
        &self.credential_headers
    }

    /// Whether a token may come in a cookie.
    pub fn reads_cookies(&self) -> bool {
        self.token_sources
            .iter()
            .any(|s| matches!(s, TokenSource::Cookie(_)))
    }

    /// The remote key sets this tenant's issuers use.
    pub fn remote_keys(&self) -> impl Iterator<Item = (&str, &Arc<RemoteKeys>)> {
        self.issuers
            .iter()
            .filter_map(|i| i.remote().map(|r| (i.issuer.as_str(), r)))
    }
}

impl TokenSource {
    fn compile(spec: &TokenSourceSpec) -> Result<TokenSource, String> {
        let valid = |n: &str| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        };
        match (&spec.header, &spec.cookie, &spec.query) {
            (Some(h), None, None) if valid(h) => {
                let name = h.to_ascii_lowercase();
                let scheme = match &spec.scheme {
                    Some(s) if valid(s) => Some(s.to_ascii_lowercase()),
                    Some(s) => return Err(format!("identity.token_sources: scheme {s:?} is not a token")),
                    None if name == "authorization" => Some("bearer".into()),
                    None => None,
                };
                Ok(TokenSource::Header { name, scheme })
            }
            (None, Some(c), None) if valid(c) && spec.scheme.is_none() => {
                Ok(TokenSource::Cookie(c.clone()))
            }
            (None, None, Some(q)) if valid(q) && spec.scheme.is_none() => {
                Ok(TokenSource::Query(q.clone()))
            }
            _ => Err(
                "identity.token_sources: each entry names one valid header (with an optional scheme), cookie or query parameter".into(),
            ),
        }
    }

    /// The token this source holds in the request, if any. `Err` when the
    /// source holds two (a repeated cookie or query parameter).
    fn find<'a>(&'a self, input: &'a Input) -> Result<Option<&'a str>, IdentityError> {
        let r = &input.resource;
        match self {
            TokenSource::Header { name, scheme } => {
                let Some(value) = r.headers.get(name) else {
                    return Ok(None);
                };
                let value = value.trim();
                Ok(match scheme {
                    None => Some(value),
                    // `Authorization` also carries DPoP-bound tokens (RFC 9449 §7.1).
                    Some(scheme) => value
                        .split_once(' ')
                        .filter(|(s, _)| {
                            s.eq_ignore_ascii_case(scheme)
                                || (name == "authorization" && s.eq_ignore_ascii_case("dpop"))
                        })
                        .map(|(_, t)| t.trim()),
                }
                .filter(|t| !t.is_empty()))
            }
            TokenSource::Cookie(name) => {
                let mut found = None;
                for pair in r
                    .headers
                    .get("cookie")
                    .into_iter()
                    .flat_map(|c| c.split(';'))
                {
                    if let Some((k, v)) = pair.trim().split_once('=')
                        && k == name
                    {
                        if found.is_some() {
                            return Err(IdentityError::Malformed(format!("cookie {name}")));
                        }
                        found = Some(v.trim_matches('"'));
                    }
                }
                Ok(found.filter(|t| !t.is_empty()))
            }
            TokenSource::Query(name) => {
                let mut values = crate::request::input::query_values(&r.query, name);
                let first = values.next();
                if values.next().is_some() {
                    return Err(IdentityError::Malformed(format!("query parameter {name}")));
                }
                // Envoy removes query parameters by their raw name: a
                // percent-encoded spelling would be read here and still reach
                // the upstream (and its access logs). Refused.
                match first {
                    Some((raw, _)) if raw != name => Err(IdentityError::Malformed(format!(
                        "query parameter {name} (percent-encoded name)"
                    ))),
                    Some((_, value)) => Ok(Some(value).filter(|t| !t.is_empty())),
                    None => Ok(None),
                }
            }
        }
    }
}

/// How the caller was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Anonymous,
    /// A JWT portcullis validated itself.
    Jwt,
    /// An opaque token the issuer's introspection endpoint vouched for.
    Introspection,
    /// An API key from the tenant's list.
    ApiKey,
    EnvoyJwt,
    Spiffe,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Anonymous => "anonymous",
            AuthMethod::Jwt => "jwt",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Introspection => "introspection",
            AuthMethod::EnvoyJwt => "envoy_jwt",
            AuthMethod::Spiffe => "spiffe",
        }
    }
}

/// The caller, as rules see it: `claims` in conditions and header templates.
#[derive(Debug, Clone)]
pub struct Identity {
    pub method: AuthMethod,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    /// The token's `jti`, when it has one.
    pub token_id: Option<String>,
    /// Shared with the verified-token cache: a cache hit does not copy them.
    pub claims: Arc<Map<String, Json>>,
    /// A query parameter that carried the token: removed before the upstream.
    pub consumed_query: Option<String>,
    /// When the credential expires (unix seconds), if it does.
    pub expires: Option<u64>,
    /// How the token is bound to its sender.
    pub binding: binding::Binding,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            method: AuthMethod::Anonymous,
            subject: None,
            issuer: None,
            token_id: None,
            claims: Arc::default(),
            consumed_query: None,
            expires: None,
            binding: binding::Binding::default(),
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.method == AuthMethod::Anonymous
    }
}

/// Why no identity could be established. Messages name the header, never its value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    #[error("credential {0:?} is repeated or holds several values")]
    Malformed(String),
    #[error("more than one credential: {0} and {1}")]
    Conflict(String, String),
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token's binding failed; `challenge` and `nonce` go to the client.
    #[error("{error}")]
    Binding {
        error: binding::BindingError,
        challenge: Option<String>,
        nonce: Option<String>,
    },
    /// Not a failure yet: something must be fetched first, then the check runs
    /// again (see [`crate::pipeline::Pipeline::check_async`]).
    #[error("{0}")]
    Pending(Pending),
    #[error("credential header {0:?} was sent but no identity source verified it")]
    Unverified(String),
    #[error("issuer is not trusted by this tenant")]
    IssuerNotTrusted,
    #[error("verified claims are malformed: {0}")]
    BadClaims(&'static str),
}

impl IdentityError {
    pub fn reason(&self) -> crate::foundation::reason::Reason {
        use crate::foundation::reason::Reason;
        match self {
            IdentityError::Malformed(_) | IdentityError::Conflict(..) => {
                Reason::MalformedCredential
            }
            IdentityError::Token(e) => e.reason(),
            IdentityError::Binding { error, .. } => error.reason(),
            IdentityError::Pending(Pending::Keys(_)) => Reason::KeysUnavailable,
            IdentityError::Pending(Pending::Introspect(..)) => Reason::IntrospectionUnavailable,
            IdentityError::Unverified(_) | IdentityError::BadClaims(_) => Reason::InvalidCredential,
            IdentityError::IssuerNotTrusted => Reason::IssuerNotTrusted,
        }
    }
}

/// Establishes the caller's identity: the first source that finds a credential
/// decides, and a credential that is present but unverified is an error.
pub fn authenticate(config: &IdentityConfig, input: &Input) -> Result<Identity, IdentityError> {
    let headers = &input.resource.headers;
    // Envoy joins repeated headers with commas; two credentials in one request are
    // ambiguous and refused (no credential syntax we accept contains a comma).
    for name in &config.credential_headers {
        if headers.get(name).is_some_and(|v| v.contains(',')) {
            return Err(IdentityError::Malformed(name.clone()));
        }
    }
    if (!config.issuers.is_empty() || config.introspection.is_some())
        && let Some(identity) = own_token(config, input)?
    {
        return Ok(identity);
    }
    if let Some(keys) = &config.api_keys
        && let Some(identity) = api_key(config, keys, input)?
    {
        return Ok(identity);
    }
    let mut bearer_verified = false;
    let mut found = None;
    for source in &config.sources {
        let outcome = match source {
            Source::EnvoyJwt(spec) => match envoy_jwt(spec, input)? {
                // jwt_authn verified the signature, not the binding: a bound
                // token whose proof or certificate is not here is refused
                // (RFC 9449 §7.1, RFC 8705 §3). With `forward: true` the token
                // is still in Authorization, and a DPoP proof can be checked.
                Some(mut identity) => {
                    let auth = headers.get("authorization").map(|v| v.trim());
                    let dpop_scheme = has_dpop_scheme(input, "authorization");
                    let token = auth
                        .and_then(|v| v.split_once(' '))
                        .map_or("", |(_, t)| t.trim());
                    identity.binding = bind(
                        config,
                        binding::SenderConstraint::None,
                        dpop_scheme,
                        &identity.claims,
                        token,
                        input,
                    )?;
                    Some(identity)
                }
                None => None,
            },
            Source::Spiffe(spec) => spiffe(spec, input),
        };
        if let Some(identity) = outcome {
            bearer_verified |= identity.method == AuthMethod::EnvoyJwt;
            found = Some(identity);
            break;
        }
    }
    // Envoy's jwt_authn removes the Authorization header it verified (unless
    // `forward: true`); one still present and unverified was not accepted by
    // anything, so it must not fall back to anonymous or to a workload identity.
    if !bearer_verified
        && let Some(name) = config
            .credential_headers
            .iter()
            .find(|h| headers.get(*h).is_some_and(|v| !v.trim().is_empty()))
    {
        return Err(IdentityError::Unverified(name.clone()));
    }
    Ok(found.unwrap_or_else(Identity::anonymous))
}

/// What a check must wait for before it can decide.
#[derive(Debug, Clone)]
pub enum Pending {
    /// An issuer's keys.
    Keys(Arc<RemoteKeys>),
    /// An introspection of this token (held only to send it to the endpoint).
    Introspect(Arc<Introspector>, String),
}

impl std::fmt::Display for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pending::Keys(k) => write!(f, "the keys of {} are not available", k.source),
            Pending::Introspect(i, _) => {
                write!(f, "introspection at {} did not answer", i.issuer)
            }
        }
    }
}

impl Pending {
    /// Fetches what is missing, waiting at most `wait`.
    pub async fn resolve(&self, now: std::time::SystemTime, wait: std::time::Duration) {
        match self {
            Pending::Keys(keys) => {
                keys.fetch_and_wait(wait).await;
            }
            Pending::Introspect(introspector, token) => {
                let now = crate::request::input::unix_seconds(now);
                introspector.introspect(token, now, wait).await;
            }
        }
    }
}

/// A compact JWS has exactly three dot-separated parts; anything else is an
/// opaque token.
fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

/// Finds the one token in the tenant's token sources and validates it: a JWT
/// against the tenant's issuers, an opaque token (or any token, when the
/// tenant has no issuers) by introspection. No token: `None`, and the other
/// sources are tried.
fn own_token(config: &IdentityConfig, input: &Input) -> Result<Option<Identity>, IdentityError> {
    let mut found: Option<(&TokenSource, &str)> = None;
    for source in &config.token_sources {
        if let Some(token) = source.find(input)? {
            if let Some((first, _)) = found {
                // RFC 6750 §3.1: a request with two credentials is refused.
                return Err(IdentityError::Conflict(first.describe(), source.describe()));
            }
            found = Some((source, token));
        }
    }
    let Some((source, token)) = found else {
        return Ok(None);
    };
    if token.len() > config.max_token_bytes {
        return Err(TokenError::TooLarge.into());
    }
    // A token from a cookie or the query beside something in a credential
    // header is two credentials too.
    if let Some(other) = config.credential_headers.iter().find(|h| {
        !matches!(source, TokenSource::Header { name, .. } if name == *h)
            && input
                .resource
                .headers
                .get(*h)
                .is_some_and(|v| !v.trim().is_empty())
    }) {
        return Err(IdentityError::Conflict(
            source.describe(),
            format!("header {other}"),
        ));
    }
    let introspect = config
        .introspection
        .as_ref()
        .filter(|_| config.issuers.is_empty() || !looks_like_jwt(token));
    let (method, verified) = if let Some(introspector) = introspect {
        if token.len() > jwt::MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge.into());
        }
        let now = crate::request::input::unix_seconds(input.context.time);
        match introspector.lookup(token, now) {
            introspection::Lookup::Known(result) => (AuthMethod::Introspection, result?),
            introspection::Lookup::Introspect => {
                return Err(IdentityError::Pending(Pending::Introspect(
                    Arc::clone(introspector),
                    token.to_string(),
                )));
            }
        }
    } else {
        match jwt::verify_cached(
            token,
            &config.issuers,
            &config.token_cache,
            input.context.time,
        ) {
            Attempt::Done(result) => (AuthMethod::Jwt, result?),
            Attempt::NeedKeys(remote) => {
                return Err(IdentityError::Pending(Pending::Keys(remote)));
            }
        }
    };
    // Never cached: the proof and the certificate belong to this request.
    let dpop_scheme = matches!(source, TokenSource::Header { name, .. }
        if has_dpop_scheme(input, name));
    let binding = bind(
        config,
        verified.sender_constraint,
        dpop_scheme,
        &verified.claims,
        token,
        input,
    )?;
    Ok(Some(Identity {
        method,
        subject: verified.subject,
        issuer: Some(verified.issuer),
        token_id: verified.token_id,
        claims: verified.claims,
        expires: Some(verified.expires),
        consumed_query: match source {
            TokenSource::Query(name) => Some(name.clone()),
            _ => None,
        },
        binding,
    }))
}

/// Whether the header's value uses the DPoP scheme (RFC 9449 §7.1).
fn has_dpop_scheme(input: &Input, header: &str) -> bool {
    input.resource.headers.get(header).is_some_and(|v| {
        v.trim_start()
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("dpop "))
    })
}

/// Checks a verified token's sender binding (never cached), and turns a
/// failure into the answer the client gets: a DPoP request, or a DPoP problem,
/// is challenged with the DPoP scheme and the accepted algorithms (RFC 9449
/// §7.1), with a fresh `DPoP-Nonce` when one is required.
fn bind(
    config: &IdentityConfig,
    required: binding::SenderConstraint,
    dpop_scheme: bool,
    claims: &Map<String, Json>,
    token: &str,
    input: &Input,
) -> Result<binding::Binding, IdentityError> {
    binding::check(
        config.dpop.as_ref(),
        required,
        dpop_scheme,
        claims,
        token,
        input,
    )
    .map_err(|error| {
        let dpop = config.dpop.as_ref();
        let challenge = (dpop_scheme || matches!(error, binding::BindingError::Required("dpop")))
            .then(|| {
                let code = match error {
                    binding::BindingError::UseNonce => "use_dpop_nonce",
                    binding::BindingError::Mismatch(_) | binding::BindingError::Required(_) => {
                        "invalid_token"
                    }
                    _ => "invalid_dpop_proof",
                };
                let algs = dpop.map_or(String::new(), |d| format!(", algs=\"{}\"", d.algs));
                format!("DPoP realm=\"portcullis\", error=\"{code}\"{algs}")
            });
        let nonce = matches!(error, binding::BindingError::UseNonce)
            .then(|| {
                dpop.and_then(|d| d.nonce(crate::request::input::unix_seconds(input.context.time)))
            })
            .flatten();
        IdentityError::Binding {
            error,
            challenge,
            nonce,
        }
    })
}

/// The caller of an API key. A key sent with another credential is refused.
fn api_key(
    config: &IdentityConfig,
    keys: &ApiKeys,
    input: &Input,
) -> Result<Option<Identity>, IdentityError> {
    let headers = &input.resource.headers;
    let Some(presented) = headers
        .get(&keys.header)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    if let Some(other) = config
        .credential_headers
        .iter()
        .find(|h| **h != keys.header && headers.get(*h).is_some_and(|v| !v.trim().is_empty()))
    {
        return Err(IdentityError::Conflict(
            format!("header {}", keys.header),
            format!("header {other}"),
        ));
    }
    let key = keys
        .find(presented)
        .ok_or_else(|| IdentityError::Unverified(keys.header.clone()))?;
    Ok(Some(Identity {
        method: AuthMethod::ApiKey,
        subject: Some(key.subject.clone()),
        issuer: None,
        token_id: None,
        claims: key.claims.clone(),
        consumed_query: None,
        expires: None,
        binding: binding::Binding::default(),
    }))
}

impl TokenSource {
    fn describe(&self) -> String {
        match self {
            TokenSource::Header { name, .. } => format!("header {name}"),
            TokenSource::Cookie(name) => format!("cookie {name}"),
            TokenSource::Query(name) => format!("query parameter {name}"),
        }
    }
}

fn envoy_jwt(spec: &EnvoyJwtSpec, input: &Input) -> Result<Option<Identity>, IdentityError> {
    let Some(payload) = input
        .resource
        .metadata
        .get(&spec.metadata_namespace)
        .and_then(|ns| ns.get(&spec.payload_key))
    else {
        return Ok(None);
    };
    let Json::Object(claims) = payload else {
        return Err(IdentityError::BadClaims("payload is not an object"));
    };
    let issuer = match claims.get("iss") {
        Some(Json::String(iss)) => iss,
        Some(_) => return Err(IdentityError::BadClaims("iss is not a string")),
        None => return Err(IdentityError::IssuerNotTrusted),
    };
    // The tenant-to-issuer check holds even for claims Envoy verified: Envoy's
    // providers are per listener or route, not per tenant.
    if !spec.issuers.iter().any(|i| i == issuer) {
        return Err(IdentityError::IssuerNotTrusted);
    }
    let subject = match claims.get("sub") {
        Some(Json::String(s)) => Some(s.clone()),
        None => None,
        Some(_) => return Err(IdentityError::BadClaims("sub is not a string")),
    };
    // Claims that revocation lists and downstream tokens key on must have the
    // type they are read as, or a list entry would silently not apply.
    for name in ["jti", "client_id", "azp"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err(IdentityError::BadClaims(
                "jti, client_id or azp is not a string",
            ));
        }
    }
    Ok(Some(Identity {
        method: AuthMethod::EnvoyJwt,
        subject,
        issuer: Some(issuer.clone()),
        token_id: claims.get("jti").and_then(Json::as_str).map(str::to_string),
        claims: Arc::new(claims.clone()),
        consumed_query: None,
        expires: claims.get("exp").and_then(Json::as_u64),
        binding: binding::Binding::default(),
    }))
}

fn spiffe(spec: &SpiffeSpec, input: &Input) -> Option<Identity> {
    let id = input.context.peer.as_ref()?.spiffe_id()?;
    // Only a well-formed `spiffe://` URI SAN counts: Envoy's principal falls
    // back to the certificate subject, which never identifies a workload here.
    let (trust_domain, segments) = parse_spiffe_id(id)?;
    if !spec.trust_domains.iter().any(|d| d == trust_domain) {
        return None;
    }
    if !spec.ids.is_empty()
        && !spec
            .ids
            .iter()
            .any(|p| spiffe_matches(p, trust_domain, &segments))
    {
        return None;
    }
    let mut claims = Map::new();
    claims.insert("sub".into(), Json::String(id.to_string()));
    claims.insert("spiffe_id".into(), Json::String(id.to_string()));
    claims.insert(
        "trust_domain".into(),
        Json::String(trust_domain.to_string()),
    );
    Some(Identity {
        method: AuthMethod::Spiffe,
        subject: Some(id.to_string()),
        issuer: Some(format!("spiffe://{trust_domain}")),
        token_id: None,
        claims: Arc::new(claims),
        consumed_query: None,
        expires: None,
        binding: binding::Binding::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::foundation::reason::Reason;
    use crate::request::input::Peer;
    use serde_json::json;

    fn config(yaml: &str) -> IdentityConfig {
        let spec: IdentitySpec = serde_yaml::from_str(yaml).unwrap();
        IdentityConfig::compile(
            &spec,
            "t",
            &crate::foundation::policy_files::FileScope::new(".", &[]),
        )
        .unwrap()
    }

    fn jwt_config() -> IdentityConfig {
        config(
            "envoy_jwt_authn: { issuers: [https://idp.acme] }\nspiffe: { trust_domains: [acme.example] }",
        )
    }

    fn with_claims(claims: Json) -> Input {
        let mut input = Input::default();
        input.resource.metadata.insert(
            JWT_AUTHN_NAMESPACE.into(),
            json!({ JWT_AUTHN_PAYLOAD_KEY: claims }),
        );
        input
    }

    #[test]
    fn envoy_verified_claims_from_a_trusted_issuer() {
        let id = authenticate(
            &jwt_config(),
            &with_claims(json!({"iss": "https://idp.acme", "sub": "alice"})),
        )
        .unwrap();
        assert_eq!(id.method, AuthMethod::EnvoyJwt);
        assert_eq!(id.subject.as_deref(), Some("alice"));
    }

    #[test]
    fn claims_from_another_tenants_issuer_are_refused() {
        let err = authenticate(
            &jwt_config(),
            &with_claims(json!({"iss": "https://idp.other", "sub": "mallory"})),
        )
        .unwrap_err();
        assert_eq!(err.reason(), Reason::IssuerNotTrusted);
        let err = authenticate(&jwt_config(), &with_claims(json!({"sub": "x"}))).unwrap_err();
        assert_eq!(err.reason(), Reason::IssuerNotTrusted);
        let err = authenticate(&jwt_config(), &with_claims(json!("nope"))).unwrap_err();
        assert_eq!(err.reason(), Reason::InvalidCredential);
    }

    #[test]
    fn claims_envoy_verified_still_need_their_binding() {
        // A DPoP-bound token that jwt_authn verified and removed: its proof
        // cannot be checked, so it is refused (a stolen token must not pass).
        let bound = json!({"iss": "https://idp.acme", "sub": "alice", "cnf": {"jkt": "abc"}});
        let err = authenticate(&jwt_config(), &with_claims(bound)).unwrap_err();
        assert_eq!(err.reason(), Reason::TokenBindingMismatch);
        // Certificate-bound, with no certificate on the connection.
        let bound = json!({"iss": "https://idp.acme", "sub": "alice", "cnf": {"x5t#S256": "abc"}});
        let err = authenticate(&jwt_config(), &with_claims(bound)).unwrap_err();
        assert_eq!(err.reason(), Reason::TokenBindingMismatch);
        // A confirmation method portcullis cannot check.
        let bound = json!({"iss": "https://idp.acme", "sub": "alice", "cnf": {"jwk": {}}});
        let err = authenticate(&jwt_config(), &with_claims(bound)).unwrap_err();
        assert_eq!(err.reason(), Reason::TokenBindingMismatch);
        // Unbound: fine.
        let plain = json!({"iss": "https://idp.acme", "sub": "alice"});
        assert_eq!(
            authenticate(&jwt_config(), &with_claims(plain))
                .unwrap()
                .binding
                .kind,
            "none"
        );
    }

    #[test]
    fn spiffe_peer_of_a_trusted_domain() {
        let mut input = Input::default();
        input.context.peer = Some(Peer {
            principal: "spiffe://acme.example/ns/shop/sa/cart".into(),
            certificate: None,
        });
        let id = authenticate(&jwt_config(), &input).unwrap();
        assert_eq!(id.method, AuthMethod::Spiffe);
        assert_eq!(id.claims["trust_domain"], "acme.example");

        input.context.peer = Some(Peer {
            principal: "spiffe://evil.example/ns/shop/sa/cart".into(),
            certificate: None,
        });
        assert!(authenticate(&jwt_config(), &input).unwrap().is_anonymous());
    }

    #[test]
    fn spiffe_ids_are_strict_and_patterns_match_whole_segments() {
        assert_eq!(
            parse_spiffe_id("spiffe://acme.example/ns/shop/sa/cart"),
            Some(("acme.example", vec!["ns", "shop", "sa", "cart"]))
        );
        for bad in [
            "spiffe://ACME.example/x",
            "spiffe://acme.example/ns//x",
            "spiffe://acme.example/ns/../x",
            "spiffe://acme.example/x?y",
            "spiffe://acme.example:443/x",
            "spiffe://acme.example/",
            "spiffe:///x",
            "CN=spiffe://acme.example/x",
        ] {
            assert_eq!(parse_spiffe_id(bad), None, "{bad}");
        }
        let segs = ["ns", "shop", "sa", "cart"];
        assert!(spiffe_matches(
            "spiffe://acme.example/ns/shop/sa/*",
            "acme.example",
            &segs
        ));
        assert!(!spiffe_matches(
            "spiffe://acme.example/ns/*/sa/db",
            "acme.example",
            &segs
        ));
        assert!(!spiffe_matches(
            "spiffe://acme.example/ns/shop/*",
            "acme.example",
            &segs
        ));
        assert!(!spiffe_matches(
            "spiffe://other.example/ns/shop/sa/*",
            "acme.example",
            &segs
        ));

        let cfg = config(
            "spiffe: { trust_domains: [acme.example], ids: ['spiffe://acme.example/ns/shop/sa/*'] }",
        );
        let mut input = Input::default();
        let peer = |p: &str| Peer {
            principal: p.into(),
            certificate: None,
        };
        input.context.peer = Some(peer("spiffe://acme.example/ns/shop/sa/cart"));
        assert_eq!(
            authenticate(&cfg, &input).unwrap().method,
            AuthMethod::Spiffe
        );
        input.context.peer = Some(peer("spiffe://acme.example/ns/admin/sa/cart"));
        assert!(authenticate(&cfg, &input).unwrap().is_anonymous());
        let spec: IdentitySpec = serde_yaml::from_str(
            "spiffe: { trust_domains: [acme.example], ids: ['spiffe://other.example/x'] }",
        )
        .unwrap();
        assert!(
            IdentityConfig::compile(
                &spec,
                "t",
                &crate::foundation::policy_files::FileScope::new(".", &[])
            )
            .is_err()
        );
    }

    #[test]
    fn unverified_credential_never_becomes_anonymous() {
        let mut input = Input::default();
        input
            .resource
            .headers
            .insert("authorization".into(), "Bearer abc".into());
        let err = authenticate(&jwt_config(), &input).unwrap_err();
        assert_eq!(err.reason(), Reason::InvalidCredential);
        assert!(!err.to_string().contains("abc"));
        // Not even when an mTLS peer is there.
        input.context.peer = Some(Peer {
            principal: "spiffe://acme.example/ns/a/sa/b".into(),
            certificate: None,
        });
        assert_eq!(
            authenticate(&jwt_config(), &input).unwrap_err().reason(),
            Reason::InvalidCredential
        );
    }

    #[test]
    fn repeated_credential_header_is_malformed() {
        let mut input = with_claims(json!({"iss": "https://idp.acme", "sub": "alice"}));
        input
            .resource
            .headers
            .insert("authorization".into(), "Bearer a, Bearer b".into());
        let err = authenticate(&jwt_config(), &input).unwrap_err();
        assert_eq!(err.reason(), Reason::MalformedCredential);
    }

    #[test]
    fn no_credential_is_anonymous() {
        assert!(
            authenticate(&jwt_config(), &Input::default())
                .unwrap()
                .is_anonymous()
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        let spec: IdentitySpec = serde_yaml::from_str("envoy_jwt_authn: { issuers: [] }").unwrap();
        assert!(
            IdentityConfig::compile(
                &spec,
                "t",
                &crate::foundation::policy_files::FileScope::new(".", &[])
            )
            .is_err()
        );
        let spec: IdentitySpec =
            serde_yaml::from_str("spiffe: { trust_domains: ['spiffe://x'] }").unwrap();
        assert!(
            IdentityConfig::compile(
                &spec,
                "t",
                &crate::foundation::policy_files::FileScope::new(".", &[])
            )
            .is_err()
        );
        assert!(serde_yaml::from_str::<IdentitySpec>("bogus: 1").is_err());
    }
}
