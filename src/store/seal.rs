//! Sealed values: what the store writes about alerts, receipts, the audit
//! trail, feeds and links, encrypted and authenticated under the store's
//! data key ([`vault`](super::vault) unlocks it), so that neither sled's
//! files nor the write-ahead log hold them in clear (docs/security.md,
//! "Encryption at rest").
//!
//! A sealed value is `0xA5 | salt (16) | counter (8) | ciphertext | tag
//! (16)`: AES-256-GCM under a key derived for this run of the store
//! (HKDF-SHA256 of the data key with a random salt), with a nonce from a
//! counter, so that no nonce repeats under a key however many values are
//! written (random 96-bit nonces would allow only about 2³² values per
//! key). The associated data is the tree and the key the value is stored
//! under: a value copied under another key does not open.
//!
//! Values are sealed as they go into a [`Batch`](super::command::Batch)
//! (so the write-ahead log record holds them sealed too, and applying it
//! copies them as they are) or into a direct write; they are opened where
//! they are decoded. What stays in clear is what indexes the data and says
//! nothing of its content: keys (sequence numbers, alert ids, feed names),
//! the id index's sequence and receive time, outbox entry sizes, counters.
//! `store::tests` checks that every other value is sealed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::error::{StoreError, corrupt};

const MAGIC: u8 = 0xA5;
const SALT: usize = 16;
const COUNTER: usize = 8;
const TAG: usize = 16;
/// Bytes a sealed value has on top of its clear form.
pub const OVERHEAD: usize = 1 + SALT + COUNTER + TAG;
const INFO: &[u8] = b"liaison store value key v1";

/// Which sled tree a value belongs to (part of its associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    Log = 1,
    Feeds = 2,
    Links = 3,
    Bundles = 4,
}

/// Seals and opens values; clear (does nothing) for a store without
/// encryption. Cheap to clone.
#[derive(Clone, Default)]
pub struct Seal {
    keys: Option<Arc<Keys>>,
}

struct Keys {
    data_key: Zeroizing<[u8; 32]>,
    /// This run's key and its salt.
    salt: [u8; SALT],
    key: LessSafeKey,
    counter: AtomicU64,
    /// Keys of earlier runs, by salt, derived when first needed.
    earlier: RwLock<HashMap<[u8; SALT], Arc<LessSafeKey>>>,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.write_str(if self.keys.is_some() {
            "Seal(encrypted)"
        } else {
            "Seal(clear)"
        })
    }
}

fn derive(data_key: &[u8; 32], salt: &[u8; SALT]) -> LessSafeKey {
    struct Len;
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            32
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(data_key);
    let mut bytes = Zeroizing::new([0u8; 32]);
    // The output length is the one asked for: these cannot fail.
    #[allow(clippy::expect_used)]
    prk.expand(&[INFO], Len)
        .and_then(|okm| okm.fill(bytes.as_mut()))
        .expect("HKDF-SHA256 gives 32 bytes");
    #[allow(clippy::expect_used)]
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes.as_ref()).expect("a 32-byte AES key"))
}

/// The associated data of a value: its tree and key, built on the stack
/// (keys are short; a longer one goes to the heap).
fn with_aad<R>(tree: Tree, key: &[u8], f: impl FnOnce(Aad<&[u8]>) -> R) -> R {
    let mut stack = [0u8; 128];
    let mut heap = Vec::new();
    let buf = if key.len() < stack.len() {
        &mut stack[..=key.len()]
    } else {
        heap.resize(key.len() + 1, 0);
        &mut heap[..]
    };
    buf[0] = tree as u8;
    buf[1..].copy_from_slice(key);
    f(Aad::from(&buf[..]))
}

impl Seal {
    /// Values stay as they are.
    pub fn clear() -> Seal {
        Seal { keys: None }
    }

