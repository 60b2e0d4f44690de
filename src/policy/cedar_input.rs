//! The fixed mapping of one request onto a Cedar request (docs/cedar.md):
//! the principal from the verified identity, the resource from the route's
//! parameters and the tenant's resource attributes, the context from the
//! connection and the request. Values are built as Cedar expressions
//! directly, never through Cedar's entity JSON, so a claim shaped like
//! `{"__entity": …}` stays a record and cannot name an entity.
//!
//! Never imports: decision, tenants or anything above them.

use std::collections::{BTreeMap, HashMap};

use cedar_policy::{EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use serde_json::Value as Json;

use crate::identity::{AuthMethod, Identity};
use crate::request::input::{Body, Input};

/// The principal's entity type for each way a caller is identified.
pub fn principal_type(method: AuthMethod) -> &'static str {
    match method {
        AuthMethod::Anonymous => "Anonymous",
        AuthMethod::Jwt => "Jwt",
        AuthMethod::Introspection => "Introspected",
        AuthMethod::ApiKey => "ApiKey",
        AuthMethod::EnvoyJwt => "EnvoyJwt",
        AuthMethod::Spiffe => "Spiffe",
    }
}

/// `Type::"id"`; `None` when `type_name` is not a Cedar name (the compiler
/// checks every name it builds, so only an unchecked one fails).
pub fn uid(type_name: &str, id: &str) -> Option<EntityUid> {
    let name: EntityTypeName = type_name.parse().ok()?;
    Some(EntityUid::from_type_name_and_id(name, EntityId::new(id)))
}

/// The principal: its uid (`Jwt::"<sub>"`; the empty id without a subject)
/// and its attributes, the validated claims.
pub fn principal(identity: &Identity) -> (EntityUid, HashMap<String, RestrictedExpression>) {
    let id = identity.subject.as_deref().unwrap_or("");
    let uid = uid(principal_type(identity.method), id)
        .unwrap_or_else(|| EntityUid::from_type_name_and_id(anonymous(), EntityId::new(id)));
    (uid, record_fields(&identity.claims))
}

fn anonymous() -> EntityTypeName {
    // A constant Cedar identifier.
    #[allow(clippy::expect_used)]
    "Anonymous".parse().expect("Anonymous is a Cedar name")
}

/// The resource's attributes: the path parameters, then the tenant's resource
/// attributes (the compiler refuses a name that is both).
pub fn resource_attributes(
    params: &[(String, String)],
    attributes: Option<&BTreeMap<String, String>>,
) -> HashMap<String, RestrictedExpression> {
    params
        .iter()
        .map(|(k, v)| (k, v))
        .chain(attributes.into_iter().flatten())
        .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())))
        .collect()
}

/// The context record's fields: `time`, `method`, `path`, `host`, `scheme`,
/// `tenant`, `request_id`, `sni`, `source` and `peer` when known, `auth`,
/// `headers` (only the names the tenant exposes), `body` when whole JSON.
pub fn context(
    input: &Input,
    identity: &Identity,
    tenant: &str,
    headers: &[String],
) -> Vec<(String, RestrictedExpression)> {
    let r = &input.resource;
    let c = &input.context;
    let s = |v: &str| RestrictedExpression::new_string(v.to_string());
    let seconds = crate::request::input::unix_seconds(c.time);
    let mut out = vec![
        (
            "time".to_string(),
            RestrictedExpression::new_long(i64::try_from(seconds).unwrap_or(i64::MAX)),
        ),
        ("method".into(), s(&r.method)),
        ("path".into(), s(&r.path)),
        ("host".into(), s(&r.host)),
        ("scheme".into(), s(&r.scheme)),
        ("tenant".into(), s(tenant)),
        ("request_id".into(), s(&c.request_id)),
        ("sni".into(), s(&c.sni)),
    ];
    if let Some(source) = &c.source {
        out.push(("source".into(), s(source)));
    }
    if let Some(peer) = &c.peer {
        let mut fields = vec![
            ("principal".to_string(), s(&peer.principal)),
            (
                "has_certificate".to_string(),
                RestrictedExpression::new_bool(peer.certificate.is_some()),
            ),
        ];
        if let Some(id) = peer.spiffe_id() {
            fields.push(("spiffe_id".into(), s(id)));
        }
        out.extend(record("peer", fields));
    }
    let mut auth = vec![
        ("method".to_string(), s(identity.method.as_str())),
        ("sender_constraint".to_string(), s(identity.binding.kind)),
    ];
    for (key, value) in [
        ("subject", &identity.subject),
        ("issuer", &identity.issuer),
        ("token_id", &identity.token_id),
    ] {
        if let Some(v) = value {
            auth.push((key.to_string(), s(v)));
        }
    }
    out.extend(record("auth", auth));
    let exposed = headers
        .iter()
        .filter_map(|h| r.headers.get(h).map(|v| (h.clone(), s(v))));
    out.extend(record("headers", exposed.collect()));
    if let Body::Json(body) = &r.body
        && let Some(v) = value(body)
    {
        out.push(("body".into(), v));
    }
    out
}

/// `name: {fields}` as one context field (nothing when the names repeat,
/// which the fixed names above never do).
fn record(
    name: &str,
    fields: Vec<(String, RestrictedExpression)>,
) -> Option<(String, RestrictedExpression)> {
    RestrictedExpression::new_record(fields)
        .ok()
        .map(|r| (name.to_string(), r))
}

/// A JSON object's members as Cedar values (see [`value`]).
pub fn record_fields(
    object: &serde_json::Map<String, Json>,
) -> HashMap<String, RestrictedExpression> {
    object
        .iter()
        .filter_map(|(k, v)| value(v).map(|v| (k.clone(), v)))
        .collect()
}

/// A JSON value as a Cedar value: strings, booleans, integers, arrays as
/// sets, objects as records. `null` and numbers Cedar has no type for
/// (fractions, integers beyond 64 bits) are left out, so a policy sees them
/// as absent (`has` is false).
pub fn value(json: &Json) -> Option<RestrictedExpression> {
    match json {
        Json::Null => None,
        Json::Bool(b) => Some(RestrictedExpression::new_bool(*b)),
        Json::Number(n) => n.as_i64().map(RestrictedExpression::new_long),
        Json::String(s) => Some(RestrictedExpression::new_string(s.clone())),
        Json::Array(items) => Some(RestrictedExpression::new_set(
            items.iter().filter_map(value),
        )),
        Json::Object(members) => RestrictedExpression::new_record(record_fields(members)).ok(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_method_has_a_principal_type() {
        for m in [
            AuthMethod::Anonymous,
            AuthMethod::Jwt,
            AuthMethod::Introspection,
            AuthMethod::ApiKey,
            AuthMethod::EnvoyJwt,
            AuthMethod::Spiffe,
        ] {
            assert!(uid(principal_type(m), "x").is_some(), "{m:?}");
        }
    }
}
