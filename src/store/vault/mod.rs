//! The data key of an encrypted store, and the key that unlocks it.
//!
//! The data key (32 random bytes) seals the store's values ([`seal`]). It
//! is kept in the data directory only *wrapped* — sealed with AES-256-GCM
//! under a key-encryption key that lives **outside** the data directory:
//!
//! - a **key file** (32 random bytes as 64 hex digits, mode 0600), made by
//!   the first start of a new encrypted store, or
//! - a **passphrase**, stretched with Argon2id (64 MiB, 3 passes; the salt
//!   and the parameters are in the vault file).
//!
//! The vault file (`DATA/vault`, JSON) holds the wrapped data key, how to
//! derive the unlocking key, and a fingerprint of the key file (so that a
//! wrong file is named as such). Destroying the key file, or the vault
//! file, makes every sealed value unreadable: that is the emergency wipe's
//! first step ([`wipe`], in its own module).
//!
//! [`seal`]: super::seal

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::error::StoreError;
use super::seal::Seal;

mod wipe;
pub use wipe::{Wiped, wipe};

/// The vault file, in the data directory.
pub const VAULT_FILE: &str = "vault";
const FORMAT: &str = "liaison-vault-1";
const WRAP_AAD: &[u8] = b"liaison data key v1";
/// Argon2id parameters for a new vault (OWASP's first choice is 19 MiB
/// and 2 passes; a post's laptop affords more).
const ARGON2_M_KIB: u32 = 64 * 1024;
const ARGON2_T: u32 = 3;
const ARGON2_P: u32 = 1;

/// What unlocks an encrypted store.
#[derive(Clone)]
pub enum KeySource {
    /// A key file outside the data directory (made when the store is new
    /// and the file does not exist).
    File(PathBuf),
    /// A passphrase.
    Passphrase(Zeroizing<String>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "File({})", p.display()),
            KeySource::Passphrase(_) => f.write_str("Passphrase(..)"),
        }
    }
}

