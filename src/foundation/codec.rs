//! The gRPC codec of the generated service and client (`build.rs` names it):
//! prost's decoding as is; encoding without prost's length pass over the
//! whole message first, and a `CheckResponse`'s dynamic metadata (a nested
//! `google.protobuf.Struct`) written in one pass over precomputed lengths, where
//! prost would compute every nested length once per level above it. The bytes
//! are prost's, byte for byte (tested below). Imports nothing from the crate
//! but the generated messages.

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use prost_types::{Struct, Value, value::Kind};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::ProstCodec;

use crate::foundation::proto::auth::{CheckRequest, CheckResponse};

/// How a message is written into a gRPC frame.
pub trait Encode: Message + Sized {
    /// Appends the message's encoding to `buf` (which grows as needed).
    fn encode_into(&self, buf: &mut impl BufMut) {
        self.encode_raw(buf);
    }
}

impl Encode for CheckRequest {}

impl Encode for CheckResponse {
    fn encode_into(&self, buf: &mut impl BufMut) {
        // prost's field order: by tag (status 1, http_response 2 or 3,
        // dynamic_metadata 4).
        if let Some(status) = &self.status {
            prost::encoding::message::encode(1, status, buf);
        }
        if let Some(http) = &self.http_response {
            http.encode(buf);
        }
        if let Some(metadata) = &self.dynamic_metadata {
            encode_struct_field(4, metadata, buf);
        }
    }
}

/// The codec `build.rs` gives the generated service and client.
#[derive(Debug, Clone)]
pub struct FastCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for FastCodec<T, U> {
    fn default() -> Self {
        FastCodec(PhantomData)
    }
}

impl<T, U> Codec for FastCodec<T, U>
where
    T: Encode + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = FastEncoder<T>;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        FastEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}

/// Writes `T` with [`Encode::encode_into`].
#[derive(Debug, Clone)]
pub struct FastEncoder<T>(PhantomData<T>);

impl<T: Encode> Encoder for FastEncoder<T> {
    type Item = T;
    type Error = Status;

    // Not inlined: `tests/bench/stages.sh` finds the encode by this name.
    #[inline(never)]
    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // `EncodeBuf` reserves as it is written to: no length pass needed.
        item.encode_into(buf);
        Ok(())
    }
}

/// `Struct` field `tag` of a message, as prost writes it.
#[inline(never)]
fn encode_struct_field(tag: u32, s: &Struct, buf: &mut impl BufMut) {
    let mut lens = Vec::new();
    let len = struct_len(s, &mut lens);
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
    let mut next = lens.iter().copied();
    write_struct(s, &mut next, buf);
}

/// A length-delimited field's bytes beyond its key: the length and the body.
fn delimited(len: usize) -> usize {
    encoded_len_varint(len as u64) + len
}

/// The encoded length of `s`, pushing the length of every map entry and
/// every struct-valued `Value` inside it, in the order [`write_struct`]
/// needs them.
fn struct_len(s: &Struct, lens: &mut Vec<usize>) -> usize {
    let mut total = 0;
    for (key, value) in &s.fields {
        // A map entry: key (1) and value (2), each left out when default.
        let slot = lens.len();
        lens.push(0);
        let mut entry = 0;
        if !key.is_empty() {
            entry += key_len(1) + delimited(key.len());
        }
        if value.kind.is_some() {
            entry += key_len(2) + delimited(value_len(value, lens));
        }
        lens[slot] = entry;
        total += key_len(1) + delimited(entry);
    }
    total
}

/// The encoded length of `v` (with a kind), pushing what [`struct_len`] does
/// for a struct inside it.
fn value_len(v: &Value, lens: &mut Vec<usize>) -> usize {
    match &v.kind {
        Some(Kind::StringValue(s)) => key_len(3) + delimited(s.len()),
        Some(Kind::StructValue(s)) => {
            let slot = lens.len();
            lens.push(0);
            let len = struct_len(s, lens);
            lens[slot] = len;
            key_len(5) + delimited(len)
        }
        // Numbers, booleans, nulls and lists: prost's own (rare here).
        _ => v.encoded_len(),
    }
}

