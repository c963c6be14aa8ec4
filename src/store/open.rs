//! The steps of opening a store that come before its writer starts: the
//! sled database (refused with a message naming it when damaged, waited for
//! briefly while another handle lets go of it), the store's identity, the
//! sequence reservation, and the audit record of a recovery.

use std::path::Path;
use std::time::Duration;

use tracing::warn;

use super::{StoreConfig, StoreError, keys, meta, wal};
use crate::audit::{AuditEvent, AuditKind};

/// Opens the sled database and its trees, refusing damaged files with a
/// message that names them. A database still locked by a store of this
/// process that is being dropped (sled lets go of its file lock when its
/// last I/O handle goes, a moment after the drop) is waited for, briefly.
/// The database and its trees: log, feeds, links, bundles.
type Trees = (sled::Db, sled::Tree, sled::Tree, sled::Tree, sled::Tree);

pub(super) fn open_sled(dir: &Path, config: &StoreConfig) -> Result<Trees, StoreError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        match open_sled_once(dir, config) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn open_sled_once(dir: &Path, config: &StoreConfig) -> Result<Trees, StoreError> {
    check_sled_conf(dir)?;
    sled_guard(dir, || {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(config.cache_bytes)
            // Durability comes from the write-ahead log; sled is flushed at
            // its checkpoints, so sled's own background flusher only adds
            // I/O.
            .flush_every_ms(None)
            .open()
            .map_err(|e| {
                if is_locked(dir) {
                    StoreError::Locked {
                        dir: dir.to_owned(),
                    }
                } else {
                    damaged(dir, &e.to_string())
                }
            })?;
        let log = db.open_tree("log")?;
        let feeds = db.open_tree("feeds")?;
        let links = db.open_tree("links")?;
        let bundles = db.open_tree("bundles")?;
        Ok((db, log, feeds, links, bundles))
    })
}

/// The file beside the database that names the store.
const STORE_ID_FILE: &str = "store-id";

/// Checks that the database is the one this directory was created with:
/// sled silently opens damaged or replaced files as an empty (or older)
/// database, which must not pass for a new store. A new store gets an
/// identity, in the database and in `store-id` beside it.
pub(super) fn check_identity(
    dir: &Path,
    db: &sled::Db,
    log: &sled::Tree,
) -> Result<(), StoreError> {
    let path = dir.join(STORE_ID_FILE);
    let file = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().parse::<uuid::Uuid>().map_err(|_| {
            damaged(
                dir,
                &format!("{} does not hold a store identity", path.display()),
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(StoreError::io(path.display().to_string(), e)),
    };
    let stored = log
        .get(keys::META_STORE_ID)?
        .map(|v| uuid::Uuid::from_slice(&v))
        .transpose()
        .map_err(|_| damaged(dir, "the store's identity in the database is not readable"))?;
    let id = match (file, stored) {
        (Some(f), Some(s)) if f == s => return Ok(()),
        (Some(f), Some(s)) => {
            return Err(damaged(
                dir,
                &format!(
                    "{} names store {f}, but the database belongs to store {s}",
                    path.display()
                ),
            ));
        }
        (Some(f), None) => {
            return Err(damaged(
                dir,
                &format!(
                    "the database has lost its contents: {} names store {f}, and the database \
                     holds nothing of it (its files were replaced or damaged)",
                    path.display()
                ),
            ));
        }
        (None, Some(s)) => s,
        (None, None) => {
            let id = uuid::Uuid::new_v4();
            log.insert(keys::META_STORE_ID, id.as_bytes())?;
            db.flush()?;
            id
        }
    };
    write_durably(&path, format!("{}\n", id.hyphenated()).as_bytes())
        .map_err(|e| StoreError::io(path.display().to_string(), e))
}

/// Writes a small file whole and makes it (and its name) durable.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Whether another open file holds the lock sled takes on its database
/// (sled reports a held lock only as text, so we ask the file system).
fn is_locked(dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(dir.join("db")) else {
        return false;
    };
    // SAFETY: flock only takes the descriptor of `file`, which stays open
    // for the call; a lock we get is released before the file is closed.
    unsafe {
        if libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 {
            libc::flock(file.as_raw_fd(), libc::LOCK_UN);
            return false;
        }
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// sled keeps its settings in `conf`, ending with a CRC32 of the rest; a
/// damaged one would otherwise be reported as "created by a sled version
/// earlier than 0.29".
fn check_sled_conf(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join("conf");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(());
    };
    if bytes.len() <= 8 {
        return Ok(());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(damaged(
            dir,
            &format!("{} (sled's settings) fails its checksum", path.display()),
        ));
    }
    Ok(())
}

pub(super) fn damaged(dir: &Path, detail: &str) -> StoreError {
    StoreError::Damaged {
        dir: dir.to_owned(),
        detail: detail.to_owned(),
    }
}

thread_local! {
    /// Set while sled reads files that may be damaged: a panic there is an
    /// expected answer, reported as an error, not printed as a crash.
    static EXPECTING_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread is inside [`sled_guard`] (for a panic hook
/// that keeps quiet about panics that become errors).
pub fn panic_expected() -> bool {
    EXPECTING_PANICS.with(std::cell::Cell::get)
}

/// Runs `f`, turning a panic inside sled (which it does on some damaged
/// files) into [`StoreError::Corrupt`] naming the directory.
pub(super) fn sled_guard<T>(
    dir: &Path,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    EXPECTING_PANICS.with(|e| e.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    EXPECTING_PANICS.with(|e| e.set(false));
    result.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        Err(damaged(dir, &format!("sled could not read it ({what})")))
    })
}

/// Writes a fresh sequence reservation before the first commit, and makes
/// it durable, so that every group's sequences are covered by a reservation
/// on disk before the group is acknowledged.
pub(super) fn reserve_sequences(
    db: &sled::Db,
    log: &sled::Tree,
    state: &mut meta::State,
    max_batch: usize,
) -> Result<(), StoreError> {
    let before = state.meta.reserved_seq;
    state.reserve(max_batch as u64);
    if state.meta.reserved_seq != before {
        log.insert(
            keys::META_SEQ_RESERVED,
            &state.meta.reserved_seq.0.to_be_bytes(),
        )?;
        db.flush()?;
    }
    Ok(())
}

/// The audit record of a recovery that lost something or moved the
/// sequence numbers on.
pub(super) fn recovery_event(
    recovered: &wal::Recovered,
    state: &meta::State,
) -> Option<AuditEvent> {
    if recovered.damage.is_empty() && !recovered.maybe_acked_lost {
        return None;
    }
    let mut detail = recovered.damage.join("; ");
    if recovered.maybe_acked_lost {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&format!(
            "sequence numbers continue at {} (past any that may have been handed out)",
            state.meta.next_seq
        ));
        warn!(
            next_seq = state.meta.next_seq.0,
            "the write-ahead log lost its newest records; sequence numbers continue past any that may have been handed out"
        );
    }
    Some(AuditEvent::new(
        AuditKind::Recovery,
        format!("broker (--wal-recovery {})", recovered.mode.name()),
        None,
        detail,
    ))
}
