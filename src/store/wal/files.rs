//! The WAL's files on disk: finding them, opening one at its full size,
//! and deciding which a new run may reuse.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use tracing::warn;

use super::frame::{self, Header};
use super::recovery;
use crate::store::error::StoreError;

/// The number of a file named `N.log`.
pub(super) fn number_of(path: &Path) -> Option<u32> {
    path.file_stem()?.to_str()?.parse().ok()
}

/// Reads every `N.log` of the WAL directory, in number order.
pub(super) fn read_files(dir: &Path) -> Result<Vec<recovery::WalFile>, StoreError> {
    let read_err = |e| StoreError::io(dir.display().to_string(), e);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let Some(number) = number_of(&path) else {
            warn!(file = %path.display(), "not a write-ahead log file name; ignored");
            continue;
        };
        let bytes =
            std::fs::read(&path).map_err(|e| StoreError::io(path.display().to_string(), e))?;
        files.push(recovery::WalFile {
            number,
            path,
            bytes,
        });
    }
    files.sort_by_key(|f| f.number);
    Ok(files)
}

/// Whether a file can take new records from its start.
pub(super) fn usable(f: &recovery::WalFile, file_bytes: u64) -> bool {
    matches!(frame::header(&f.bytes), Header::V2 { size } if size == file_bytes && f.bytes.len() as u64 >= size)
}

/// Removes what recovery left that cannot be reused (files of the first
/// format, cut or differently sized files), and opens the file the new run
/// starts in.
pub(super) fn reuse_files(
    dir: &Path,
    files: &[recovery::WalFile],
    file_bytes: u64,
) -> Result<(u32, File), StoreError> {
    for f in files.iter().filter(|f| !usable(f, file_bytes)) {
        std::fs::remove_file(&f.path)
            .map_err(|e| StoreError::io(f.path.display().to_string(), e))?;
    }
    let number = files
        .iter()
        .find(|f| usable(f, file_bytes))
        .map_or(0, |f| f.number);
    let path = dir.join(format!("{number}.log"));
    Ok((number, open_file(&path, file_bytes)?))
}

/// Opens (or creates) a WAL file with its header and its full size
/// allocated.
pub(super) fn open_file(path: &Path, size: u64) -> Result<File, StoreError> {
    let err = |e| StoreError::io(path.display().to_string(), e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err)?;
    if file.metadata().map_err(err)?.len() < size {
        allocate(&file, size).map_err(err)?;
    }
    file.write_all_at(&frame::file_header(size), 0)
        .map_err(err)?;
    // The new name must survive a crash too.
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(file)
}

/// Gives the file its full size, with its blocks allocated where the file
/// system can (so that no later write into it can find the disk full).
pub(crate) fn allocate(file: &File, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(size).map_err(std::io::Error::other)?;
    // SAFETY: fallocate only reads its integer arguments; the descriptor
    // is open for as long as `file` lives.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOSYS) => file.set_len(size),
        _ => Err(e),
    }
}
