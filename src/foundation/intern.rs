//! Compiled values shared by what they were compiled from.
//!
//! Ten thousand tenants made from one template compile the same rules and parse
//! the same key set ten thousand times; an [`Interner`] lets them hold one `Arc`
//! instead. Entries are keyed by a SHA-256 [`Digest`] of every input the
//! compilation reads, so two inputs share a value only when they are equal (a
//! collision would be a SHA-256 collision), never because they look alike.
//! Values are held weakly: one that no tenant uses any more is freed. Only
//! reloads take an interner's lock, never a check.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

use sha2::{Digest as _, Sha256};

/// What an interned value is known by: the SHA-256 of its inputs.
pub type Digest = [u8; 32];

/// Weakly held values by [`Digest`].
#[derive(Debug)]
pub struct Interner<V> {
    inner: Mutex<Entries<V>>,
}

#[derive(Debug)]
struct Entries<V> {
    by_digest: HashMap<Digest, Weak<V>>,
    /// Dead entries are swept when the map reaches this size, which then
    /// doubles from what is left, so sweeping costs O(1) per insert.
    sweep_at: usize,
}

impl<V> Default for Interner<V> {
    fn default() -> Self {
        Interner {
            inner: Mutex::new(Entries {
                by_digest: HashMap::new(),
                sweep_at: 1024,
            }),
        }
    }
}

impl<V> Interner<V> {
    /// The live value compiled from `digest`'s inputs, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<V>> {
        self.lock().by_digest.get(digest).and_then(Weak::upgrade)
    }

    /// Keeps `value` for `digest` unless a live one raced it in; returns the
    /// one kept, which callers use in place of their own.
    pub fn insert(&self, digest: Digest, value: Arc<V>) -> Arc<V> {
        let mut entries = self.lock();
        if let Some(live) = entries.by_digest.get(&digest).and_then(Weak::upgrade) {
            return live;
        }
        if entries.by_digest.len() >= entries.sweep_at {
            entries.by_digest.retain(|_, w| w.strong_count() > 0);
            entries.sweep_at = (entries.by_digest.len() * 2).max(1024);
        }
        entries.by_digest.insert(digest, Arc::downgrade(&value));
        value
    }

    /// Live and dead entries held now (for tests).
    pub fn len(&self) -> usize {
        self.lock().by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<V>> {
        // A panic while holding the lock leaves the map consistent: every
        // operation on it is a single insert, lookup or retain.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A [`Hasher`] that feeds SHA-256. `#[derive(Hash)]` writes a prefix-free
/// encoding of a value (lengths before sequences, a terminator after strings,
/// discriminants before variants), so equal digests mean equal values.
#[derive(Debug, Clone, Default)]
pub struct DigestHasher(Sha256);

impl DigestHasher {
    /// A hasher for values of one kind: `domain` keeps digests of different
    /// kinds of input apart.
    pub fn new(domain: &str) -> DigestHasher {
        let mut h = DigestHasher::default();
        domain.hash(&mut h);
        h
    }

    pub fn digest(self) -> Digest {
        self.0.finalize().into()
    }
}

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Only for `Hasher`'s contract; interners use [`DigestHasher::digest`].
    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }
}

/// The digest of one value under `domain`.
pub fn digest_of<T: Hash + ?Sized>(domain: &str, value: &T) -> Digest {
    let mut h = DigestHasher::new(domain);
    value.hash(&mut h);
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_inputs_share_and_different_inputs_do_not() {
        let interner: Interner<String> = Interner::default();
        let a = digest_of("t", &("x", vec!["a".to_string()]));
        let same = digest_of("t", &("x", vec!["a".to_string()]));
        // The same strings, split differently: a prefix-free encoding tells them apart.
        let split = digest_of("t", &("xa", Vec::<String>::new()));
        let other_domain = digest_of("u", &("x", vec!["a".to_string()]));
        assert_eq!(a, same);
        assert_ne!(a, split);
        assert_ne!(a, other_domain);

        let first = interner.insert(a, Arc::new("first".into()));
        let second = interner.insert(same, Arc::new("second".into()));
        assert!(Arc::ptr_eq(&first, &second), "a live value is reused");
        assert!(interner.get(&split).is_none());
    }

    #[test]
    fn values_no_one_holds_are_freed() {
        let interner: Interner<String> = Interner::default();
        let d = digest_of("t", "x");
        let v = interner.insert(d, Arc::new("v".into()));
        assert!(interner.get(&d).is_some());
        drop(v);
        assert!(interner.get(&d).is_none(), "held weakly");
        let fresh = interner.insert(d, Arc::new("w".into()));
        assert_eq!(*fresh, "w");
    }

    #[test]
    fn dead_entries_are_swept() {
        let interner: Interner<usize> = Interner::default();
        for i in 0..3000usize {
            drop(interner.insert(digest_of("t", &i), Arc::new(i)));
        }
        assert!(interner.len() < 3000, "{} entries", interner.len());
    }
}
