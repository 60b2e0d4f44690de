//! What the identity stage asks of the state replicas share: one-time use of
//! a key (a DPoP proof's `jti`) across every replica, and the revocations
//! pushed live rather than written to files.
//!
//! Only the interface lives here; the implementation (Redis, in
//! `transport::shared_state`) is built at startup and handed to the pipeline,
//! so one replica without a shared store never reaches any of this.
//!
//! Never imports: policy, decision, tenants or anything above them, nor any
//! client of a particular store.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::revocation::RevocationList;

/// A future that owns what it borrows for `'a`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The shared store did not answer in time, refused, or its circuit is open:
/// a check that needs it cannot decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shared state unavailable: {0}")]
pub struct Unavailable(pub &'static str);

/// The state every replica shares.
pub trait SharedState: Send + Sync + std::fmt::Debug {
    /// Records `key` for `ttl` unless some replica recorded it first, in one
    /// atomic step: `Ok(true)` on first use, `Ok(false)` when it was used.
    fn record_once<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Unavailable>>;

    /// The live revocations of `tenant` as last read (`None`: it has none),
    /// or `Err` when this replica cannot vouch that what it holds is current.
    fn live_revocations(&self, tenant: &str) -> Result<Option<Arc<RevocationList>>, Unavailable>;

    /// Whether live revocation failures are to be let through (the server's
    /// `revocation_on_unavailable: fail_open_revocation_only`).
    fn revocation_fails_open(&self) -> bool {
        false
    }
}

/// A proof that passed every check but the one-time-use one: what to record
/// and for how long. Built by the DPoP check; recorded by the pipeline, in
/// the tenant's own cache or in the shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayTicket {
    /// The key the tenant's in-memory cache uses (`jti` and `htu`).
    pub local: String,
    /// SHA-256 (hex) of the tenant, the proof key's thumbprint and the local
    /// key: a store never sees a raw `jti`, and two tenants never collide.
    pub shared: String,
    /// Unix seconds after which the proof's `iat` is outside the window.
    pub until: u64,
}

impl ReplayTicket {
    pub fn new(tenant: &str, jkt: &str, local: String, until: u64) -> ReplayTicket {
        let mut hash = Sha256::new();
        for part in [tenant, jkt, local.as_str()] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        ReplayTicket {
            shared: hex::encode(hash.finalize()),
            local,
            until,
        }
    }

    /// How long the shared store must keep the key at `now` (at least 1 s).
    pub fn ttl(&self, now: u64) -> Duration {
        Duration::from_secs(self.until.saturating_sub(now).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_keys_hide_the_jti_and_separate_tenants_and_keys() {
        let a = ReplayTicket::new("acme", "k1", "jti-1\u{0}https://x/".into(), 100);
        assert_eq!(a.shared.len(), 64);
        assert!(!a.shared.contains("jti"));
        let b = ReplayTicket::new("other", "k1", "jti-1\u{0}https://x/".into(), 100);
        let c = ReplayTicket::new("acme", "k2", "jti-1\u{0}https://x/".into(), 100);
        // Length-prefixed parts: moving a byte across a boundary changes the key.
        let d = ReplayTicket::new("acm", "ek1", "jti-1\u{0}https://x/".into(), 100);
        assert_ne!(a.shared, b.shared);
        assert_ne!(a.shared, c.shared);
        assert_ne!(a.shared, d.shared);
        assert_eq!(a.ttl(40), Duration::from_secs(60));
        assert_eq!(a.ttl(500), Duration::from_secs(1));
    }
}
