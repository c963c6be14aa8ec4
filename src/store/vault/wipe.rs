//! The emergency wipe: the keys first, then whoever holds the data key in
//! memory, then the data (docs/security.md#emergency-wipe).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

use super::{VAULT_FILE, key_error};
use crate::store::error::StoreError;

/// What [`wipe`] did.
#[derive(Debug, Default)]
pub struct Wiped {
    /// Files overwritten with random bytes and removed before anything
    /// else (the keys), in order.
    pub shredded: Vec<PathBuf>,
    /// Processes that had the data directory's files open (a running
    /// agent, with the data key in its memory), killed.
    pub stopped: Vec<u32>,
    /// Whether the data directory was there and is now gone.
    pub data_removed: bool,
    /// Files and bytes removed with it.
    pub files: u64,
    pub bytes: u64,
    /// Time to destroy the keys, and in all.
    pub keys_gone_after: std::time::Duration,
    pub took: std::time::Duration,
}

/// The emergency wipe: destroys the key file (when given) and the vault
/// file first — overwritten with random bytes, synced, removed: from then
/// on nothing sealed can be read, whatever is left on the disk — then
/// removes the data directory.
///
/// # Errors
/// When a file cannot be overwritten or removed; what was done by then is
/// in the error's message.
pub fn wipe(dir: &Path, key_file: Option<&Path>) -> Result<Wiped, StoreError> {
    let t0 = std::time::Instant::now();
    let mut done = Wiped::default();
    let vault = dir.join(VAULT_FILE);
    for path in key_file.into_iter().chain([vault.as_path()]) {
        if !path.exists() {
            continue;
        }
        shred(path).map_err(|e| {
            key_error(
                dir,
                format!(
                    "wiping {}: {e} (done before: {:?})",
                    path.display(),
                    done.shredded
                ),
            )
        })?;
        done.shredded.push(path.to_owned());
    }
    done.keys_gone_after = t0.elapsed();
    if dir.exists() {
        done.stopped = kill_holders(dir);
        for entry in walk(dir) {
            if let Ok(m) = entry.metadata() {
                done.files += 1;
                done.bytes += m.len();
            }
        }
        std::fs::remove_dir_all(dir).map_err(|e| {
            key_error(
                dir,
                format!(
                    "the keys are destroyed ({:?}), but removing the data directory failed: {e}",
                    done.shredded
                ),
            )
        })?;
        done.data_removed = true;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty())
            && let Ok(d) = File::open(parent)
        {
            let _ = d.sync_all();
        }
    }
    done.took = t0.elapsed();
    Ok(done)
}

/// Overwrites a (small) file with random bytes, syncs it, and removes it.
fn shred(path: &Path) -> std::io::Result<()> {
    let len = std::fs::metadata(path)?.len().max(64);
    let mut noise = vec![0u8; usize::try_from(len).unwrap_or(4096).min(1 << 20)];
    SystemRandom::new()
        .fill(&mut noise)
        .map_err(|_| std::io::Error::other("the random number generator failed"))?;
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(&noise)?;
    f.sync_all()?;
    drop(f);
    std::fs::remove_file(path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(d) = File::open(parent)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Kills (SIGKILL) every other process with a file under `dir` open, and
/// returns their ids.
fn kill_holders(dir: &Path) -> Vec<u32> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut killed = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return killed;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(&dir)));
        if holds && let Ok(id) = libc::pid_t::try_from(pid) {
            // SAFETY: kill with a pid read from /proc and a constant signal.
            if unsafe { libc::kill(id, libc::SIGKILL) } == 0 {
                killed.push(pid);
            }
        }
    }
    killed
}

fn walk(dir: &Path) -> Vec<std::fs::DirEntry> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{KeySource, unlock};
    use super::*;

    #[test]
    fn wipe_destroys_the_keys_then_the_data() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        let kf = t.path().join("k");
        unlock(&data, Some(&KeySource::File(kf.clone()))).unwrap();
        std::fs::write(data.join("db"), vec![1u8; 4096]).unwrap();
        let w = wipe(&data, Some(&kf)).unwrap();
        assert_eq!(w.shredded, vec![kf.clone(), data.join(VAULT_FILE)]);
        assert!(w.data_removed && w.files >= 1);
        assert!(!kf.exists() && !data.exists());
        // Wiping again is harmless.
        let w = wipe(&data, Some(&kf)).unwrap();
        assert!(w.shredded.is_empty() && !w.data_removed);
    }
}
