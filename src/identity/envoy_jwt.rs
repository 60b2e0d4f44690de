//! Claims Envoy's `jwt_authn` filter already verified, read from the request's
//! `metadata_context`: the tenant's issuer check and the claims' types, and
//! `scope`/`scp` read as one list exactly as for portcullis' own JWTs
//! ([`super::jwt::normalize_scope`]).
//!
//! Never imports: policy, decision, tenants or anything above them.

use std::sync::Arc;

use serde_json::Value as Json;

use crate::request::input::Input;

use super::binding;
use super::caller::{AuthMethod, Identity};
use super::error::IdentityError;
use super::jwt;
use super::spec::EnvoyJwtSpec;

/// The verified claims for `spec`, if Envoy left any; `scope`/`scp` of more
/// than `max_claim_items` scopes, or claims past [`super::claims_bound`], is
/// `claims_too_large`, as for a JWT.
pub(super) fn envoy_jwt(
    spec: &EnvoyJwtSpec,
    input: &Input,
    max_claim_items: usize,
) -> Result<Option<Identity>, IdentityError> {
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
    // `scope` is a space-separated string in RFC 8693 §4.2 (and RFC 9068
    // §2.2.3); `scopes:` reads a list, so split it as the JWT path does.
    let mut claims = claims.clone();
    jwt::normalize_scope(&mut claims, max_claim_items).map_err(|e| match e {
        jwt::TokenError::ClaimsTooLarge => IdentityError::Token(e),
        _ => IdentityError::BadClaims("scope or scp is not a string or a list of strings"),
    })?;
    // Envoy verified the payload but bounded nothing in it: our bounds on
    // size, depth and elements, as for every claims document.
    super::claims_bound::within(&claims, max_claim_items)
        .map_err(|_| IdentityError::Token(jwt::TokenError::ClaimsTooLarge))?;
    Ok(Some(Identity {
        method: AuthMethod::EnvoyJwt,
        subject,
        issuer: Some(issuer.clone()),
        token_id: claims.get("jti").and_then(Json::as_str).map(str::to_string),
        expires: claims.get("exp").and_then(Json::as_u64),
        claims: Arc::new(claims),
        consumed_query: None,
        binding: binding::Binding::default(),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn spec() -> EnvoyJwtSpec {
        EnvoyJwtSpec {
            issuers: vec!["https://idp.example".into()],
            metadata_namespace: "envoy.filters.http.jwt_authn".into(),
            payload_key: "jwt_payload".into(),
        }
    }

    /// What `jwt_authn` leaves in the metadata for `payload`.
    fn verified(payload: Json) -> Result<Option<Identity>, IdentityError> {
        let mut input = Input::default();
        input.resource.metadata.insert(
            "envoy.filters.http.jwt_authn".into(),
            json!({ "jwt_payload": payload }),
        );
        envoy_jwt(&spec(), &input, 4)
    }

    fn scope(payload: Json) -> Json {
        verified(payload).unwrap().unwrap().claims["scope"].clone()
    }

    #[test]
    fn a_space_separated_scope_is_a_list_of_scopes() {
        let iss = "https://idp.example";
        assert_eq!(
            scope(json!({ "iss": iss, "scope": "orders:read  orders:write" })),
            json!(["orders:read", "orders:write"])
        );
        // The forms portcullis' own JWT path accepts: a list, and `scp` as a
        // list or a string, joined under `scope`.
        assert_eq!(
            scope(json!({ "iss": iss, "scope": ["a"], "scp": ["b", "c"] })),
            json!(["a", "b", "c"])
        );
        assert_eq!(
            scope(json!({ "iss": iss, "scp": "b c" })),
            json!(["b", "c"])
        );
        let none = verified(json!({ "iss": iss })).unwrap().unwrap();
        assert!(!none.claims.contains_key("scope"));
    }

    #[test]
    fn more_scopes_than_the_claims_bound_are_claims_too_large() {
        let iss = "https://idp.example";
        assert_eq!(
            scope(json!({ "iss": iss, "scope": "a b c d" }))
                .as_array()
                .unwrap()
                .len(),
            4
        );
        let e = verified(json!({ "iss": iss, "scope": "a b c", "scp": ["d", "e"] }));
        assert_eq!(
            e.err().unwrap().reason(),
            crate::foundation::reason::Reason::ClaimsTooLarge
        );
    }

    #[test]
    fn the_payload_is_bounded_in_bytes_depth_and_elements() {
        use crate::foundation::limits::{MAX_CLAIMS_BYTES, MAX_CLAIMS_DEPTH};
        use crate::foundation::reason::Reason;
        let iss = "https://idp.example";
        let too_large = |payload: Json| {
            verified(payload).err().map(|e| e.reason()) == Some(Reason::ClaimsTooLarge)
        };
        // Bytes: a note that makes the document exactly the bound, then one more.
        let base = serde_json::to_string(&json!({ "iss": iss, "note": "" }))
            .unwrap()
            .len();
        let note = |n: usize| json!({ "iss": iss, "note": "x".repeat(n) });
        assert!(verified(note(MAX_CLAIMS_BYTES - base)).unwrap().is_some());
        assert!(too_large(note(MAX_CLAIMS_BYTES - base + 1)));
        // Depth: the document is level 1, so `MAX_CLAIMS_DEPTH - 1` objects in it.
        let nest = |levels: usize| {
            let mut v = json!(1);
            for _ in 0..levels {
                v = json!({ "a": v });
            }
            json!({ "iss": iss, "nest": v })
        };
        assert!(verified(nest(MAX_CLAIMS_DEPTH - 1)).unwrap().is_some());
        assert!(too_large(nest(MAX_CLAIMS_DEPTH)));
        // Elements: any array or object, not only scopes (the bound here is 4).
        assert!(
            verified(json!({ "iss": iss, "groups": [1, 2, 3, 4] }))
                .unwrap()
                .is_some()
        );
        assert!(too_large(json!({ "iss": iss, "groups": [1, 2, 3, 4, 5] })));
        assert!(too_large(
            json!({ "iss": iss, "a": 1, "b": 2, "c": 3, "d": 4 })
        ));
    }

    #[test]
    fn a_scope_of_another_type_is_refused() {
        for bad in [json!(42), json!(["a", 1]), json!({ "a": true })] {
            for name in ["scope", "scp"] {
                let e = verified(json!({ "iss": "https://idp.example", name: bad }));
                let e = e.err().unwrap();
                assert_eq!(
                    e.reason(),
                    crate::foundation::reason::Reason::InvalidCredential
                );
            }
        }
    }
}