fn write_struct(s: &Struct, lens: &mut impl Iterator<Item = usize>, buf: &mut impl BufMut) {
    for (key, value) in &s.fields {
        let entry = lens.next().unwrap_or_default();
        encode_key(1, WireType::LengthDelimited, buf);
        encode_varint(entry as u64, buf);
        if !key.is_empty() {
            prost::encoding::string::encode(1, key, buf);
        }
        if value.kind.is_some() {
            write_value_field(value, lens, buf);
        }
    }
}

/// Field 2 of a map entry: the `Value`, length first.
fn write_value_field(v: &Value, lens: &mut impl Iterator<Item = usize>, buf: &mut impl BufMut) {
    match &v.kind {
        Some(Kind::StringValue(s)) => {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint((key_len(3) + delimited(s.len())) as u64, buf);
            prost::encoding::string::encode(3, s, buf);
        }
        Some(Kind::StructValue(s)) => {
            let len = lens.next().unwrap_or_default();
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint((key_len(5) + delimited(len)) as u64, buf);
            encode_key(5, WireType::LengthDelimited, buf);
            encode_varint(len as u64, buf);
            write_struct(s, lens, buf);
        }
        _ => prost::encoding::message::encode(2, v, buf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::foundation::proto::auth::{OkHttpResponse, check_response};
    use crate::foundation::proto::google::rpc::Status as RpcStatus;
    use proptest::prelude::*;
    use prost_types::ListValue;

    fn fast(r: &CheckResponse) -> Vec<u8> {
        let mut buf = Vec::new();
        r.encode_into(&mut buf);
        buf
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value { kind: None }),
            ".{0,3}".prop_map(|s| Value {
                kind: Some(Kind::StringValue(s))
            }),
            any::<f64>().prop_map(|n| Value {
                kind: Some(Kind::NumberValue(n))
            }),
            any::<bool>().prop_map(|b| Value {
                kind: Some(Kind::BoolValue(b))
            }),
            Just(Value {
                kind: Some(Kind::NullValue(0))
            }),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::btree_map(".{0,2}", inner.clone(), 0..4).prop_map(|fields| {
                    Value {
                        kind: Some(Kind::StructValue(Struct { fields })),
                    }
                }),
                prop::collection::vec(inner, 0..3).prop_map(|values| Value {
                    kind: Some(Kind::ListValue(ListValue { values })),
                }),
            ]
        })
    }

    proptest! {
        /// Any dynamic metadata, with or without the other fields, is written
        /// exactly as prost writes it.
        #[test]
        fn check_responses_are_prosts_bytes(
            fields in prop::collection::btree_map(".{0,3}", value(), 0..5),
            status in proptest::option::of(0i32..20),
            ok in any::<bool>(),
            metadata in any::<bool>(),
        ) {
            let r = CheckResponse {
                status: status.map(|code| RpcStatus { code, message: "m".into(), details: Vec::new() }),
                http_response: ok.then(|| check_response::HttpResponse::OkResponse(OkHttpResponse {
                    headers_to_remove: vec!["x-a".into()],
                    ..Default::default()
                })),
                dynamic_metadata: metadata.then_some(Struct { fields }),
            };
            prop_assert_eq!(fast(&r), r.encode_to_vec());
        }
    }

    /// The shape portcullis sends: a namespace holding string fields, one of
    /// them long enough for a two-byte length.
    #[test]
    fn the_metadata_portcullis_sends_is_prosts_bytes() {
        let s = |v: &str| Value {
            kind: Some(Kind::StringValue(v.into())),
        };
        let inner = Struct {
            fields: [
                ("decision_id".to_string(), s("0190-abc")),
                ("reason".to_string(), s("allowed")),
                ("dry_run_rules".to_string(), s(&"r=deny,".repeat(40))),
            ]
            .into_iter()
            .collect(),
        };
        let r = CheckResponse {
            dynamic_metadata: Some(Struct {
                fields: [(
                    "portcullis".to_string(),
                    Value {
                        kind: Some(Kind::StructValue(inner)),
                    },
                )]
                .into_iter()
                .collect(),
            }),
            ..Default::default()
        };
        assert_eq!(fast(&r), r.encode_to_vec());
        assert_eq!(fast(&CheckResponse::default()), Vec::<u8>::new());
    }
}
