//! Introspection answers the replicas share through the shared store
//! (`shared_state.introspection_cache` in the server config), so that N
//! replicas make one call to the identity provider for a token, not N.
//!
//! The store is trusted with nothing. An entry's key is an HMAC-SHA256, under
//! the fleet's secret, of the tenant, the endpoint, the client id and the
//! token: a reader of Redis cannot test a guessed token against it (the hash
//! is keyed), nor link one token across tenants. Its value is the identity
//! provider's answer and the time it was given, sealed with AES-256-GCM under
//! a key derived from the same secret, with the entry's key as associated
//! data: a writer of Redis can neither forge an answer (`active: true` for a
//! token it made up) nor move one onto another token. An entry that does not
//! open is a miss. docs/security.md ("The shared introspection cache") gives
//! the argument.
//!
//! Never imports: policy, decision, tenants or anything above them, nor any
//! client of a particular store.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};

/// The largest answer shared (the identity provider's JSON body): a bigger
/// one is cached by the replica that asked, and not sent to the store.
pub const MAX_SHARED_ANSWER_BYTES: usize = 16 * 1024;
/// The shortest fleet secret accepted (`introspection_cache.key_file`).
pub const MIN_SECRET_BYTES: usize = 32;

/// What the two keys are derived for: changing either starts a new cache.
const KEY_LABEL: &[u8] = b"portcullis introspection cache: entry key v1";
const SEAL_LABEL: &[u8] = b"portcullis introspection cache: seal key v1";

/// The fleet's keys for shared answers: never logged, never sent.
pub struct SharedAnswers {
    mac: hmac::Key,
    seal: LessSafeKey,
}

impl std::fmt::Debug for SharedAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedAnswers(..)")
    }
}

impl SharedAnswers {
    /// The keys derived from the fleet's `secret` (every replica reads the
    /// same file): one to name entries, one to seal them.
    pub fn new(secret: &[u8]) -> Result<SharedAnswers, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the introspection cache key must hold at least {MIN_SECRET_BYTES} bytes"
            ));
        }
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derive = |label: &[u8]| hmac::sign(&root, label);
        let mac = hmac::Key::new(hmac::HMAC_SHA256, derive(KEY_LABEL).as_ref());
        let seal = UnboundKey::new(&AES_256_GCM, derive(SEAL_LABEL).as_ref())
            .map_err(|_| "cannot make the introspection cache's seal key".to_string())?;
        Ok(SharedAnswers {
            mac,
            seal: LessSafeKey::new(seal),
        })
    }

    /// The entry's key (64 hex) for `token` of `tenant` at `endpoint` as
    /// `client_id`: length-prefixed parts, so no byte moves across a boundary.
    pub fn key_of(&self, tenant: &str, endpoint: &str, client_id: &str, token: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.mac);
        for part in [tenant, endpoint, client_id, token] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        hex::encode(ctx.sign().as_ref())
    }

    /// `answer` given at `at` (unix seconds), sealed for the entry `key`:
    /// nonce, then ciphertext and tag. `None` when it is too large to share
    /// or the generator fails (then nothing is shared).
    pub fn seal(&self, key: &str, at: u64, answer: &[u8]) -> Option<Vec<u8>> {
        if answer.len() > MAX_SHARED_ANSWER_BYTES {
            return None;
        }
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut body = Vec::with_capacity(8 + answer.len() + 16);
        body.extend_from_slice(&at.to_be_bytes());
        body.extend_from_slice(answer);
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut body,
            )
            .ok()?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + body.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&body);
        Some(sealed)
    }

    /// The answer and its time, if `sealed` was sealed by this fleet for the
    /// entry `key`; `None` for anything else (forged, moved, cut, or sealed
    /// under another secret).
    pub fn open(&self, key: &str, sealed: &[u8]) -> Option<(u64, Vec<u8>)> {
        if sealed.len() > NONCE_LEN + 8 + MAX_SHARED_ANSWER_BYTES + 16 {
            return None;
        }
        let (nonce, body) = sealed.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut body)
            .ok()?;
        let (at, answer) = plain.split_at_checked(8)?;
        let at = u64::from_be_bytes(at.try_into().ok()?);
        Some((at, answer.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn keys_are_keyed_and_separate_tenants_endpoints_and_clients() {
        use sha2::Digest as _;
        let a = SharedAnswers::new(SECRET).unwrap();
        let other = SharedAnswers::new(b"another secret, thirty-two bytes").unwrap();
        let token = "opaque-token-1";
        let k = a.key_of("acme", "https://idp/introspect", "portcullis", token);
        assert_eq!(k.len(), 64);
        assert_eq!(
            k,
            a.key_of("acme", "https://idp/introspect", "portcullis", token)
        );
        // Not the token, not its plain hash: a reader cannot test guesses.
        assert!(!k.contains(token));
        assert_ne!(k, hex::encode(sha2::Sha256::digest(token.as_bytes())));
        assert_ne!(
            k,
            other.key_of("acme", "https://idp/introspect", "portcullis", token)
        );
        for (t, e, c) in [
            ("globex", "https://idp/introspect", "portcullis"),
            ("acme", "https://idp2/introspect", "portcullis"),
            ("acme", "https://idp/introspect", "other"),
            // A byte moved across a boundary.
            ("acm", "ehttps://idp/introspect", "portcullis"),
        ] {
            assert_ne!(k, a.key_of(t, e, c, token), "{t} {e} {c}");
        }
    }

    #[test]
    fn sealed_answers_open_only_under_their_own_key_and_secret() {
        let a = SharedAnswers::new(SECRET).unwrap();
        let answer = br#"{"active":true,"sub":"svc"}"#;
        let sealed = a.seal("k1", 1_000, answer).unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"active"), "not in clear");
        assert_eq!(a.open("k1", &sealed), Some((1_000, answer.to_vec())));
        // Moved to another entry, or sealed by another fleet: a miss.
        assert_eq!(a.open("k2", &sealed), None);
        let other = SharedAnswers::new(b"another secret, thirty-two bytes").unwrap();
        assert_eq!(other.open("k1", &sealed), None);
        // Any byte changed, or cut short: a miss.
        for i in [0, NONCE_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(a.open("k1", &bad), None, "byte {i}");
        }
        assert_eq!(a.open("k1", &sealed[..NONCE_LEN + 4]), None);
        assert_eq!(a.open("k1", b""), None);
        // Two seals of one answer differ (a fresh nonce each).
        assert_ne!(sealed, a.seal("k1", 1_000, answer).unwrap());
    }

    #[test]
    fn large_answers_and_short_secrets_are_refused() {
        let a = SharedAnswers::new(SECRET).unwrap();
        assert!(a.seal("k", 0, &[b' '; MAX_SHARED_ANSWER_BYTES]).is_some());
        assert!(
            a.seal("k", 0, &[b' '; MAX_SHARED_ANSWER_BYTES + 1])
                .is_none()
        );
        assert!(SharedAnswers::new(&SECRET[..31]).is_err());
        assert_eq!(format!("{a:?}"), "SharedAnswers(..)");
    }
}
