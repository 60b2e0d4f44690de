//! A `CheckRequest` as the JSON document OPA-Envoy hands its Rego policies.
//!
//! opa-envoy-plugin does not use protobuf's canonical JSON mapping: it walks
//! the message (`envoyauth/protomap.go`) and writes each *set* field under its
//! JSON name (`contextExtensions`, `socketAddress`, `portValue`), unset and
//! default fields left out, integers as numbers, enums as their numbers,
//! `google.protobuf.Struct` (`metadataContext.filterMetadata`) as plain JSON
//! and every other message, `Timestamp` included, as an object of its set
//! fields (`{"seconds": …, "nanos": …}`). [`document`] does the same walk over
//! the message's descriptors, so a policy written for OPA-Envoy reads the
//! same paths here.
//!
//! Only Rego tenants need it (the pipeline builds it for them alone); it reads
//! the protobuf a second time, beside [`super::input`], for that reason.
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

/// The message's JSON names, types and set fields (see the module docs).
/// `Null` only if the compiled-in descriptors are broken (then every Rego
/// policy sees no request and denies).
pub fn document(request: &CheckRequest) -> Json {
    let Some(desc) = CHECK_REQUEST.as_ref() else {
        return Json::Null;
    };
    match DynamicMessage::decode(desc.clone(), request.encode_to_vec().as_slice()) {
        Ok(message) => message_json(&message),
        Err(_) => Json::Null,
    }
}

fn message_json(message: &DynamicMessage) -> Json {
    let name = message.descriptor().full_name().to_string();
    // Go's structpb types have `AsMap`: plain JSON, as protobuf's JSON mapping.
    if matches!(
        name.as_str(),
        "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue"
    ) {
        return serde_json::to_value(message).unwrap_or(Json::Null);
    }
    let mut out = Map::new();
    for (field, value) in message.fields() {
        out.insert(field.json_name().to_string(), value_json(value));
    }
    Json::Object(out)
}

fn value_json(value: &Value) -> Json {
    match value {
        Value::Bool(b) => Json::Bool(*b),
        Value::I32(n) => Json::from(*n),
        Value::I64(n) => Json::from(*n),
        Value::U32(n) => Json::from(*n),
        Value::U64(n) => Json::from(*n),
        Value::F32(n) => {
            serde_json::Number::from_f64(f64::from(*n)).map_or(Json::Null, Json::Number)
        }
        Value::F64(n) => serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number),
        Value::String(s) => Json::String(s.clone()),
        // Go's []byte reaches OPA through encoding/json: standard base64.
        Value::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::EnumNumber(n) => Json::from(*n),
        Value::Message(m) => message_json(m),
        Value::List(items) => Json::Array(items.iter().map(value_json).collect()),
        Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (key_string(k), value_json(v)))
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
