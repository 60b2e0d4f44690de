//! A [`Decision`] written as Envoy's `CheckResponse` in protobuf wire form,
//! straight from the decision: the bytes prost writes for
//! [`render::render`]'s message, byte for byte (the property test below), but
//! without building that message first, so no header name, value or metadata
//! entry is copied into a `String` of its own on the way out. What the answer
//! says (the gRPC code, a deny's headers and body, the metadata fields) is
//! decided in [`render`]; this file only writes it down.
//!
//! Never imports: tenants, the pipeline, observability, transport or the app.

use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::Decision;
use super::render::{self, Denied, METADATA_NAMESPACE};
use crate::foundation::codec::Encode;
use crate::foundation::proto::core::header_value_option::HeaderAppendAction;

/// Every header portcullis sets overwrites the client's (see [`render`]).
const OVERWRITE: u64 = HeaderAppendAction::OverwriteIfExistsOrAdd as i32 as u64;

/// Appends the `CheckResponse` for `decision` to `buf`.
pub fn encode(decision: &Decision, buf: &mut impl BufMut) {
    if decision.answer.metadata.is_some() {
        // A policy's own metadata is arbitrary JSON: through the message.
        render::render(decision).encode_into(buf);
        return;
    }
    // status = 1 (google.rpc.Status: code = 1, message = 2).
    let code = i64::from(render::rpc_code(decision));
    let message = render::rpc_message(decision);
    message_head(1, int_len(1, code) + str_len(2, message), buf);
    int(1, code, buf);
    str(2, message, buf);
    if decision.allowed {
        ok_response(decision, buf);
    } else {
        denied_response(&Denied::of(decision), buf);
    }
    dynamic_metadata(decision, buf);
}

/// `ok_response = 3` (OkHttpResponse: headers = 2, headers_to_remove = 5,
/// response_headers_to_add = 6, query_parameters_to_set = 7,
/// query_parameters_to_remove = 8).
fn ok_response(d: &Decision, buf: &mut impl BufMut) {
    let pairs = |items: &[(String, String)]| -> usize {
        items
            .iter()
            .map(|(k, v)| key_len(2) + delimited(option_len(k, v)))
            .sum()
    };
    let strings = |tag: u32, items: &[String]| -> usize {
        items
            .iter()
            .map(|s| key_len(tag) + delimited(s.len()))
            .sum()
    };
    let query: usize = d
        .answer
        .set_query
        .iter()
        .map(|(k, v)| key_len(7) + delimited(str_len(1, k) + str_len(2, v)))
        .sum();
    let len = pairs(&d.set_headers)
        + strings(5, &d.remove_headers)
        + pairs(&d.answer.response_headers)
        + query
        + strings(8, &d.remove_query);
    message_head(3, len, buf);
    for (k, v) in &d.set_headers {
        header_option(2, k, v, buf);
    }
    for s in &d.remove_headers {
        string_always(5, s, buf);
    }
    for (k, v) in &d.answer.response_headers {
        header_option(6, k, v, buf);
    }
    for (k, v) in &d.answer.set_query {
        message_head(7, str_len(1, k) + str_len(2, v), buf);
        str(1, k, buf);
        str(2, v, buf);
    }
    for s in &d.remove_query {
        string_always(8, s, buf);
    }
}

/// `denied_response = 2` (DeniedHttpResponse: status = 1 (HttpStatus:
/// code = 1), headers = 2, body = 3).
fn denied_response(denied: &Denied<'_>, buf: &mut impl BufMut) {
    let status = i64::from(denied.status);
    let status_len = int_len(1, status);
    let headers: usize = denied
        .headers
        .iter()
        .map(|(k, v)| key_len(2) + delimited(option_len(k, v)))
        .sum();
    let len = key_len(1) + delimited(status_len) + headers + str_len(3, &denied.body);
    message_head(2, len, buf);
    message_head(1, status_len, buf);
    int(1, status, buf);
    for (k, v) in &denied.headers {
        header_option(2, k, v, buf);
    }
    str(3, &denied.body, buf);
}

/// `dynamic_metadata = 4`: a `Struct` whose one field is portcullis'
/// namespace, itself a `Struct` of strings (map entries: key = 1, value = 2;
/// `Value`: string_value = 3, struct_value = 5).
fn dynamic_metadata(d: &Decision, buf: &mut impl BufMut) {
    let fields = render::own_metadata(d);
    let entry_len =
        |k: &str, v: &str| str_len(1, k) + key_len(2) + delimited(key_len(3) + delimited(v.len()));
    let inner: usize = fields
        .iter()
        .flatten()
        .map(|(k, v)| key_len(1) + delimited(entry_len(k, v)))
        .sum();
    let value = key_len(5) + delimited(inner);
    let outer_entry = str_len(1, METADATA_NAMESPACE) + key_len(2) + delimited(value);
    message_head(4, key_len(1) + delimited(outer_entry), buf);
    message_head(1, outer_entry, buf);
    str(1, METADATA_NAMESPACE, buf);
    message_head(2, value, buf);
    message_head(5, inner, buf);
    for (k, v) in fields.iter().flatten() {
        message_head(1, entry_len(k, v), buf);
        str(1, k, buf);
        message_head(2, key_len(3) + delimited(v.len()), buf);
        string_always(3, v, buf);
    }
}

