//! The request body as rules see it: parsed as JSON only when it is certainly
//! whole, certainly JSON and means one thing to every parser.
//!
//! Whole: Envoy's `x-envoy-auth-partial-body` is not enough on its own. Envoy
//! sends the check once its buffer reaches `max_request_bytes` and computes
//! the flag from what it buffered, so a buffer that lands exactly on the limit
//! with more to come says `false`. A body whose length reaches the limit, or
//! that is shorter than its `content-length`, is [`Body::Truncated`] whatever
//! the flag says.
//!
//! JSON: the `Content-Type` is one media type, `application/json` or a `+json`
//! suffix ([`crate::request::media_type`]). Spelt any other way than exactly
//! `application/json` (upper case, a tab before `;`, a `+json` suffix), it is
//! JSON only when the request has no query: binders that compare the spelling
//! byte for byte (gin's `ShouldBind`) take such a body for a form and bind the
//! query instead, so a rule would read `{"amount":5}` while the service binds
//! `?amount=99999`.
//!
//! One meaning: `strict_json` refuses an object with two keys that a binder
//! folds together ([`crate::request::fold`]).
//!
//! Never imports: anything above the foundation but its floor's `fold` and
//! `media_type`.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::foundation::limits::{MAX_BODY_BYTES, MAX_BODY_COLLECTION_LEN};
use crate::request::fold::fold_key;
use crate::request::media_type::{BodyType, body_type, is_plain_json};

/// Envoy sets this request header when it sent only part of the body
/// (`allow_partial_message: true`).
pub const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// The request body, when Envoy sends one (`with_request_body`).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Body {
    #[default]
    Absent,
    /// The body parsed as JSON.
    Json(Json),
    /// Envoy sent only part of the body, or may have (the body fills the
    /// limit, or is short of its `content-length`): rules that read it deny.
    Truncated,
    /// A body that is not JSON, not one media type, or not one length: rules
    /// that read it deny.
    Unparsed,
}

/// The body Envoy sent (`bytes`, possibly empty) judged with the request's
/// lower-cased `headers`. `max_bytes` is the server's `limits.max_body_bytes`
/// (at most [`MAX_BODY_BYTES`]), which must equal Envoy's `max_request_bytes`:
/// a body of that length may be the first part of a longer one. `has_query`:
/// the request has a query string (see the module docs).
pub fn body_of(
    bytes: &[u8],
    headers: &BTreeMap<String, String>,
    max_bytes: usize,
    has_query: bool,
) -> Body {
    if headers
        .get(PARTIAL_BODY_HEADER)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Body::Truncated;
    }
    let content_length = headers.get("content-length");
    if bytes.is_empty() {
        // The request has a body that Envoy did not send (no `with_request_body`,
        // an upgrade, buffering off): rules must not read it as "no body".
        let has_body = content_length.is_some_and(|n| n.trim() != "0")
            || headers.contains_key("transfer-encoding");
        return if has_body {
            Body::Unparsed
        } else {
            Body::Absent
        };
    }
    if bytes.len() >= max_bytes.min(MAX_BODY_BYTES) {
        return Body::Truncated;
    }
    if let Some(declared) = content_length {
        match declared.trim().parse::<usize>() {
            Ok(n) if bytes.len() < n => return Body::Truncated,
            Ok(n) if bytes.len() == n => {}
            // Longer than declared, or no single length: not one body.
            _ => return Body::Unparsed,
        }
    }
    let json = headers
        .get("content-type")
        .is_some_and(|ct| body_type(ct) == BodyType::Json && (!has_query || is_plain_json(ct)));
    if !json {
        return Body::Unparsed;
    }
    strict_json(bytes).map_or(Body::Unparsed, Body::Json)
}

/// Parses JSON, refusing an object with a key twice, also when the keys are
/// one name under Unicode simple case folding: upstream parsers disagree on
/// which duplicate wins (serde_json keeps the last; Go's `encoding/json` binds
/// `status`, `STATUS` and `ſtatus` to one field, the last one winning), so a
/// rule could check one value while the service uses another.
pub(crate) fn strict_json(bytes: &[u8]) -> Option<Json> {
    strict_json_within(bytes, MAX_BODY_COLLECTION_LEN).ok()
}

