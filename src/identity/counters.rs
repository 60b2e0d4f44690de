//! What identity counts while it works: fetches of issuers' keys and lookups
//! in the verified-token cache. Process-wide families, since a key set is
//! shared by every server and tenant that trusts the issuer; the metrics floor
//! registers them, identity never reads them back.
//!
//! Never imports: policy, decision, tenants or anything above them.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyFetchLabels {
    issuer: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    result: &'static str,
}

pub static KEY_FETCHES: LazyLock<Family<KeyFetchLabels, Counter>> = LazyLock::new(Family::default);
pub static TOKEN_CACHE: LazyLock<Family<CacheLabels, Counter>> = LazyLock::new(Family::default);

/// Counts one fetch of an issuer's keys (process-wide); `issuer` is
/// [`super::keys::issuer_label`]'s.
pub fn key_fetch(issuer: String, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    KEY_FETCHES
        .get_or_create(&KeyFetchLabels { issuer, result })
        .inc();
}

/// Counts one lookup in a tenant's verified-token cache (process-wide).
pub fn token_cache(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    TOKEN_CACHE.get_or_create(&CacheLabels { result }).inc();
}
