//! Injected faults, for tests of the store's failure paths: the next write
//! of the write-ahead log, its next sync, or the next apply of a group to
//! sled can be made to fail as a full disk or a broken drive would. A store
//! opened without [`Faults`] (every production store) only reads one
//! `Option` per write to know there are none.

use std::sync::atomic::{AtomicU32, Ordering};

/// Which operations are to fail, and how many times more.
#[derive(Debug, Default)]
pub struct Faults {
    wal_write: AtomicU32,
    wal_sync: AtomicU32,
    apply: AtomicU32,
}

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Writing a record to the write-ahead log (it fails as ENOSPC would).
    WalWrite,
    /// `fdatasync` of the write-ahead log (it fails as EIO would).
    WalSync,
    /// Applying a group to sled: half of its operations are applied, then
    /// it fails.
    Apply,
}

impl Faults {
    /// Makes the next `times` operations of `kind` fail.
    pub fn fail(&self, kind: Fault, times: u32) {
        self.counter(kind).store(times, Ordering::SeqCst);
    }

    /// Whether this operation of `kind` is to fail (and counts it).
    pub fn take(&self, kind: Fault) -> bool {
        self.counter(kind)
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn counter(&self, kind: Fault) -> &AtomicU32 {
        match kind {
            Fault::WalWrite => &self.wal_write,
            Fault::WalSync => &self.wal_sync,
            Fault::Apply => &self.apply,
        }
    }
}

/// Whether `faults` (if any) make this operation of `kind` fail.
pub(super) fn injected(faults: Option<&Faults>, kind: Fault) -> bool {
    faults.is_some_and(|f| f.take(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_fires_as_often_as_asked_then_stops() {
        let f = Faults::default();
        assert!(!f.take(Fault::WalSync));
        f.fail(Fault::WalSync, 2);
        assert!(f.take(Fault::WalSync) && f.take(Fault::WalSync));
        assert!(!f.take(Fault::WalSync));
        assert!(!injected(None, Fault::Apply));
    }
}