/// Why [`strict_json_within`] refused a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonRefused {
    /// Well-formed so far, but an array or object has more than the bound.
    TooManyItems,
    /// Not JSON, trailing bytes, or a duplicate key.
    Invalid,
}

/// [`strict_json`] with another bound on the items of one array or object
/// (the claims of a token have theirs, `limits.max_claim_items`), saying
/// whether the bound is what refused it.
pub(crate) fn strict_json_within(bytes: &[u8], max_items: usize) -> Result<Json, JsonRefused> {
    use serde::de::DeserializeSeed;
    let over = std::cell::Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let refused = || {
        if over.get() {
            JsonRefused::TooManyItems
        } else {
            JsonRefused::Invalid
        }
    };
    let seed = StrictJson {
        max_items,
        over: &over,
        depth: 0,
    };
    let value = seed.deserialize(&mut de).map_err(|_| refused())?;
    de.end().map_err(|_| refused())?;
    Ok(value)
}

/// Nesting deeper than this is refused as too large (sets `over`), before
/// serde_json's own limit (128) would refuse it as invalid: a token's claims
/// nested that deep are about that token, not a broken answer.
const MAX_STRICT_DEPTH: usize = 100;

/// Reads one strict JSON value, with the bound on items; sets `over` when the
/// bound refused it.
#[derive(Clone, Copy)]
struct StrictJson<'a> {
    max_items: usize,
    over: &'a std::cell::Cell<bool>,
    /// Arrays and objects around this value.
    depth: usize,
}

impl StrictJson<'_> {
    /// The seed for a member of an array or object at this depth.
    fn inner(self) -> Self {
        StrictJson {
            depth: self.depth + 1,
            ..self
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for StrictJson<'_> {
    type Value = Json;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        d.deserialize_any(StrictVisitor(self))
    }
}

struct StrictVisitor<'a>(StrictJson<'a>);

impl StrictVisitor<'_> {
    fn too_many<E: serde::de::Error>(&self, what: &str) -> E {
        self.0.over.set(true);
        E::custom(format!("{what} too large"))
    }
}

