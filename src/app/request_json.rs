//! A `CheckRequest` from its protobuf JSON mapping, as `portcullis check`
//! and policy test suites read requests.

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::foundation::proto::auth::CheckRequest;

/// Converts the protobuf JSON mapping of a CheckRequest into the message.
pub fn check_request_from_json(value: &serde_json::Value) -> Result<CheckRequest, String> {
    let pool = DescriptorPool::decode(crate::foundation::proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("internal: bad descriptors: {e}"))?;
    let desc = pool
        .get_message_by_name("envoy.service.auth.v3.CheckRequest")
        .ok_or("internal: CheckRequest descriptor missing")?;
    let dynamic =
        DynamicMessage::deserialize(desc, value).map_err(|e| format!("not a CheckRequest: {e}"))?;
    CheckRequest::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|e| format!("not a CheckRequest: {e}"))
}
