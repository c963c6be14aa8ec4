//! The store's errors, as types: a caller decides on the variant (or on
//! [`StoreError::is_resource_exhausted`]), never on a message's wording.
//! `std::io` and sled errors keep their source; a full disk is recognised
//! in one place ([`StoreError::io`]).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed; `what` names the file or the step.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: Arc<io::Error>,
    },
    /// The disk (or the user's quota) is full.
    #[error("the disk is full ({what})")]
    DiskFull {
        what: String,
        #[source]
        source: Arc<io::Error>,
    },
    /// Free space fell below the reserve kept for the store's own
    /// bookkeeping: new alerts are refused until there is room again.
    #[error(
        "the data directory's disk has {free} bytes free, below the reserve of {reserve} bytes \
         kept for the store (--min-free-disk)"
    )]
    LowDisk { free: u64, reserve: u64 },
    #[error("storage failure: {0}")]
    Sled(sled::Error),
    #[error("stored data is corrupt at {what}: {detail}")]
    Corrupt { what: String, detail: String },
    /// The database files are damaged (sled cannot read them).
    #[error(
        "the database in {dir} is damaged: {detail}. Restore the data directory from a backup \
         (docs/operations.md#backups)"
    )]
    Damaged { dir: PathBuf, detail: String },
    /// The store's key: missing, wrong, or its files unusable; nothing
    /// was changed (`detail` says what to do).
    #[error("{dir}: {detail}")]
    Key { dir: PathBuf, detail: String },
    /// Another process has the store open.
    #[error("{dir} is in use by another process (a running broker or agent?)")]
    Locked { dir: PathBuf },
    /// The write-ahead log lost or damaged records that the store needs;
    /// the store refuses to open (see `--wal-recovery`).
    #[error(
        "the write-ahead log is damaged: {file}, offset {offset}, LSN {lsn}: {detail}. Restore \
         the data directory from a backup, or start with --wal-recovery point-in-time (keep what \
         comes before the damage) or --wal-recovery skip-damaged (keep every intact record); \
         see docs/operations.md"
    )]
    WalDamaged {
        file: PathBuf,
        offset: u64,
        lsn: u64,
        detail: String,
    },
    /// An earlier commit failed in a way the running store cannot repair:
    /// writes are refused until it is opened again (reads go on).
    #[error("the store stopped accepting writes after a failure ({0}); restart the broker")]
    Failed(Arc<StoreError>),
    #[error("the store is closed")]
    Closed,
    #[error("alert.id: already used by another node's alert")]
    IdConflict,
    #[error(
        "the outbox is full ({alerts} alerts, {bytes} bytes waiting for the upstream link); nothing was stored"
    )]
    OutboxFull { alerts: u64, bytes: u64 },
}

impl StoreError {
    /// Classifies a failed file operation: ENOSPC and EDQUOT are
    /// [`StoreError::DiskFull`], everything else [`StoreError::Io`].
    pub fn io(what: impl Into<String>, source: io::Error) -> StoreError {
        let full = matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        ) || matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
        let (what, source) = (what.into(), Arc::new(source));
        if full {
            StoreError::DiskFull { what, source }
        } else {
            StoreError::Io { what, source }
        }
    }

    /// A sled error, with its I/O cause classified as by [`StoreError::io`].
    pub fn sled(what: &str, e: sled::Error) -> StoreError {
        match e {
            sled::Error::Io(io) => StoreError::io(format!("sled ({what})"), io),
            other => StoreError::Sled(other),
        }
    }

    /// Whether the store refused for lack of room (a full disk, the free
    /// space reserve, a full outbox): nothing was stored, and a retry may
    /// succeed once there is room.
    pub fn is_resource_exhausted(&self) -> bool {
        match self {
            StoreError::DiskFull { .. }
            | StoreError::LowDisk { .. }
            | StoreError::OutboxFull { .. } => true,
            StoreError::Failed(cause) => cause.is_resource_exhausted(),
            _ => false,
        }
    }
}

/// A sled error, its I/O cause classified ([`StoreError::sled`]).
impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::sled("sled", e)
    }
}

pub(super) fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what: what.to_owned(),
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_recognised_by_kind_or_os_code_and_survives_a_clone() {
        for e in [
            io::Error::from_raw_os_error(libc::ENOSPC),
            io::Error::from_raw_os_error(libc::EDQUOT),
            io::Error::new(io::ErrorKind::StorageFull, "full"),
        ] {
            let err = StoreError::io("wal/0.log", e);
            assert!(matches!(err, StoreError::DiskFull { .. }), "{err:?}");
            let failed = StoreError::Failed(Arc::new(err.clone()));
            assert!(failed.clone().is_resource_exhausted());
            assert!(std::error::Error::source(&err).is_some());
        }
        let other = StoreError::io("x", io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(other, StoreError::Io { .. }));
        assert!(!other.is_resource_exhausted());
    }
}
