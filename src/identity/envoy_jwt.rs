//! Claims Envoy's `jwt_authn` filter already verified, read from the request's
//! `metadata_context`: the tenant's issuer check and the claims' types.
//!
//! Never imports: policy, decision, tenants or anything above them.

use std::sync::Arc;

use serde_json::Value as Json;

use crate::request::input::Input;

use super::binding;
use super::caller::{AuthMethod, Identity};
use super::error::IdentityError;
use super::spec::EnvoyJwtSpec;

pub(super) fn envoy_jwt(
    spec: &EnvoyJwtSpec,
    input: &Input,
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
