//! A `CheckRequest` from its protobuf JSON mapping, as `portcullis check`
//! and policy test suites read requests.

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor};
use serde_json::Value;

use crate::foundation::proto::auth::CheckRequest;

/// Converts the protobuf JSON mapping of a CheckRequest into the message.
pub fn check_request_from_json(value: &Value) -> Result<CheckRequest, String> {
    // Decoded once: decoding the descriptor set costs more than a check.
    static POOL: std::sync::LazyLock<Result<DescriptorPool, String>> =
        std::sync::LazyLock::new(|| {
            DescriptorPool::decode(crate::foundation::proto::FILE_DESCRIPTOR_SET)
                .map_err(|e| format!("internal: bad descriptors: {e}"))
        });
    let pool = POOL.as_ref().map_err(Clone::clone)?;
    let desc = pool
        .get_message_by_name("envoy.service.auth.v3.CheckRequest")
        .ok_or("internal: CheckRequest descriptor missing")?;
    let dynamic = DynamicMessage::deserialize(desc.clone(), value).map_err(|e| {
        // prost-reflect names the field but not where it is.
        match unknown_field(&desc, value, "") {
            Some(path) => format!("not a CheckRequest: unknown field `{path}`"),
            None => format!("not a CheckRequest: {e}"),
        }
    })?;
    CheckRequest::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|e| format!("not a CheckRequest: {e}"))
}

/// The dotted path of the first key in `value` that `desc` has no field for,
/// looking inside nested messages (not the well-known types, whose JSON
/// forms are free-form).
fn unknown_field(desc: &MessageDescriptor, value: &Value, at: &str) -> Option<String> {
    let Value::Object(object) = value else {
        return None;
    };
    for (key, v) in object {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        let Some(field) = desc
            .get_field_by_json_name(key)
            .or_else(|| desc.get_field_by_name(key))
        else {
            return Some(path);
        };
        let Kind::Message(inner) = field.kind() else {
            continue;
        };
        let found = if field.is_map() {
            let entry = inner.map_entry_value_field();
            let Kind::Message(value_desc) = entry.kind() else {
                continue;
            };
            let values = v.as_object().into_iter().flat_map(|m| m.iter());
            values
                .filter(|_| !is_well_known(&value_desc))
                .find_map(|(k, v)| unknown_field(&value_desc, v, &format!("{path}.{k}")))
        } else if is_well_known(&inner) {
            None
        } else if let Value::Array(items) = v {
            items
                .iter()
                .enumerate()
                .find_map(|(i, item)| unknown_field(&inner, item, &format!("{path}[{i}]")))
        } else {
            unknown_field(&inner, v, &path)
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

fn is_well_known(desc: &MessageDescriptor) -> bool {
    desc.full_name().starts_with("google.protobuf.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_field_is_named_by_its_path() {
        let value = serde_json::json!({
            "attributes": { "request": { "http": { "method": "GET", "methd": "GET" } } }
        });
        let e = check_request_from_json(&value).unwrap_err();
        assert_eq!(
            e,
            "not a CheckRequest: unknown field `attributes.request.http.methd`"
        );
        let value = serde_json::json!({ "atributes": {} });
        let e = check_request_from_json(&value).unwrap_err();
        assert_eq!(e, "not a CheckRequest: unknown field `atributes`");
    }

    #[test]
    fn a_known_request_still_converts() {
        let value = serde_json::json!({
            "attributes": { "request": { "http": { "method": "GET", "path": "/x",
                "headers": { "host": "a.example" } } } }
        });
        let r = check_request_from_json(&value).unwrap();
        let http = r.attributes.unwrap().request.unwrap().http.unwrap();
        assert_eq!(http.method, "GET");
    }
}
