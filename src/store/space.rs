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
//! no restart. The check is a `statvfs`, at most every 5 ms.
//!
//! The reserve is a policy, and can be 0; the disk can also be filled by
//! someone else faster than a check. So the store also keeps a **ballast**:
//! a file of its own (`DATA/ballast`, 32 MiB by default, its blocks
//! allocated) that it deletes the moment free space falls below half its
//! size — before sled flushes (the checkpointer asks first) and before a
//! group is applied — so that what sled still has to write finds room.
//! While the ballast is gone, new alerts are refused; it is allocated again
//! once the disk has room for it and the reserve (or half its size) above
//! it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{error, info};

use super::error::StoreError;

/// How often free space is measured while alerts are being written.
const EVERY: Duration = Duration::from_millis(5);
/// The ballast's file name in the data directory.
pub const BALLAST: &str = "ballast";

/// The disk as the writer and the readers see it; shared by both (a std
/// mutex: held for a comparison and, at most every 100 ms, a `statvfs`).
pub struct Space {
    dir: PathBuf,
    reserve: u64,
    /// The ballast's size (0: none).
    ballast: u64,
    state: Mutex<Measured>,
}

#[derive(Default)]
struct Measured {
    checked: Option<Instant>,
    /// Free bytes when last measured below the reserve (or while the
    /// ballast is released).
    low: Option<u64>,
    /// The ballast file is not there (released, or never made for want of
    /// room).
    released: bool,
}

impl Space {
    /// The disk of `dir`, with a free-space `reserve` and a ballast of
    /// `ballast` bytes, made now if it is not there.
    pub fn new(dir: &Path, reserve: u64, ballast: u64) -> Space {
        let space = Space {
            dir: dir.to_owned(),
            reserve,
            ballast,
            state: Mutex::default(),
        };
        if ballast > 0 && !space.ballast_path().exists() {
            let mut state = super::lock(&space.state);
            state.released = true;
            space.regain(&mut state);
        }
        space
    }

    fn ballast_path(&self) -> PathBuf {
        self.dir.join(BALLAST)
    }

    /// Measures now, releasing the ballast if the disk filled up: the
    /// checkpointer calls it before sled flushes.
    pub fn before_flush(&self) {
        let _ = self.check(true);
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
        if self.reserve == 0 && self.ballast == 0 {
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
                reserve: self.needed(&state),
            }),
            None => Ok(()),
        }
    }

    /// Free space needed before alerts are accepted: the reserve, and
    /// while the ballast is released, room for it and half of it above.
    fn needed(&self, state: &Measured) -> u64 {
        if self.ballast > 0 && state.released {
            self.ballast + self.reserve.max(self.floor())
        } else {
            self.reserve
        }
    }

    /// The current refusal, if any (as of the last measurement).
    pub fn refusal(&self) -> Option<StoreError> {
        let state = super::lock(&self.state);
        state.low.map(|free| StoreError::LowDisk {
            free,
            reserve: self.needed(&state),
        })
    }

    /// Free space at which the ballast is released.
    fn floor(&self) -> u64 {
        self.ballast / 2
    }

    /// Deletes the ballast (the disk filled up underneath the store).
    fn release(&self, state: &mut Measured) {
        match std::fs::remove_file(self.ballast_path()) {
            Ok(()) => error!(
                dir = %self.dir.display(),
                ballast = self.ballast,
                "the disk is nearly full: the store's ballast is released so that what is written finds room; new alerts are refused until there is room again"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => error!(error = %e, "cannot release the store's ballast"),
        }
        state.released = true;
    }

    /// Allocates the ballast again when there is room for it and the
    /// margin above it.
    fn regain(&self, state: &mut Measured) {
        let Ok(free) = free_bytes(&self.dir) else {
            return;
        };
        if free < self.ballast + self.reserve.max(self.floor()) {
            return;
        }
        let made = std::fs::File::create(self.ballast_path())
            .and_then(|f| super::wal::allocate(&f, self.ballast).and_then(|()| f.sync_all()));
        match made {
            Ok(()) => {
                info!(dir = %self.dir.display(), ballast = self.ballast, "the store's ballast is allocated");
                state.released = false;
            }
            Err(e) => {
                let _ = std::fs::remove_file(self.ballast_path());
                tracing::warn!(error = %e, "cannot allocate the store's ballast yet");
            }
        }
    }

    fn observe(&self, state: &mut Measured, mut free: u64) {
        if self.ballast > 0 {
            if !state.released && free < self.floor() {
                self.release(state);
                free = free_bytes(&self.dir).unwrap_or(free);
            } else if state.released {
                self.regain(state);
                free = free_bytes(&self.dir).unwrap_or(free);
            }
        }
        metrics::gauge!(crate::metrics::DISK_FREE_BYTES).set(free as f64);
        let low = free < self.reserve || (self.ballast > 0 && state.released);
        match (state.low, low) {
            (None, true) => error!(
                free,
                needed = self.needed(state),
                dir = %self.dir.display(),
                "free disk space below what the store needs: new alerts are refused until there is room"
            ),
            (Some(_), false) => info!(
                free,
                reserve = self.reserve,
                "free disk space above the reserve again: alerts are accepted again"
            ),
            _ => {}
        }
        state.low = low.then_some(free);
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
        let none = Space::new(dir.path(), 0, 0);
        assert!(none.check(true).is_ok());
        let space = Space::new(dir.path(), 1 << 20, 0);
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