/// A `HeaderValueOption` (header = 1 (HeaderValue: key = 1, value = 2),
/// append_action = 3) as field `tag`.
fn header_option(tag: u32, key: &str, value: &str, buf: &mut impl BufMut) {
    message_head(tag, option_len(key, value), buf);
    message_head(1, str_len(1, key) + str_len(2, value), buf);
    str(1, key, buf);
    str(2, value, buf);
    encode_key(3, WireType::Varint, buf);
    encode_varint(OVERWRITE, buf);
}

fn option_len(key: &str, value: &str) -> usize {
    key_len(1)
        + delimited(str_len(1, key) + str_len(2, value))
        + key_len(3)
        + encoded_len_varint(OVERWRITE)
}

/// A length-delimited field's bytes beyond its key: the length and the body.
fn delimited(len: usize) -> usize {
    encoded_len_varint(len as u64) + len
}

/// The key and length of a message field `tag` whose body is `len` bytes.
fn message_head(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// A singular proto3 string: left out when empty.
fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + delimited(s.len())
    }
}

fn str(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        string_always(tag, s, buf);
    }
}

/// A repeated or oneof string: written even when empty.
fn string_always(tag: u32, s: &str, buf: &mut impl BufMut) {
    message_head(tag, s.len(), buf);
    buf.put_slice(s.as_bytes());
}

/// A singular proto3 int32 or enum (as prost widens it): left out when 0.
fn int_len(tag: u32, v: i64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v as u64)
    }
}

fn int(tag: u32, v: i64, buf: &mut impl BufMut) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v as u64, buf);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::decision::audit::WouldBe;
    use crate::decision::{ClientErrors, Reason};
    use crate::foundation::proto::auth::CheckResponse;
    use crate::policy::{DryRunHit, Mode};

    fn bytes(d: &Decision) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(d, &mut buf);
        buf
    }

    fn reason() -> impl Strategy<Value = Reason> {
        prop::sample::select(crate::foundation::reason::ALL.to_vec())
    }

    fn text() -> impl Strategy<Value = String> {
        // Empty strings and multi-byte ones, and a length past one varint byte.
        prop_oneof![Just(String::new()), ".{0,6}", "[a-z]{120,140}"]
    }

    fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec((text(), text()), 0..3)
    }

    prop_compose! {
        fn decision()(
            allowed: bool,
            reason in reason(),
            id in text(),
            tenant in prop::option::of(text()),
            rule in prop::option::of(text()),
            digest in prop::option::of(text()),
            set in pairs(),
            remove in prop::collection::vec(text(), 0..3),
            remove_query in prop::collection::vec(text(), 0..3),
            client in pairs(),
            challenge in prop::option::of(text()),
            status in prop::option::of(100u16..600),
            body in prop::option::of(text()),
            response_headers in pairs(),
            set_query in pairs(),
            would in prop::option::of((any::<bool>(), reason())),
            dry in prop::collection::vec(text(), 0..3),
            generic: bool,
        ) -> Decision {
            let mut d = Decision::deny(id, reason);
            d.allowed = allowed;
            d.tenant = tenant.map(Arc::from);
            d.rule = rule.map(Arc::from);
            d.digest = digest.map(Arc::from);
            d.set_headers = set;
            d.remove_headers = remove;
            d.remove_query = remove_query;
            d.client_headers = client;
            d.challenge = challenge;
            d.answer.status = status;
            d.answer.body = body;
            d.answer.response_headers = response_headers;
            d.answer.set_query = set_query;
            if let Some((allowed, reason)) = would {
                d.audit.mode = Mode::DryRun;
                d.audit.would_be = Some(WouldBe { allowed, reason, rule: None });
            }
            d.audit.dry_run_rules = dry
                .into_iter()
                .map(|r| DryRunHit { rule: Arc::from(r.as_str()), would: "deny" })
                .collect();
            d.client_errors = Some(if generic { ClientErrors::Generic } else { ClientErrors::Detailed });
            d
        }
    }

    proptest! {
        #[test]
        fn writes_prost_bytes_of_the_rendered_response(d in decision()) {
            prop_assert_eq!(bytes(&d), render::render(&d).encode_to_vec());
        }
    }

    #[test]
    fn a_policy_metadata_goes_through_the_message() {
        let mut d = Decision::deny("id".into(), Reason::Allowed);
        d.allowed = true;
        let mut m = serde_json::Map::new();
        m.insert(
            "team".into(),
            serde_json::json!({"a": [1, true, null, "x"]}),
        );
        d.answer.metadata = Some(m);
        assert_eq!(bytes(&d), render::render(&d).encode_to_vec());
        let decoded = CheckResponse::decode(bytes(&d).as_slice()).unwrap();
        assert!(
            decoded
                .dynamic_metadata
                .unwrap()
                .fields
                .contains_key("team")
        );
    }

    #[test]
    fn an_allow_decodes_to_what_render_says() {
        let mut d = Decision::deny("d-1".into(), Reason::Allowed);
        d.allowed = true;
        d.tenant = Some(Arc::from("acme"));
        d.set_headers = vec![("x-subject".into(), "alice".into())];
        let decoded = CheckResponse::decode(bytes(&d).as_slice()).unwrap();
        assert_eq!(decoded, render::render(&d));
    }
}
