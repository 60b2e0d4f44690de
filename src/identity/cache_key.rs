//! The key under which a verified token is remembered (`jwt::TokenCache`):
//! SipHash-2-4 with a 128-bit output under a random 128-bit key made for
//! each cache, so the raw token is never a map key and no one without the
//! key can make two tokens share an entry. docs/security.md ("The token
//! cache's key") gives the argument. Imports nothing from the crate.

use std::hash::Hasher as _;

use siphasher::sip128::{Hasher128 as _, SipHasher24};

/// One cache's secret: never logged, never leaves the process, dropped with
/// the cache (a tenant compiled again has a new cache, so a new key).
pub struct CacheKey(SipHasher24);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(..)")
    }
}

impl CacheKey {
    /// A fresh key from the operating system's generator; `None` when it
    /// cannot give one (the caller then does not cache).
    pub fn random() -> Option<CacheKey> {
        use aws_lc_rs::rand::SecureRandom as _;
        let mut key = [0u8; 16];
        aws_lc_rs::rand::SystemRandom::new().fill(&mut key).ok()?;
        Some(CacheKey(SipHasher24::new_with_key(&key)))
    }

    /// The 128-bit map key of `token` under this key. Not inlined:
    /// `tests/bench/stages.sh` finds its cost by this name.
    #[inline(never)]
    pub fn of(&self, token: &str) -> [u8; 16] {
        let mut hasher = self.0;
        hasher.write(token.as_bytes());
        hasher.finish128().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two caches' keys of one token differ, and neither is a function of
    /// the token alone (its SHA-256, cut to 128 bits, as before).
    #[test]
    fn each_cache_keys_tokens_under_its_own_secret() {
        use sha2::Digest as _;
        let (a, b) = (CacheKey::random().unwrap(), CacheKey::random().unwrap());
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
        assert_eq!(a.of(token), a.of(token), "one cache: one key per token");
        assert_ne!(a.of(token), b.of(token));
        let sha: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        assert_ne!(a.of(token)[..], sha[..16]);
        assert_ne!(
            a.of(token),
            a.of("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiIn0.c2ln")
        );
    }

    /// The key never shows in a debug print.
    #[test]
    fn the_secret_is_not_printed() {
        assert_eq!(format!("{:?}", CacheKey::random().unwrap()), "CacheKey(..)");
    }
}
