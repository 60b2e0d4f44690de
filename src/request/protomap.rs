//! A `CheckRequest` as the JSON document OPA-Envoy hands its Rego policies.
//!
//! opa-envoy-plugin does not use protobuf's canonical JSON mapping: it walks
//! the message (`envoyauth/protomap.go`) and writes each *set* field under its
//! JSON name (`contextExtensions`, `socketAddress`, `portValue`), unset and
//! default fields left out, integers as numbers, enums as their numbers,
//! `google.protobuf.Struct` (`metadataContext.filterMetadata`) as plain JSON
//! and every other message, `Timestamp` included, as an object of its set
//! fields (`{"seconds": …, "nanos": …}`). [`walk`] does the same walk over
//! the message's descriptors, so a policy written for OPA-Envoy reads the
//! same paths here; it builds JSON ([`document`]) or, through [`Build`], the
//! Rego engine's own value without JSON in between.
//!
//! Only Rego tenants need it (the pipeline decodes the [`message`] for them
//! alone); it reads the protobuf a second time, beside [`super::input`], for
//! that reason.
//!
//! Never imports: identity, policy or anything above the request floor.

use std::sync::LazyLock;

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, ReflectMessage, Value,
};
use serde_json::{Map, Value as Json};

use crate::foundation::proto::auth::CheckRequest;

/// `envoy.service.auth.v3.CheckRequest`'s descriptor, from the descriptors
/// `build.rs` compiled with the messages.
static CHECK_REQUEST: LazyLock<Option<MessageDescriptor>> = LazyLock::new(|| {
    DescriptorPool::decode(crate::foundation::proto::FILE_DESCRIPTOR_SET)
        .ok()?
        .get_message_by_name("envoy.service.auth.v3.CheckRequest")
});

/// The request as its descriptors read it, for [`walk`]. `None` only if the
/// compiled-in descriptors are broken (then every Rego policy sees no request
/// and denies).
pub fn message(request: &CheckRequest) -> Option<DynamicMessage> {
    let desc = CHECK_REQUEST.as_ref()?;
    DynamicMessage::decode(desc.clone(), request.encode_to_vec().as_slice()).ok()
}

/// The message's JSON names, types and set fields (see the module docs), as
/// JSON; `Null` where [`message`] is `None`.
pub fn document(request: &CheckRequest) -> Json {
    message(request).map_or(Json::Null, |m| walk(&m))
}

/// A document [`walk`] can build: JSON here, the Rego engine's own value in
/// the policy floor (built in place of converting this JSON afterwards).
/// Every number and every `google.protobuf.Struct` reaches a form as the JSON
/// it is here ([`Build::json`]), so the forms cannot disagree on them.
pub trait Build: Sized {
    type Key;
    fn key(name: &str) -> Self::Key;
    /// A number, a boolean or a `Struct`/`Value`/`ListValue` as plain JSON.
    fn json(json: Json) -> Self;
    fn string(s: &str) -> Self;
    fn list(items: Vec<Self>) -> Self;
    fn object(entries: Vec<(Self::Key, Self)>) -> Self;
}

impl Build for Json {
    type Key = String;
    fn key(name: &str) -> String {
        name.to_string()
    }
    fn json(json: Json) -> Json {
        json
    }
    fn string(s: &str) -> Json {
        Json::String(s.to_string())
    }
    fn list(items: Vec<Json>) -> Json {
        Json::Array(items)
    }
    fn object(entries: Vec<(String, Json)>) -> Json {
        Json::Object(entries.into_iter().collect::<Map<_, _>>())
    }
}

/// `message` mapped as OPA-Envoy maps it (see the module docs).
pub fn walk<B: Build>(message: &DynamicMessage) -> B {
    // Go's structpb types have `AsMap`: plain JSON, as protobuf's JSON mapping.
    if matches!(
        message.descriptor().full_name(),
        "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue"
    ) {
        return B::json(serde_json::to_value(message).unwrap_or(Json::Null));
    }
    B::object(
        message
            .fields()
            .map(|(field, value)| (B::key(field.json_name()), value_of(value)))
            .collect(),
    )
}

fn value_of<B: Build>(value: &Value) -> B {
    match value {
        Value::Bool(b) => B::json(Json::Bool(*b)),
        Value::I32(n) => B::json(Json::from(*n)),
        Value::I64(n) => B::json(Json::from(*n)),
        Value::U32(n) => B::json(Json::from(*n)),
        Value::U64(n) => B::json(Json::from(*n)),
        Value::F32(n) => {
            B::json(serde_json::Number::from_f64(f64::from(*n)).map_or(Json::Null, Json::Number))
        }
        Value::F64(n) => B::json(serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number)),
        Value::String(s) => B::string(s),
        // Go's []byte reaches OPA through encoding/json: standard base64.
        Value::Bytes(b) => B::string(&base64::engine::general_purpose::STANDARD.encode(b)),
        Value::EnumNumber(n) => B::json(Json::from(*n)),
        Value::Message(m) => walk(m),
        Value::List(items) => B::list(items.iter().map(value_of).collect()),
        Value::Map(entries) => B::object(
            entries
                .iter()
                .map(|(k, v)| (B::key(&key_string(k)), value_of(v)))
                .collect(),
        ),
    }
}

fn key_string(key: &MapKey) -> String {
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::foundation::proto::auth::{AttributeContext, attribute_context};
    use crate::foundation::proto::core::{Address, SocketAddress, address, socket_address};

    #[test]
    fn set_fields_under_their_json_names_and_unset_ones_left_out() {
        let mut http = attribute_context::HttpRequest {
            method: "GET".into(),
            path: "/people?x=1".into(),
            size: 12,
            ..Default::default()
        };
        http.headers
            .insert(":authority".into(), "example.com".into());
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(attribute_context::Peer {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: "10.1.2.3".into(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(51000)),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                }),
                request: Some(attribute_context::Request {
                    http: Some(http),
                    ..Default::default()
                }),
                context_extensions: [("tenant".to_string(), "acme".to_string())].into(),
                ..Default::default()
            }),
        };
        let doc = document(&request);
        let http = &doc["attributes"]["request"]["http"];
        assert_eq!(http["method"], "GET");
        assert_eq!(http["size"], 12);
        assert_eq!(http["headers"][":authority"], "example.com");
        assert!(
            http.get("body").is_none() && http.get("host").is_none(),
            "{doc}"
        );
        let socket = &doc["attributes"]["source"]["address"]["socketAddress"];
        assert_eq!(socket["address"], "10.1.2.3");
        assert_eq!(socket["portValue"], 51000);
        assert_eq!(doc["attributes"]["contextExtensions"]["tenant"], "acme");
        assert!(doc["attributes"].get("destination").is_none());
    }
}
