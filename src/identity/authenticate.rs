//! Establishing the caller's identity: [`authenticate`] tries the tenant's
//! sources in order (its own tokens, API keys, Envoy-verified claims, SPIFFE
//! peers), refuses two credentials or one nothing verified, and checks a
//! verified token's sender binding.
//!
//! Never imports: policy, decision, tenants or anything above them.

use std::sync::Arc;

use serde_json::{Map, Value as Json};

use crate::request::input::Input;

use super::api_keys::api_key;
use super::binding;
use super::caller::{AuthMethod, Identity};
use super::config::{IdentityConfig, Source};
use super::envoy_jwt::envoy_jwt;
use super::error::{IdentityError, Pending};
use super::introspection;
use super::jwt::{self, Attempt, TokenError};
use super::spiffe::spiffe;
use super::token_source::{TokenSource, has_dpop_scheme};

/// Establishes the caller's identity: the first source that finds a credential
/// decides, and a credential that is present but unverified is an error. A
/// DPoP proof is recorded as used in this replica's own cache, last, once the
/// whole identity holds.
pub fn authenticate(config: &IdentityConfig, input: &Input) -> Result<Identity, IdentityError> {
    let mut identity = identify(config, input)?;
    if let Some(ticket) = identity.binding.replay.take() {
        record_replay(config, input, |dpop, now| dpop.record_local(&ticket, now))?;
    }
    Ok(identity)
}

/// Records a proof's one-time use with `record` (the tenant's own cache, or
/// the answer the shared store gave) and turns a refusal into the DPoP
/// challenge the client gets.
pub fn record_replay(
    config: &IdentityConfig,
    input: &Input,
    record: impl FnOnce(&binding::Dpop, u64) -> Result<(), binding::BindingError>,
) -> Result<(), IdentityError> {
    let now = crate::request::input::unix_seconds(input.context.time);
    let result = match config.dpop.as_ref() {
        Some(dpop) => record(dpop, now),
        // A ticket is only made by a tenant's DPoP check.
        None => Err(binding::BindingError::BadProof(
            "DPoP is not configured for this tenant",
        )),
    };
    result.map_err(|error| refusal(config, true, error, input))
}

/// [`authenticate`] without recording the DPoP proof: the identity's
/// `binding.replay` says what the caller must record (in the shared store)
/// before it trusts the identity.
pub fn identify(config: &IdentityConfig, input: &Input) -> Result<Identity, IdentityError> {
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
        && let Some(identity) = api_key(&config.credential_headers, keys, input)?
    {
        return Ok(identity);
    }
    let mut bearer_verified = false;
    let mut found = None;
    for source in &config.sources {
        let outcome = match source {
            Source::EnvoyJwt(spec) => match envoy_jwt(spec, input, config.max_claim_items)? {
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
            config.max_claim_items,
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
    .map_err(|error| refusal(config, dpop_scheme, error, input))
}

/// A failed binding as the answer the client gets (see [`bind`]).
fn refusal(
    config: &IdentityConfig,
    dpop_scheme: bool,
    error: binding::BindingError,
    input: &Input,
) -> IdentityError {
    {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::foundation::reason::Reason;
    use crate::identity::spec::{IdentitySpec, JWT_AUTHN_NAMESPACE, JWT_AUTHN_PAYLOAD_KEY};
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
    fn spiffe_id_patterns_pick_whole_segments() {
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
}