impl<'de> serde::de::Visitor<'de> for StrictVisitor<'_> {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON without duplicate keys")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        if self.0.depth >= MAX_STRICT_DEPTH {
            return Err(self.too_many("nesting"));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.0.inner())? {
            if out.len() == self.0.max_items {
                return Err(self.too_many("array"));
            }
            out.push(v);
        }
        Ok(Json::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        if self.0.depth >= MAX_STRICT_DEPTH {
            return Err(self.too_many("nesting"));
        }
        let mut out = serde_json::Map::new();
        let mut folded = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !folded.insert(fold_key(&key)) {
                return Err(serde::de::Error::custom("duplicate key"));
            }
            if out.len() == self.0.max_items {
                return Err(self.too_many("object"));
            }
            let v = map.next_value_seed(self.0.inner())?;
            out.insert(key, v);
        }
        Ok(Json::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_past_the_bound_is_too_large_not_invalid() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(strict_json_within(deep(MAX_STRICT_DEPTH).as_bytes(), 8).is_ok());
        for n in [MAX_STRICT_DEPTH + 1, 129, 10_000] {
            assert_eq!(
                strict_json_within(deep(n).as_bytes(), 8),
                Err(JsonRefused::TooManyItems),
                "{n}"
            );
        }
        let objects = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
        assert_eq!(
            strict_json_within(objects.as_bytes(), 8),
            Err(JsonRefused::TooManyItems)
        );
    }

    const LIMIT: usize = 64;

    fn json_headers(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut h: BTreeMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        h.entry("content-type".into())
            .or_insert_with(|| "application/json".into());
        h
    }

    /// A JSON object of exactly `len` bytes.
    fn object_of(len: usize) -> String {
        let pad = len - r#"{"a":""}"#.len();
        format!(r#"{{"a":"{}"}}"#, "x".repeat(pad))
    }

    #[test]
    fn a_body_reaching_the_limit_is_truncated_whatever_the_flag_says() {
        let below = object_of(LIMIT - 1);
        assert!(matches!(
            body_of(below.as_bytes(), &json_headers(&[]), LIMIT, false),
            Body::Json(_)
        ));
        let at = object_of(LIMIT);
        for flag in [&[][..], &[(PARTIAL_BODY_HEADER, "false")][..]] {
            assert_eq!(
                body_of(at.as_bytes(), &json_headers(flag), LIMIT, false),
                Body::Truncated
            );
        }
        let n = LIMIT.to_string();
        let declared = [("content-length", n.as_str())];
        assert_eq!(
            body_of(at.as_bytes(), &json_headers(&declared), LIMIT, false),
            Body::Truncated,
            "a whole body of exactly the limit cannot be told from a cut one"
        );
        // The server-wide bound applies when the configured one is larger.
        let big = object_of(MAX_BODY_BYTES);
        assert_eq!(
            body_of(big.as_bytes(), &json_headers(&[]), usize::MAX, false),
            Body::Truncated
        );
    }

    #[test]
    fn a_body_shorter_than_its_content_length_is_truncated() {
        let body = object_of(20);
        let whole = [("content-length", "20")];
        assert!(matches!(
            body_of(body.as_bytes(), &json_headers(&whole), LIMIT, false),
            Body::Json(_)
        ));
        let short = [("content-length", "21")];
        assert_eq!(
            body_of(body.as_bytes(), &json_headers(&short), LIMIT, false),
            Body::Truncated
        );
        for odd in ["19", "20,20", "-1", "twenty"] {
            let h = [("content-length", odd)];
            assert_eq!(
                body_of(body.as_bytes(), &json_headers(&h), LIMIT, false),
                Body::Unparsed,
                "{odd}"
            );
        }
    }

    #[test]
    fn only_one_json_media_type_is_parsed() {
        let body = br#"{"amount":5}"#;
        for ct in [
            "application/jsonx",
            "application/x-www-form-urlencoded; x=+json",
            "application/json, application/x-www-form-urlencoded",
            "text/plain",
        ] {
            let h = json_headers(&[("content-type", ct)]);
            assert_eq!(body_of(body, &h, LIMIT, false), Body::Unparsed, "{ct}");
        }
        let h = json_headers(&[("content-type", "application/merge-patch+json")]);
        assert!(matches!(body_of(body, &h, LIMIT, false), Body::Json(_)));
    }

    #[test]
    fn a_json_body_spelt_unlike_gin_is_unusable_beside_a_query() {
        let body = br#"{"amount":5}"#;
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "application/json ;x=1",
        ] {
            let h = json_headers(&[("content-type", ct)]);
            assert!(
                matches!(body_of(body, &h, LIMIT, true), Body::Json(_)),
                "{ct}"
            );
        }
        for ct in [
            "Application/JSON",
            "application/json\t; charset=utf-8",
            " application/json",
            "application/problem+json",
        ] {
            let h = json_headers(&[("content-type", ct)]);
            assert_eq!(body_of(body, &h, LIMIT, true), Body::Unparsed, "{ct}");
            // Without a query there is nothing else to bind: still JSON.
            assert!(
                matches!(body_of(body, &h, LIMIT, false), Body::Json(_)),
                "{ct}"
            );
        }
    }

    #[test]
    fn keys_a_binder_folds_together_are_a_duplicate() {
        for (a, b) in [
            ("status", "ſtatus"),
            ("status", "STATUS"),
            ("σ", "ς"),
            ("β", "ϐ"),
            ("θ", "ϑ"),
            ("φ", "ϕ"),
            ("π", "ϖ"),
            ("κ", "ϰ"),
            ("ρ", "ϱ"),
            ("ε", "ϵ"),
            ("ṡ", "ẛ"),
            ("ι", "\u{0345}"),
            ("в", "\u{1C80}"),
            ("\u{A64B}", "\u{1C88}"),
            ("Ꭰ", "\u{AB70}"),
            ("kind", "\u{212A}ind"),
        ] {
            let dup = format!(r#"{{"{a}":1,"{b}":2}}"#);
            assert_eq!(strict_json(dup.as_bytes()), None, "{a} {b}");
        }
        let distinct = strict_json(r#"{"status":1,"statuses":2,"ß":3,"ss":4}"#.as_bytes());
        assert!(distinct.is_some());
    }
}
