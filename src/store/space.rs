//! The free-space reserve of the data directory's disk.
//!
//! sled cannot recover from a write that finds the disk full: it keeps the
//! error and refuses every later write until the database is opened again
//! (sled 0.34 sets a global error in its I/O buffers, cleared only when a
//! `PageCache` starts). So the store never lets the disk get that full:
//! below a reserve (256 MiB by default) it refuses new alerts with
//! RESOURCE_EXHAUSTED and lets only what keeps the store working go on
//! (audit records, receipts, cursors, outbox removals, retention, which
//! frees space). Once there is room again, alerts are accepted again, with
//! no restart. The check is a `statvfs`, at most every 100 ms.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{error, info};

use super::error::StoreError;

/// How often free space is measured while alerts are being written.
const EVERY: Duration = Duration::from_millis(100);

/// The disk as the writer and the readers see it; shared by both (a std
/// mutex: held for a comparison and, at most every 100 ms, a `statvfs`).
pub struct Space {
    dir: PathBuf,
    reserve: u64,
    state: Mutex<Measured>,
}

#[derive(Default)]
struct Measured {
    checked: Option<Instant>,
    /// Free bytes when last measured below the reserve.
    low: Option<u64>,
}

impl Space {
    pub fn new(dir: &Path, reserve: u64) -> Space {
        Space {
            dir: dir.to_owned(),
            reserve,
            state: Mutex::default(),
        }
    }

    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether new alerts may be stored (measured again when the last
    /// measurement is older than 100 ms, or when `now`).
    ///
    /// # Errors
    /// [`StoreError::LowDisk`] while free space is below the reserve.
    pub fn check(&self, now: bool) -> Result<(), StoreError> {
        if self.reserve == 0 {
            return Ok(());
        }
        let mut state = super::lock(&self.state);
        if now || state.checked.is_none_or(|t| t.elapsed() >= EVERY) {
            state.checked = Some(Instant::now());
            match free_bytes(&self.dir) {
                Ok(free) => self.observe(&mut state, free),
                // Not knowing is no reason to refuse; the writes themselves
                // will say if the disk is full.
                Err(e) => tracing::debug!(error = %e, "cannot measure free disk space"),
            }
        }
        match state.low {
            Some(free) => Err(StoreError::LowDisk {
                free,
                reserve: self.reserve,
            }),
            None => Ok(()),
        }
    }

    /// The current refusal, if any (as of the last measurement).
    pub fn refusal(&self) -> Option<StoreError> {
        super::lock(&self.state)
            .low
            .map(|free| StoreError::LowDisk {
                free,
                reserve: self.reserve,
            })
    }

    fn observe(&self, state: &mut Measured, free: u64) {
        metrics::gauge!(crate::metrics::DISK_FREE_BYTES).set(free as f64);
        match (state.low, free < self.reserve) {
            (None, true) => error!(
                free,
                reserve = self.reserve,
                dir = %self.dir.display(),
                "free disk space below the reserve: new alerts are refused until there is room"
            ),
            (Some(_), false) => info!(
                free,
                reserve = self.reserve,
                "free disk space above the reserve again: alerts are accepted again"
            ),
            _ => {}
        }
        state.low = (free < self.reserve).then_some(free);
    }
}

/// Bytes available to this process on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the path holds a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a valid NUL-terminated string and `st` points to
    // memory for one statvfs, which the call fills on success.
    let r = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_measured_and_the_reserve_refuses_until_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let none = Space::new(dir.path(), 0);
        assert!(none.check(true).is_ok());
        let space = Space::new(dir.path(), 1 << 20);
        {
            let mut state = space.state.lock().unwrap();
            space.observe(&mut state, 1 << 10);
            state.checked = Some(Instant::now());
        }
        assert!(matches!(
            space.check(false),
            Err(StoreError::LowDisk { free: 1024, .. })
        ));
        space.observe(&mut space.state.lock().unwrap(), 2 << 20);
        assert!(space.check(false).is_ok());
        assert!(space.refusal().is_none());
        // Asked to measure now, it finds the real disk above a small reserve.
        assert!(space.check(true).is_ok());
    }
}