fn key_error(dir: &Path, detail: impl Into<String>) -> StoreError {
    StoreError::Key {
        dir: dir.to_owned(),
        detail: detail.into(),
    }
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, std::io::Error> {
    let mut b = Zeroizing::new([0u8; N]);
    SystemRandom::new()
        .fill(b.as_mut())
        .map_err(|_| std::io::Error::other("the system's random number generator failed"))?;
    Ok(b)
}

fn hex(bytes: &[u8]) -> String {
    crate::pki::hex(bytes)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether `dir` holds a store already (sled's files).
fn has_store(dir: &Path) -> bool {
    dir.join("db").exists() || dir.join("conf").exists()
}

/// Unlocks (or, for a new store, creates) the data key of the store in
/// `dir`, and returns what seals its values: clear when the store is not
/// encrypted and no key is given.
///
/// # Errors
/// [`StoreError::Key`] with what to do: the store is encrypted and no key
/// was given; the key file is missing, readable by others, or not the
/// store's; the passphrase is wrong; a key was given for a store written
/// without encryption; the vault file is damaged. Nothing is changed then.
pub fn unlock(dir: &Path, source: Option<&KeySource>) -> Result<Seal, StoreError> {
    let vault = dir.join(VAULT_FILE);
    if vault.exists() {
        let Some(source) = source else {
            return Err(key_error(
                dir,
                "the store is encrypted: start with --key-file FILE or --passphrase \
                 (docs/security.md#encryption-at-rest)",
            ));
        };
        return open_vault(dir, &vault, source).and_then(Seal::with_key);
    }
    let Some(source) = source else {
        return Ok(Seal::clear());
    };
    if has_store(dir) {
        return Err(key_error(
            dir,
            "the store was written without encryption, and a key was given: an existing \
             store cannot be encrypted in place (forward or export what it holds, then start \
             an encrypted store in a new directory)",
        ));
    }
    create_vault(dir, &vault, source).and_then(Seal::with_key)
}

/// The key-encryption key from a key file (its fingerprint alongside).
fn read_key_file(dir: &Path, path: &Path) -> Result<(Zeroizing<[u8; 32]>, String), StoreError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        key_error(
            dir,
            format!(
                "the key file {} cannot be read ({e}); without it the store cannot be \
                 opened (was it wiped?)",
                path.display()
            ),
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(key_error(
            dir,
            format!(
                "the key file {} can be read by other users (mode {:o}); make it 0600",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| key_error(dir, format!("the key file {}: {e}", path.display())))?,
    );
    let bytes = Zeroizing::new(unhex(&text).unwrap_or_default());
    if bytes.len() != 32 {
        return Err(key_error(
            dir,
            format!(
                "the key file {} is not a key (64 hex digits expected)",
                path.display()
            ),
        ));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&bytes);
    let fp = fingerprint(&key);
    Ok((key, fp))
}

fn fingerprint(key: &[u8; 32]) -> String {
    let d = digest::digest(
        &digest::SHA256,
        &[b"liaison key file v1".as_slice(), key].concat(),
    );
    hex(&d.as_ref()[..8])
}

/// A new key file at `path` (mode 0600, never overwriting).
///
/// # Errors
/// When the file exists or cannot be written.
pub fn new_key_file(path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let key = random::<32>()?;
    let text = Zeroizing::new(format!("{}\n", hex(key.as_ref())));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn argon2(
    dir: &Path,
    pass: &str,
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>, StoreError> {
    let params = argon2::Params::new(m, t, p, Some(32))
        .map_err(|e| key_error(dir, format!("the vault's Argon2 parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into(pass.as_bytes(), salt, out.as_mut())
        .map_err(|e| key_error(dir, format!("deriving the key from the passphrase: {e}")))?;
    Ok(out)
}

fn wrap_key(kek: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is what AES-256 takes: this cannot fail.
    #[allow(clippy::expect_used)]
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek).expect("a 32-byte key"))
}

fn create_vault(
    dir: &Path,
    vault: &Path,
    source: &KeySource,
) -> Result<Zeroizing<[u8; 32]>, StoreError> {
    let io = |what: &str, e: std::io::Error| key_error(dir, format!("{what}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| io("creating the data directory", e))?;
    let (kek, how) = new_unlock(dir, source)?;
    let data_key = random::<32>().map_err(|e| io("random", e))?;
    write_vault(dir, vault, &kek, how, &data_key)?;
    Ok(data_key)
}

/// The key-encryption key for a new vault, and how the vault says to
/// derive it again (a key file is made when it does not exist).
fn new_unlock(dir: &Path, source: &KeySource) -> Result<(Zeroizing<[u8; 32]>, Value), StoreError> {
    let io = |what: &str, e: std::io::Error| key_error(dir, format!("{what}: {e}"));
    Ok(match source {
        KeySource::File(path) => {
            if is_inside(path, dir) {
                return Err(key_error(
                    dir,
                    format!(
                        "the key file {} is inside the data directory: keep it elsewhere \
                         (removable media, another disk), or encryption protects nothing",
                        path.display()
                    ),
                ));
            }
            if !path.exists() {
                new_key_file(path)
                    .map_err(|e| io(&format!("creating the key file {}", path.display()), e))?;
                tracing::warn!(key_file = %path.display(), "created a new key file for the encrypted store: keep it outside the data directory, and a copy somewhere safe");
            }
            let (kek, fp) = read_key_file(dir, path)?;
            (kek, json!({"kind": "key-file", "fingerprint": fp}))
        }
        KeySource::Passphrase(pass) => {
            if pass.chars().count() < 12 {
                return Err(key_error(
                    dir,
                    "the passphrase is shorter than 12 characters",
                ));
            }
            let salt = random::<16>().map_err(|e| io("random", e))?;
            let kek = argon2(dir, pass, salt.as_ref(), ARGON2_M_KIB, ARGON2_T, ARGON2_P)?;
            (
                kek,
                json!({"kind": "passphrase", "argon2id": {"m_kib": ARGON2_M_KIB, "t": ARGON2_T,
                       "p": ARGON2_P, "salt": hex(salt.as_ref())}}),
            )
        }
    })
}

/// Writes the vault file: `data_key` wrapped under `kek` (atomically: a
/// new file renamed over the old, then the directory synced).
fn write_vault(
    dir: &Path,
    vault: &Path,
    kek: &[u8; 32],
    how: Value,
    data_key: &[u8; 32],
) -> Result<(), StoreError> {
    let io = |what: &str, e: std::io::Error| key_error(dir, format!("{what}: {e}"));
    let nonce = random::<12>().map_err(|e| io("random", e))?;
    let mut wrapped = data_key.to_vec();
    #[allow(clippy::expect_used)]
    wrap_key(kek)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(WRAP_AAD),
            &mut wrapped,
        )
        .expect("32 bytes seal");
    let doc = json!({
        "format": FORMAT,
        "unlock": how,
        "cipher": "AES-256-GCM",
        "nonce": hex(nonce.as_ref()),
        "wrapped_data_key": hex(&wrapped),
    });
    let tmp = vault.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("writing the vault file", e))?;
    f.write_all(format!("{doc:#}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, vault))
        .and_then(|()| File::open(dir)?.sync_all())
        .map_err(|e| io("writing the vault file", e))?;
    Ok(())
}

/// Changes what unlocks the store in `dir`: the data key, unwrapped with
/// `old`, is wrapped anew under `new` (a key file is made when it does not
/// exist). The data key itself stays: sealed values are not rewritten, so
/// a copy of the old vault file together with the old key still opens
/// the data it covers — rekeying protects what is written from now on
/// against a lost or exposed old key only with the old vault gone too.
///
/// # Errors
/// When the store is not encrypted, `old` does not open it, `new` is the
/// same key file or unusable, or the vault cannot be written (the old one
/// stays in place then).
pub fn rekey(dir: &Path, old: &KeySource, new: &KeySource) -> Result<(), StoreError> {
    let vault = dir.join(VAULT_FILE);
    if !vault.exists() {
        return Err(key_error(
            dir,
            "the store is not encrypted (no vault file): there is no key to change",
        ));
    }
    if let (KeySource::File(a), KeySource::File(b)) = (old, new)
        && std::path::absolute(a).ok() == std::path::absolute(b).ok()
    {
        return Err(key_error(dir, "the new key file is the old one"));
    }
    let data_key = open_vault(dir, &vault, old)?;
    let (kek, how) = new_unlock(dir, new)?;
    write_vault(dir, &vault, &kek, how, &data_key)
}

fn open_vault(
    dir: &Path,
    vault: &Path,
    source: &KeySource,
) -> Result<Zeroizing<[u8; 32]>, StoreError> {
    let damaged = |detail: &str| {
        key_error(
            dir,
            format!("the vault file {} is damaged: {detail}", vault.display()),
        )
    };
    let text = std::fs::read_to_string(vault).map_err(|e| damaged(&e.to_string()))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| damaged(&e.to_string()))?;
    if doc["format"] != FORMAT {
        return Err(damaged("not a liaison vault (format)"));
    }
    let unlock = &doc["unlock"];
    let kek = match (unlock["kind"].as_str(), source) {
        (Some("key-file"), KeySource::File(path)) => {
            let (kek, fp) = read_key_file(dir, path)?;
            if unlock["fingerprint"].as_str() != Some(fp.as_str()) {
                return Err(key_error(
                    dir,
                    format!(
                        "the key file {} is not this store's key (fingerprint {fp}, the store \
                         was encrypted with {})",
                        path.display(),
                        unlock["fingerprint"].as_str().unwrap_or("?")
                    ),
                ));
            }
            kek
        }
        (Some("passphrase"), KeySource::Passphrase(pass)) => {
            let a = &unlock["argon2id"];
            let num = |k: &str| {
                a[k].as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| damaged(&format!("argon2id.{k}")))
            };
            let salt = a["salt"]
                .as_str()
                .and_then(unhex)
                .ok_or_else(|| damaged("argon2id.salt"))?;
            argon2(dir, pass, &salt, num("m_kib")?, num("t")?, num("p")?)?
        }
        (Some("key-file"), KeySource::Passphrase(_)) => {
            return Err(key_error(
                dir,
                "the store is encrypted with a key file: start with --key-file FILE, not a \
                 passphrase",
            ));
        }
        (Some("passphrase"), KeySource::File(_)) => {
            return Err(key_error(
                dir,
                "the store is encrypted with a passphrase: start with --passphrase, not a key \
                 file",
            ));
        }
        _ => return Err(damaged("unlock.kind")),
    };
    let nonce: [u8; 12] = doc["nonce"]
        .as_str()
        .and_then(unhex)
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| damaged("nonce"))?;
    let mut wrapped = doc["wrapped_data_key"]
        .as_str()
        .and_then(unhex)
        .ok_or_else(|| damaged("wrapped_data_key"))?;
    let opened = wrap_key(&kek)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(WRAP_AAD),
            &mut wrapped,
        )
        .map_err(|_| match source {
            KeySource::Passphrase(_) => key_error(dir, "the passphrase is wrong"),
            KeySource::File(p) => damaged(&format!(
                "the data key does not open with {} although its fingerprint matches",
                p.display()
            )),
        })?;
    let mut key = Zeroizing::new([0u8; 32]);
    if opened.len() != 32 {
        return Err(damaged("wrapped_data_key length"));
    }
    key.copy_from_slice(opened);
    wrapped.iter_mut().for_each(|b| *b = 0);
    Ok(key)
}

/// Keeps the process out of core dumps (and from other users' ptrace):
/// the data key is in its memory while the store is open.
pub fn no_core_dumps() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes no pointers and only changes
    // this process's dumpable flag.
    let r = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if r != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not keep the process out of core dumps");
    }
}

fn is_inside(path: &Path, dir: &Path) -> bool {
    let abs = |p: &Path| {
        std::path::absolute(p)
            .map(|a| a.components().collect::<PathBuf>())
            .unwrap_or_else(|_| p.to_owned())
    };
    abs(path).starts_with(abs(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> KeySource {
        KeySource::Passphrase(Zeroizing::new(s.to_owned()))
    }

    #[test]
    fn a_key_file_is_made_for_a_new_store_and_only_it_unlocks_the_store() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        let kf = t.path().join("keys/post.key");
        let s = unlock(&data, Some(&KeySource::File(kf.clone()))).unwrap();
        assert!(s.is_encrypted());
        let mode = std::fs::metadata(&kf).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The same file opens it again, and values sealed before open.
        let v = s.seal(crate::store::seal::Tree::Log, b"k", b"v");
        let again = unlock(&data, Some(&KeySource::File(kf.clone()))).unwrap();
        assert_eq!(
            again
                .open("x", crate::store::seal::Tree::Log, b"k", &v)
                .unwrap()
                .as_ref(),
            b"v"
        );
        // No key, another key file, a passphrase, a file others can read.
        let e = unlock(&data, None).unwrap_err().to_string();
        assert!(e.contains("encrypted") && e.contains("--key-file"), "{e}");
        let other = t.path().join("other.key");
        new_key_file(&other).unwrap();
        let e = unlock(&data, Some(&KeySource::File(other)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not this store's key"), "{e}");
        let e = unlock(&data, Some(&pass("a long passphrase")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key file"), "{e}");
        std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = unlock(&data, Some(&KeySource::File(kf.clone())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("0600"), "{e}");
        // A missing key file, named.
        std::fs::remove_file(&kf).unwrap();
        let e = unlock(&data, Some(&KeySource::File(kf.clone())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("post.key") && e.contains("wiped"), "{e}");
    }

    #[test]
    fn a_passphrase_unlocks_and_a_wrong_one_is_told() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        assert!(unlock(&data, Some(&pass("short"))).is_err());
        unlock(&data, Some(&pass("correct horse battery"))).unwrap();
        unlock(&data, Some(&pass("correct horse battery"))).unwrap();
        let e = unlock(&data, Some(&pass("wrong horse battery")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("passphrase is wrong"), "{e}");
        let text = std::fs::read_to_string(data.join(VAULT_FILE)).unwrap();
        assert!(!text.contains("correct horse"));
    }

    #[test]
    fn a_key_file_inside_the_data_directory_or_for_a_clear_store_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        let e = unlock(&data, Some(&KeySource::File(data.join("k"))))
            .unwrap_err()
            .to_string();
        assert!(e.contains("inside the data directory"), "{e}");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("db"), b"").unwrap();
        let e = unlock(&data, Some(&KeySource::File(t.path().join("k"))))
            .unwrap_err()
            .to_string();
        assert!(e.contains("without encryption"), "{e}");
        assert!(!t.path().join("k").exists(), "nothing made");
    }

    #[test]
    fn a_damaged_vault_is_named() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        let kf = t.path().join("k");
        unlock(&data, Some(&KeySource::File(kf.clone()))).unwrap();
        std::fs::write(data.join(VAULT_FILE), b"{").unwrap();
        let e = unlock(&data, Some(&KeySource::File(kf)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vault") && e.contains("damaged"), "{e}");
    }

    #[test]
    fn rekey_moves_the_store_to_a_new_key_and_the_old_one_stops_opening_it() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        let old = KeySource::File(t.path().join("old.key"));
        let v = unlock(&data, Some(&old))
            .unwrap()
            .seal(crate::store::seal::Tree::Log, b"k", b"v");
        let new = pass("a brand new passphrase");
        let e = rekey(&data, &pass("not the key at all"), &new)
            .unwrap_err()
            .to_string();
        assert!(e.contains("key file"), "{e}");
        let e = rekey(&data, &old, &old).unwrap_err().to_string();
        assert!(e.contains("the old one"), "{e}");
        rekey(&data, &old, &new).unwrap();
        assert!(
            unlock(&data, Some(&old)).is_err(),
            "the old key no longer opens it"
        );
        let s = unlock(&data, Some(&new)).unwrap();
        assert_eq!(
            s.open("x", crate::store::seal::Tree::Log, b"k", &v)
                .unwrap()
                .as_ref(),
            b"v"
        );
        // And back to a new key file.
        let newer = KeySource::File(t.path().join("newer.key"));
        rekey(&data, &new, &newer).unwrap();
        assert!(unlock(&data, Some(&newer)).is_ok());
        let clear = t.path().join("clear");
        assert!(
            rekey(&clear, &old, &new)
                .unwrap_err()
                .to_string()
                .contains("not encrypted")
        );
    }
}