    /// Seals under `data_key`, with a new salt for this run.
    ///
    /// # Errors
    /// When the system's random number generator fails.
    pub fn with_key(data_key: Zeroizing<[u8; 32]>) -> Result<Seal, StoreError> {
        let mut salt = [0u8; SALT];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| corrupt("the random number generator", "failed"))?;
        let key = derive(&data_key, &salt);
        Ok(Seal {
            keys: Some(Arc::new(Keys {
                data_key,
                salt,
                key,
                counter: AtomicU64::new(0),
                earlier: RwLock::new(HashMap::new()),
            })),
        })
    }

    pub fn is_encrypted(&self) -> bool {
        self.keys.is_some()
    }

    /// Bytes a sealed value has on top of its clear form (0 when clear).
    pub fn overhead(&self) -> usize {
        if self.keys.is_some() { OVERHEAD } else { 0 }
    }

    /// Appends `value`, sealed for `key` of `tree`, to `out`.
    pub fn seal_into(&self, tree: Tree, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
        let Some(k) = &self.keys else {
            out.extend_from_slice(value);
            return;
        };
        let n = k.counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        out.push(MAGIC);
        out.extend_from_slice(&k.salt);
        out.extend_from_slice(&n.to_be_bytes());
        let start = out.len();
        out.extend_from_slice(value);
        // Sealing fails only for inputs longer than GCM allows (64 GiB).
        #[allow(clippy::expect_used)]
        let tag = with_aad(tree, key, |aad| {
            k.key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                aad,
                &mut out[start..],
            )
        })
        .expect("a value far below GCM's limit");
        out.extend_from_slice(tag.as_ref());
    }

    /// `value` sealed for `key` of `tree` (a copy of it when clear).
    pub fn seal(&self, tree: Tree, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(value.len() + OVERHEAD);
        self.seal_into(tree, key, value, &mut out);
        out
    }

    /// The clear form of a value stored under `key` of `tree` (borrowed
    /// when the store is not encrypted).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] naming `what` when the value is not sealed,
    /// or does not open (altered, moved under another key, or sealed under
    /// another data key).
    pub fn open<'a>(
        &self,
        what: &str,
        tree: Tree,
        key: &[u8],
        value: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, StoreError> {
        let Some(k) = &self.keys else {
            return Ok(Cow::Borrowed(value));
        };
        if value.len() < OVERHEAD || value[0] != MAGIC {
            return Err(corrupt(
                what,
                "the value is not sealed (an encrypted store)",
            ));
        }
        let mut salt = [0u8; SALT];
        salt.copy_from_slice(&value[1..=SALT]);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&value[1 + SALT..1 + SALT + COUNTER]);
        let mut buf = value[1 + SALT + COUNTER..].to_vec();
        let earlier;
        let key_for_salt = if salt == k.salt {
            &k.key
        } else {
            earlier = self.earlier(k, &salt);
            &*earlier
        };
        let opened = with_aad(tree, key, |aad| {
            key_for_salt
                .open_in_place(Nonce::assume_unique_for_key(nonce), aad, &mut buf)
                .map(|p| p.len())
        });
        let len = opened.map_err(|_| {
            corrupt(
                what,
                "the sealed value does not open: it was altered, or sealed under another key",
            )
        })?;
        buf.truncate(len);
        Ok(Cow::Owned(buf))
    }

    fn earlier(&self, k: &Keys, salt: &[u8; SALT]) -> Arc<LessSafeKey> {
        if let Some(key) = k.earlier.read().ok().and_then(|m| m.get(salt).cloned()) {
            return key;
        }
        let key = Arc::new(derive(&k.data_key, salt));
        if let Ok(mut m) = k.earlier.write() {
            // One entry per run of the store that wrote values still held;
            // bounded all the same.
            if m.len() >= 4096 {
                m.clear();
            }
            m.insert(*salt, key.clone());
        }
        key
    }

    /// Whether `value` has the sealed form (tests of what is in clear).
    pub fn looks_sealed(value: &[u8]) -> bool {
        value.len() >= OVERHEAD && value[0] == MAGIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Zeroizing<[u8; 32]> {
        Zeroizing::new([b; 32])
    }

    #[test]
    fn a_sealed_value_opens_under_its_key_only() {
        let s = Seal::with_key(key(7)).unwrap();
        let v = s.seal(Tree::Log, b"k1", b"headline: seizure at Ishkashim");
        assert!(Seal::looks_sealed(&v));
        assert!(!v.windows(7).any(|w| w == b"seizure"));
        assert_eq!(
            s.open("x", Tree::Log, b"k1", &v).unwrap().as_ref(),
            b"headline: seizure at Ishkashim"
        );
        // Another key, another tree, another data key, one bit flipped.
        assert!(s.open("x", Tree::Log, b"k2", &v).is_err());
        assert!(s.open("x", Tree::Feeds, b"k1", &v).is_err());
        let other = Seal::with_key(key(8)).unwrap();
        assert!(other.open("x", Tree::Log, b"k1", &v).is_err());
        let mut flipped = v.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let e = s.open("alert 5", Tree::Log, b"k1", &flipped).unwrap_err();
        assert!(e.to_string().contains("alert 5"), "{e}");
        // A clear value in an encrypted store is refused.
        assert!(s.open("x", Tree::Log, b"k1", b"clear").is_err());
    }

    #[test]
    fn values_of_an_earlier_run_open_and_nonces_never_repeat() {
        let first = Seal::with_key(key(9)).unwrap();
        let a = first.seal(Tree::Log, b"k", b"one");
        let b = first.seal(Tree::Log, b"k", b"one");
        assert_ne!(a, b, "a new nonce for every value");
        let second = Seal::with_key(key(9)).unwrap();
        assert_eq!(
            second.open("x", Tree::Log, b"k", &a).unwrap().as_ref(),
            b"one"
        );
        let c = second.seal(Tree::Log, b"k", b"one");
        assert_ne!(a[1..17], c[1..17], "a new salt for every run");
    }

    #[test]
    fn clear_leaves_values_alone() {
        let s = Seal::clear();
        assert_eq!(s.seal(Tree::Log, b"k", b"v"), b"v");
        assert!(matches!(
            s.open("x", Tree::Log, b"k", b"v").unwrap(),
            Cow::Borrowed(_)
        ));
    }
}
