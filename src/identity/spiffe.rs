//! mTLS peers with a SPIFFE ID: strict parsing of the ID, matching it against
//! the tenant's patterns, and the identity of a trusted peer.
//!
//! Never imports: policy, decision, tenants or anything above them.

use std::sync::Arc;

use serde_json::{Map, Value as Json};

use crate::request::input::Input;

use super::binding;
use super::caller::{AuthMethod, Identity};
use super::spec::SpiffeSpec;

/// The longest SPIFFE ID (the SPIFFE ID specification's URI bound).
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;

/// A well-formed SPIFFE ID (SPIFFE ID spec §2): `spiffe://` + a lower-case
/// trust domain + path segments of letters, digits, `.`, `-`, `_`, none empty,
/// `.` or `..`, no query, fragment, port or user info. Returns the trust
/// domain and the segments; `None` for one over [`MAX_SPIFFE_ID_BYTES`].
pub fn parse_spiffe_id(id: &str) -> Option<(&str, Vec<&str>)> {
    // The SPIFFE ID spec bounds an ID at 2048 bytes.
    if id.len() > MAX_SPIFFE_ID_BYTES {
        return None;
    }
    let rest = id.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    let segments: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    let segments_ok = segments.iter().all(|s| {
        !s.is_empty()
            && *s != "."
            && *s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    });
    (domain_ok && segments_ok && !(rest.contains('/') && path.is_empty()))
        .then_some((domain, segments))
}

/// Whether `id` matches a pattern where `*` is one whole segment.
fn spiffe_matches(pattern: &str, domain: &str, segments: &[&str]) -> bool {
    let Some(rest) = pattern.strip_prefix("spiffe://") else {
        return false;
    };
    let mut parts = rest.split('/');
    if parts.next() != Some(domain) {
        return false;
    }
    let want: Vec<&str> = parts.collect();
    want.len() == segments.len() && want.iter().zip(segments).all(|(w, s)| *w == "*" || w == s)
}

pub(super) fn spiffe(spec: &SpiffeSpec, input: &Input) -> Option<Identity> {
    let id = input.context.peer.as_ref()?.spiffe_id()?;
    // Only a well-formed `spiffe://` URI SAN counts: Envoy's principal falls
    // back to the certificate subject, which never identifies a workload here.
    let (trust_domain, segments) = parse_spiffe_id(id)?;
    if !spec.trust_domains.iter().any(|d| d == trust_domain) {
        return None;
    }
    if !spec.ids.is_empty()
        && !spec
            .ids
            .iter()
            .any(|p| spiffe_matches(p, trust_domain, &segments))
    {
        return None;
    }
    let mut claims = Map::new();
    claims.insert("sub".into(), Json::String(id.to_string()));
    claims.insert("spiffe_id".into(), Json::String(id.to_string()));
    claims.insert(
        "trust_domain".into(),
        Json::String(trust_domain.to_string()),
    );
    Some(Identity {
        method: AuthMethod::Spiffe,
        subject: Some(id.to_string()),
        issuer: Some(format!("spiffe://{trust_domain}")),
        token_id: None,
        claims: Arc::new(claims),
        consumed_query: None,
        expires: None,
        binding: binding::Binding::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_over_the_spec_bound_is_not_an_id() {
        let at = format!(
            "spiffe://td/{}",
            "a".repeat(MAX_SPIFFE_ID_BYTES - "spiffe://td/".len())
        );
        assert!(parse_spiffe_id(&at).is_some());
        assert!(parse_spiffe_id(&format!("{at}a")).is_none());
    }

    #[test]
    fn spiffe_ids_are_strict_and_patterns_match_whole_segments() {
        assert_eq!(
            parse_spiffe_id("spiffe://acme.example/ns/shop/sa/cart"),
            Some(("acme.example", vec!["ns", "shop", "sa", "cart"]))
        );
        for bad in [
            "spiffe://ACME.example/x",
            "spiffe://acme.example/ns//x",
            "spiffe://acme.example/ns/../x",
            "spiffe://acme.example/x?y",
            "spiffe://acme.example:443/x",
            "spiffe://acme.example/",
            "spiffe:///x",
            "CN=spiffe://acme.example/x",
        ] {
            assert_eq!(parse_spiffe_id(bad), None, "{bad}");
        }
        let segs = ["ns", "shop", "sa", "cart"];
        assert!(spiffe_matches(
            "spiffe://acme.example/ns/shop/sa/*",
            "acme.example",
            &segs
        ));
        assert!(!spiffe_matches(
            "spiffe://acme.example/ns/*/sa/db",
            "acme.example",
            &segs
        ));
        assert!(!spiffe_matches(
            "spiffe://acme.example/ns/shop/*",
            "acme.example",
            &segs
        ));
        assert!(!spiffe_matches(
            "spiffe://other.example/ns/shop/sa/*",
            "acme.example",
            &segs
        ));
    }
}
