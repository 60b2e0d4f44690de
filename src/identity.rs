//! Stage 3: who is calling, from a verified credential.
//!
//! Each tenant lists the identity sources it trusts. This sources are
//! Envoy's own `jwt_authn` filter (claims it already verified, read from
//! `metadata_context`) and the SPIFFE ID of an mTLS peer. portcullis' own JWT
//! validation slots in as another [`Source`].
//!
//! What this stage must never do: accept a credential it could not verify (an
//! invalid credential never falls back to anonymous), accept claims from an issuer
//! the tenant does not trust, or put a token into an error or a log line.

use serde::Deserialize;
use serde_json::{Map, Value as Json};

use crate::input::Input;

/// Envoy's `jwt_authn` filter name, the default metadata namespace of its claims.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// Default `payload_in_metadata` key; must match the Envoy provider's setting.
pub const JWT_AUTHN_PAYLOAD_KEY: &str = "jwt_payload";

/// The identity section of a policy file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyJwtSpec {
    /// Issuers (`iss`) this tenant trusts. Claims from any other issuer are denied.
    pub issuers: Vec<String>,
    #[serde(default = "default_namespace")]
    pub metadata_namespace: String,
    #[serde(default = "default_payload_key")]
    pub payload_key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpiffeSpec {
    /// Trust domains (`acme.example`) whose workloads are identities here.
    pub trust_domains: Vec<String>,
}

fn default_namespace() -> String {
    JWT_AUTHN_NAMESPACE.to_string()
}

fn default_payload_key() -> String {
    JWT_AUTHN_PAYLOAD_KEY.to_string()
}

/// A tenant's identity sources, validated.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    sources: Vec<Source>,
    credential_headers: Vec<String>,
}

/// One way of turning a request into an [`Identity`].
#[derive(Debug, Clone)]
enum Source {
    EnvoyJwt(EnvoyJwtSpec),
    Spiffe(SpiffeSpec),
}

impl IdentityConfig {
    pub fn compile(spec: &IdentitySpec) -> Result<IdentityConfig, String> {
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
            sources.push(Source::Spiffe(spiffe.clone()));
        }
        let credential_headers = spec
            .credential_headers
            .clone()
            .unwrap_or_else(|| vec!["authorization".to_string()])
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        Ok(IdentityConfig {
            sources,
            credential_headers,
        })
    }
}

/// How the caller was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Anonymous,
    EnvoyJwt,
    Spiffe,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Anonymous => "anonymous",
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
    pub claims: Map<String, Json>,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            method: AuthMethod::Anonymous,
            subject: None,
            issuer: None,
            claims: Map::new(),
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.method == AuthMethod::Anonymous
    }
}

/// Why no identity could be established. Messages name the header, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("credential header {0:?} is repeated or holds several values")]
    Malformed(String),
    #[error("credential header {0:?} was sent but no identity source verified it")]
    Unverified(String),
    #[error("issuer is not trusted by this tenant")]
    IssuerNotTrusted,
    #[error("verified claims are malformed: {0}")]
    BadClaims(&'static str),
}

impl IdentityError {
    pub fn reason(&self) -> crate::decision::Reason {
        use crate::decision::Reason;
        match self {
            IdentityError::Malformed(_) => Reason::MalformedCredential,
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
    let mut bearer_verified = false;
    let mut found = None;
    for source in &config.sources {
        let outcome = match source {
            Source::EnvoyJwt(spec) => envoy_jwt(spec, input)?,
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
    Ok(Some(Identity {
        method: AuthMethod::EnvoyJwt,
        subject,
        issuer: Some(issuer.clone()),
        claims: claims.clone(),
    }))
}

fn spiffe(spec: &SpiffeSpec, input: &Input) -> Option<Identity> {
    let id = input.context.peer.as_ref()?.spiffe_id()?;
    let trust_domain = id.strip_prefix("spiffe://")?.split('/').next()?;
    if !spec.trust_domains.iter().any(|d| d == trust_domain) {
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
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Reason;
    use crate::input::Peer;
    use serde_json::json;

    fn config(yaml: &str) -> IdentityConfig {
        let spec: IdentitySpec = serde_yaml::from_str(yaml).unwrap();
        IdentityConfig::compile(&spec).unwrap()
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
        assert!(IdentityConfig::compile(&spec).is_err());
        let spec: IdentitySpec =
            serde_yaml::from_str("spiffe: { trust_domains: ['spiffe://x'] }").unwrap();
        assert!(IdentityConfig::compile(&spec).is_err());
        assert!(serde_yaml::from_str::<IdentitySpec>("bogus: 1").is_err());
    }
}
