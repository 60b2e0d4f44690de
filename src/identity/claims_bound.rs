//! The bound on a claims document where it is built, for every identity
//! source: at most [`MAX_CLAIMS_BYTES`] as compact JSON, at most
//! [`MAX_CLAIMS_DEPTH`] levels of arrays and objects, and at most
//! `limits.max_claim_items` elements in any one array or object. A document
//! past any of them is refused `claims_too_large`.
//!
//! JWT payloads are parsed under the element bound already, and a token's own
//! size bounds its bytes, but `scope` splitting and `claim_mappings` change
//! the document after parsing; introspection answers may be 256 KiB; the
//! payload Envoy's `jwt_authn` leaves in the metadata has no bound of ours. So
//! each source checks what it built, once (a verified JWT or an introspection
//! answer is cached with the result). What this makes true is
//! `policy::cost`'s assumption about the `claims` root.
//!
//! Never imports: policy, decision, tenants or anything above them.

use serde_json::{Map, Value as Json};

pub use crate::foundation::limits::{MAX_CLAIMS_BYTES, MAX_CLAIMS_DEPTH};

/// A claims document past one of the bounds; each source answers it with
/// its own `claims_too_large`.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge;

/// `Ok` when `claims` is within the bounds, with `max_items` elements per
/// array or object.
pub fn within(claims: &Map<String, Json>, max_items: usize) -> Result<(), TooLarge> {
    if claims.len() > max_items || !shape_within(claims.values(), 1, max_items) {
        return Err(TooLarge);
    }
    let mut counter = Counter(0);
    // The writer refuses the byte past the bound, so a large document is
    // not serialized whole to learn that it is too large.
    serde_json::to_writer(&mut counter, claims).map_err(|_| TooLarge)
}

/// Whether `values`, members of a collection at `depth`, nest at most
/// [`MAX_CLAIMS_DEPTH`] deep with at most `max_items` elements each.
fn shape_within<'a>(
    values: impl Iterator<Item = &'a Json>,
    depth: usize,
    max_items: usize,
) -> bool {
    values.into_iter().all(|v| match v {
        Json::Array(a) => {
            depth < MAX_CLAIMS_DEPTH
                && a.len() <= max_items
                && shape_within(a.iter(), depth + 1, max_items)
        }
        Json::Object(o) => {
            depth < MAX_CLAIMS_DEPTH
                && o.len() <= max_items
                && shape_within(o.values(), depth + 1, max_items)
        }
        _ => true,
    })
}

/// Counts bytes written, failing past [`MAX_CLAIMS_BYTES`].
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        if self.0 > MAX_CLAIMS_BYTES {
            return Err(std::io::Error::other("claims too large"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn map(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    /// `{"s": "xxx…"}` of exactly `n` bytes as compact JSON.
    fn of_bytes(n: usize) -> Map<String, Json> {
        let overhead = r#"{"s":""}"#.len();
        map(json!({ "s": "x".repeat(n - overhead) }))
    }

    /// `depth` levels: the document, then objects inside it.
    fn of_depth(depth: usize) -> Map<String, Json> {
        let mut v = json!(1);
        for _ in 0..depth {
            v = json!({ "a": v });
        }
        map(v)
    }

    #[test]
    fn bytes_are_bounded_at_the_cost_models_size() {
        assert_eq!(
            serde_json::to_string(&of_bytes(MAX_CLAIMS_BYTES))
                .unwrap()
                .len(),
            MAX_CLAIMS_BYTES
        );
        assert!(within(&of_bytes(MAX_CLAIMS_BYTES), 1024).is_ok());
        assert_eq!(within(&of_bytes(MAX_CLAIMS_BYTES + 1), 1024), Err(TooLarge));
    }

    #[test]
    fn depth_is_bounded() {
        assert!(within(&of_depth(MAX_CLAIMS_DEPTH), 1024).is_ok());
        assert!(within(&of_depth(MAX_CLAIMS_DEPTH + 1), 1024).is_err());
        // Arrays count as levels too.
        let mut v = json!(1);
        for _ in 1..=MAX_CLAIMS_DEPTH {
            v = json!([v]);
        }
        assert!(within(&map(json!({ "a": v })), 1024).is_err());
    }

    #[test]
    fn every_collection_has_the_element_bound() {
        assert!(within(&map(json!({ "a": { "b": [1, 2, 3] } })), 3).is_ok());
        assert!(within(&map(json!({ "a": { "b": [1, 2, 3, 4] } })), 3).is_err());
        assert!(within(&map(json!({ "a": { "b": 1, "c": 2, "d": 3, "e": 4 } })), 3).is_err());
        assert!(within(&map(json!({ "a": 1, "b": 2, "c": 3, "d": 4 })), 3).is_err());
    }
}
