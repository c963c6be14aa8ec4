//! The write-ahead log: what makes a commit durable.
//!
//! Every group the writer applies to sled (in memory) is also encoded as one
//! WAL record; the flusher appends the records of every group waiting and
//! calls `fdatasync` once for all of them before anyone is answered. sled is
//! flushed only at checkpoints (in the background, every second and whenever
//! a WAL file is full), so the ack path pays one small sequential write and
//! one `fdatasync` instead of sled's flush (which writes through a pool of
//! I/O threads and syncs with `sync_file_range`, which persists neither the
//! file size nor the drive's write cache).
//!
//! # Format
//!
//! `wal/<n>.log` files, each a run of records
//! `[crc32 u32 LE][len u32 LE][lsn u64 LE][payload: len bytes]`, the CRC over
//! `len`, `lsn` and the payload. A payload is one atomic sled batch of the
//! `log` tree: `[1][klen u32][key][vlen u32][value]` for an insert,
//! `[2][klen u32][key]` for a remove. LSNs increase by one per record across
//! files.
//!
//! # Checkpoints and recovery
//!
//! A checkpoint syncs the WAL files, writes the newest LSN whose batch is
//! fully applied into the `mwal_checkpoint` key of the log and flushes sled;
//! after that every record up to it is redundant, and a full file is reused
//! (its blocks are already allocated, which makes `fdatasync` cheaper). A
//! batch whose apply failed half-way stays above the checkpoint, so the next
//! open replays it whole. Stale records in a reused
//! file have LSNs at or below the checkpoint, so they are never replayed.
//!
//! At open, the records above the checkpoint are read from every file,
//! sorted, and replayed in order while they follow each other without a
//! gap (a torn write at the end is an unacknowledged group). Re-applying a
//! batch that sled already holds is harmless: replaying the whole suffix in
//! order ends in the same state. Then a checkpoint covers them all.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::{StoreError, keys, lock};

/// A WAL file is retired (and checkpointed) once it holds this much.
pub const FILE_BYTES: u64 = 64 * 1024 * 1024;
/// How often sled is flushed when no file fills up: bounds what a crash can
/// take of the state written outside the WAL (feed cursors), and how much a
/// restart replays.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
const HEADER: usize = 16;
const INSERT: u8 = 1;
const REMOVE: u8 = 2;

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// One change of the log tree, in its WAL encoding. It is written to the
/// WAL before it is applied, so that a crash part-way through applying it
/// is repaired by the replay at the next open: together they are atomic.
#[derive(Default)]
pub struct Batch {
    wal: Vec<u8>,
}

impl Batch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.wal.push(INSERT);
        put_bytes(&mut self.wal, key.as_ref());
        put_bytes(&mut self.wal, value.as_ref());
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.wal.push(REMOVE);
        put_bytes(&mut self.wal, key.as_ref());
    }

    /// The WAL payload.
    pub fn into_payload(self) -> Vec<u8> {
        self.wal
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values are bounded far below 4 GiB (alerts by the message
    // size limit).
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Applies a WAL payload to `log`, one operation after the other (sled's
/// atomic batches write and sync two I/O buffers each, which would cost more
/// than the whole WAL; atomicity comes from writing the payload to the WAL
/// first).
///
/// # Errors
/// When the payload does not decode, or sled fails.
pub fn apply(log: &sled::Tree, mut p: &[u8]) -> Result<(), StoreError> {
    fn take<'a>(p: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
        let bad = || StoreError::Corrupt {
            what: "write-ahead log".into(),
            detail: "a record does not decode".into(),
        };
        let len = u32::from_le_bytes(p.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        let bytes = p.get(4..4 + len as usize).ok_or_else(bad)?;
        *p = &p[4 + len as usize..];
        Ok(bytes)
    }
    while let Some((&op, rest)) = p.split_first() {
        p = rest;
        match op {
            INSERT => {
                let key = take(&mut p)?;
                let value = take(&mut p)?;
                log.insert(key, value)?;
            }
            REMOVE => {
                log.remove(take(&mut p)?)?;
            }
            other => {
                return Err(StoreError::Corrupt {
                    what: "write-ahead log".into(),
                    detail: format!("unknown operation {other}"),
                });
            }
        }
    }
    Ok(())
}

/// A request to the checkpointer (which checkpoints through the newest
/// fully applied LSN).
struct Checkpoint {
    /// A full file that may be reused once a checkpoint through its last
    /// record (the LSN) is durable.
    retired: Option<(PathBuf, Arc<File>, u64)>,
    replies: Vec<Reply>,
}

/// What the appending side shares with the checkpointer.
struct Shared {
    /// The newest LSN whose batch is fully applied to sled: what a
    /// checkpoint may cover. A batch that failed half-way stays above it,
    /// so the next open replays it whole.
    applied: AtomicU64,
    /// The file being appended to.
    active: Mutex<Arc<File>>,
}

/// The appending side, owned by the store's flusher thread.
pub struct Wal {
    dir: PathBuf,
    /// A file is retired once it holds this much ([`FILE_BYTES`]).
    file_bytes: u64,
    file: Arc<File>,
    offset: u64,
    next_lsn: u64,
    shared: Arc<Shared>,
    /// Checkpointed files, ready for reuse.
    spare: Arc<Mutex<Vec<PathBuf>>>,
    active: PathBuf,
    checkpoints: Option<Sender<Checkpoint>>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
    buf: Vec<u8>,
}

impl Wal {
    /// Replays what the last run left above the checkpoint into `log`, makes
    /// it durable in sled, and starts the checkpointer thread.
    ///
    /// # Errors
    /// When the WAL directory cannot be read or written, or a replayed batch
    /// cannot be applied or flushed.
    pub fn open(
        dir: &Path,
        db: &sled::Db,
        log: &sled::Tree,
        failed: Arc<Mutex<Option<String>>>,
    ) -> Result<Wal, StoreError> {
        let dir = dir.join("wal");
        std::fs::create_dir_all(&dir).map_err(io_err)?;
        let checkpoint = log
            .get(keys::META_WAL_CHECKPOINT)?
            .and_then(|v| keys::u64_value(&v))
            .unwrap_or(0);
        let mut files = wal_files(&dir)?;
        let mut pending = BTreeMap::new();
        let mut newest = checkpoint;
        for path in &files {
            let file = File::open(path).map_err(io_err)?;
            read_records(&file, |lsn, payload| {
                newest = newest.max(lsn);
                if lsn > checkpoint {
                    pending.insert(lsn, payload);
                }
            })
            .map_err(io_err)?;
        }
        let mut replayed = 0u64;
        let mut expected = checkpoint + 1;
        for (lsn, payload) in &pending {
            if *lsn != expected {
                // A gap: the records after it were written with a group that
                // never became durable, so nobody was answered for them.
                warn!(
                    lsn,
                    expected, "write-ahead log has a gap; the records after it are discarded"
                );
                break;
            }
            apply(log, payload)?;
            replayed += 1;
            expected += 1;
        }
        // Everything up to the newest LSN in any file is now either in sled
        // or was never acknowledged: no record at or below it is read again.
        log.insert(keys::META_WAL_CHECKPOINT, &newest.to_be_bytes())?;
        db.flush().map_err(StoreError::from_sled)?;
        if replayed > 0 {
            info!(
                records = replayed,
                through = expected - 1,
                "replayed the write-ahead log"
            );
        }
        // Everything in the files is at or below the checkpoint now: any
        // of them can take new records from its start.
        let active = match files.pop() {
            Some(p) => p,
            None => dir.join("0.log"),
        };
        let file = Arc::new(open_file(&active)?);
        let spare = Arc::new(Mutex::new(files));
        let shared = Arc::new(Shared {
            applied: AtomicU64::new(newest),
            active: Mutex::new(file.clone()),
        });
        let (tx, rx) = channel();
        let checkpointer = {
            let (db, log, spare, shared) = (db.clone(), log.clone(), spare.clone(), shared.clone());
            std::thread::Builder::new()
                .name("liaison-store-ckpt".into())
                .spawn(move || checkpoint_loop(&db, &log, &rx, &spare, &shared, &failed))
                .map_err(io_err)?
        };
        Ok(Wal {
            dir,
            file_bytes: FILE_BYTES,
            file,
            offset: 0,
            next_lsn: newest + 1,
            shared,
            spare,
            active,
            checkpoints: Some(tx),
            checkpointer: Some(checkpointer),
            buf: Vec::new(),
        })
    }

    /// Writes `payload` as the next record (not synced: the flusher syncs
    /// the file returned, once for every group written meanwhile) and
    /// returns it with the record's LSN; an empty payload writes nothing.
    /// Once the payload is applied, report it with [`Wal::applied`].
    ///
    /// # Errors
    /// When the write fails; the payload must then not be applied.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<(Arc<File>, Option<u64>)> {
        if payload.is_empty() {
            return Ok((self.file.clone(), None));
        }
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::other("a commit group is larger than 4 GiB"))?;
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&self.next_lsn.to_le_bytes());
        self.buf.extend_from_slice(payload);
        let crc = crc32fast::hash(&self.buf[4..]);
        self.buf[..4].copy_from_slice(&crc.to_le_bytes());
        if self.offset > 0 && self.offset + self.buf.len() as u64 > self.file_bytes {
            self.rotate()?;
        }
        self.file.write_all_at(&self.buf, self.offset)?;
        self.offset += self.buf.len() as u64;
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        Ok((self.file.clone(), Some(lsn)))
    }

    /// The batch of record `lsn` is applied to sled in full.
    pub fn applied(&self, lsn: u64) {
        self.shared.applied.store(lsn, Ordering::Release);
    }

    /// Asks for a checkpoint of everything applied so far; `replies` are
    /// answered once sled holds it on disk.
    pub fn checkpoint(&self, replies: Vec<Reply>) {
        self.request(Checkpoint {
            retired: None,
            replies,
        });
    }

    fn request(&self, checkpoint: Checkpoint) {
        if let Some(tx) = &self.checkpoints
            && let Err(std::sync::mpsc::SendError(c)) = tx.send(checkpoint)
        {
            for reply in c.replies {
                let _ = reply.send(Err(StoreError::Closed));
            }
        }
    }

    /// Continues in a spare (checkpointed) file, or a new one, and retires
    /// the full one, whose last record is the one before `next_lsn`.
    fn rotate(&mut self) -> io::Result<()> {
        let last = self.next_lsn - 1;
        // Every record of the full file is on disk before any of the next:
        // a group published without a sync of its own (nobody waited for
        // it) can then never leave a gap before a synced one in the next
        // file, which would end the replay early.
        self.file.sync_data()?;
        let next = lock(&self.spare).pop();
        let next = match next {
            Some(p) => p,
            None => {
                // The checkpoint of the previous file is not done yet.
                let mut n = 0u64;
                while self.dir.join(format!("{n}.log")).exists() {
                    n += 1;
                }
                let p = self.dir.join(format!("{n}.log"));
                debug!(path = %p.display(), "new write-ahead log file");
                p
            }
        };
        let file = Arc::new(open_file(&next).map_err(|e| io::Error::other(e.to_string()))?);
        let retired = std::mem::replace(&mut self.active, next);
        let retired_file = std::mem::replace(&mut self.file, file.clone());
        *lock(&self.shared.active) = file;
        self.offset = 0;
        self.request(Checkpoint {
            retired: Some((retired, retired_file, last)),
            replies: Vec::new(),
        });
        Ok(())
    }
}

impl Drop for Wal {
    /// A final checkpoint, so that a clean stop leaves nothing to replay;
    /// waits for the checkpointer.
    fn drop(&mut self) {
        self.checkpoint(Vec::new());
        self.checkpoints = None;
        if let Some(handle) = self.checkpointer.take() {
            let _ = handle.join();
        }
    }
}

/// The checkpointer thread: on request (and every [`CHECKPOINT_EVERY`])
/// records the newest fully applied LSN and flushes sled.
///
/// Before flushing it syncs the WAL files: sled's flush also writes
/// whatever part of a group the writer is applying at that moment, and that
/// group's record (written before it was applied) must then be on disk too,
/// so that a power cut cannot leave part of a group without the record
/// that completes it.
fn checkpoint_loop(
    db: &sled::Db,
    log: &sled::Tree,
    rx: &Receiver<Checkpoint>,
    spare: &Mutex<Vec<PathBuf>>,
    shared: &Shared,
    failed: &Mutex<Option<String>>,
) {
    let mut recorded = shared.applied.load(Ordering::Acquire);
    loop {
        let mut requests = match rx.recv_timeout(CHECKPOINT_EVERY) {
            Ok(c) => vec![c],
            Err(RecvTimeoutError::Timeout) => Vec::new(),
            Err(RecvTimeoutError::Disconnected) => return,
        };
        requests.extend(rx.try_iter());
        let through = shared.applied.load(Ordering::Acquire);
        let active = lock(&shared.active).clone();
        let result = requests
            .iter()
            .filter_map(|c| c.retired.as_ref().map(|(_, f, _)| f))
            .chain(std::iter::once(&active))
            .try_for_each(|f| f.sync_data())
            .map_err(sled::Error::Io)
            .and_then(|()| {
                if through > recorded {
                    log.insert(keys::META_WAL_CHECKPOINT, &through.to_be_bytes())?;
                }
                db.flush()
            })
            .map(drop)
            .map_err(StoreError::from_sled);
        match &result {
            Ok(()) => recorded = recorded.max(through),
            Err(e) => {
                error!(error = %e, "checkpoint failed; the store refuses further writes until restarted");
                let mut f = lock(failed);
                if f.is_none() {
                    *f = Some(format!("checkpoint: {e}"));
                }
            }
        }
        for c in requests {
            // A full file is reused only once every record in it is covered.
            if result.is_ok()
                && let Some((path, _, last)) = c.retired
                && last <= through
            {
                lock(spare).push(path);
            }
            for reply in c.replies {
                let _ = reply.send(match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(StoreError::Failed(e.to_string())),
                });
            }
        }
    }
}

fn open_file(path: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err)?;
    // A new file gets its full size at once (sparse): an `fdatasync` then
    // has no file size to persist with each append.
    if file.metadata().map_err(io_err)?.len() < FILE_BYTES {
        file.set_len(FILE_BYTES).map_err(io_err)?;
    }
    // The new name must survive a crash too.
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
    }
    Ok(file)
}

fn wal_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        if path.extension().is_some_and(|e| e == "log") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn io_err(e: io::Error) -> StoreError {
    StoreError::from_sled(sled::Error::Io(e))
}

/// Calls `each` with the valid records at the start of a file, in order:
/// it ends at the first record that is cut short or fails its CRC (a torn
/// write, or the zeros of the file's unused end). Reads record by record.
fn read_records(file: &File, mut each: impl FnMut(u64, Vec<u8>)) -> io::Result<()> {
    let size = file.metadata()?.len();
    let mut offset = 0u64;
    let mut header = [0u8; HEADER];
    while offset + HEADER as u64 <= size {
        file.read_exact_at(&mut header, offset)?;
        let [c0, c1, c2, c3, l0, l1, l2, l3, lsn @ ..] = header;
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        let len = u64::from(u32::from_le_bytes([l0, l1, l2, l3]));
        let lsn = u64::from_le_bytes(lsn);
        if lsn == 0 || offset + HEADER as u64 + len > size {
            break;
        }
        let mut payload = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
        file.read_exact_at(&mut payload, offset + HEADER as u64)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header[4..]);
        hasher.update(&payload);
        if hasher.finalize() != crc {
            break;
        }
        each(lsn, payload);
        offset += HEADER as u64 + len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (sled::Db, sled::Tree, Wal) {
        // sled releases its file lock when its I/O pool lets go of the last
        // handle, which can trail the drop of the previous `Db` by a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let db = loop {
            match sled::Config::new()
                .path(dir.join("db"))
                .flush_every_ms(None)
                .open()
            {
                Ok(db) => break db,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(e.to_string().contains("could not acquire lock"), "{e}");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let log = db.open_tree("log").unwrap();
        let wal = Wal::open(dir, &db, &log, Arc::default()).unwrap();
        (db, log, wal)
    }

    fn batch(ops: &[(&str, Option<&str>)]) -> Batch {
        let mut b = Batch::default();
        for (k, v) in ops {
            match v {
                Some(v) => b.insert(k.as_bytes(), v.as_bytes()),
                None => b.remove(k.as_bytes()),
            }
        }
        b
    }

    #[test]
    fn a_payload_applies_what_was_encoded_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, log, _wal) = open(dir.path());
        log.insert("b", "old").unwrap();
        let payload = batch(&[("a", Some("1")), ("b", None), ("", Some(""))]).into_payload();
        apply(&log, &payload).unwrap();
        assert_eq!(log.get("a").unwrap().unwrap(), "1".as_bytes());
        assert_eq!(log.get("b").unwrap(), None);
        assert_eq!(log.get("").unwrap().unwrap(), "".as_bytes());
        assert!(apply(&log, &payload[..payload.len() - 1]).is_err());
        assert!(apply(&log, &[9]).is_err());
    }

    /// Appended (synced) but never applied to sled: the next open replays
    /// it, in order, and a torn tail is ignored.
    #[test]
    fn open_replays_synced_records_and_ignores_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let one = batch(&[("k1", Some("v1")), ("k2", Some("v2"))]).into_payload();
        let two = batch(&[("k1", None), ("k3", Some("v3"))]).into_payload();
        {
            let (_db, _log, mut wal) = open(dir.path());
            wal.append(&one).unwrap();
            wal.append(&two).unwrap().0.sync_data().unwrap();
            // A crash: the checkpointer must not run, so leak the WAL.
            wal.checkpoints = None;
            let _ = wal.checkpointer.take().map(std::thread::JoinHandle::join);
            std::mem::forget(wal);
        }
        // Tear a third record half-way, right after the second.
        let path = dir.path().join("wal/0.log");
        let end = (2 * HEADER + one.len() + two.len()) as u64;
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(&[1, 2, 3, 4, 200, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1], end)
            .unwrap();
        {
            let (_db, log, wal) = open(dir.path());
            assert_eq!(log.get("k1").unwrap(), None);
            assert_eq!(log.get("k2").unwrap().unwrap(), "v2".as_bytes());
            assert_eq!(log.get("k3").unwrap().unwrap(), "v3".as_bytes());
            assert_eq!(
                wal.next_lsn, 3,
                "numbering goes on after the last good record"
            );
        }
        // Checkpointed: a third open replays nothing, even after the values
        // change behind the WAL's back.
        let (_db, log, _wal) = open(dir.path());
        log.insert("k2", "changed").unwrap();
        drop((_db, log, _wal));
        let (_db, log, _wal) = open(dir.path());
        assert_eq!(log.get("k2").unwrap().unwrap(), "changed".as_bytes());
    }

    /// A batch whose apply failed half-way (never reported applied) stays
    /// above the checkpoint, even the final one of a clean close, and is
    /// replayed whole at the next open.
    #[test]
    fn a_batch_not_applied_in_full_is_replayed_after_a_clean_close() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_db, log, mut wal) = open(dir.path());
            let good = batch(&[("a", Some("1"))]).into_payload();
            let (_, lsn) = wal.append(&good).unwrap();
            apply(&log, &good).unwrap();
            wal.applied(lsn.unwrap());
            let broken = batch(&[("b", Some("2")), ("c", Some("3"))]).into_payload();
            wal.append(&broken).unwrap().0.sync_data().unwrap();
            // Only the first operation made it into sled.
            log.insert("b", "2").unwrap();
        }
        let (_db, log, _wal) = open(dir.path());
        assert_eq!(log.get("a").unwrap().unwrap(), "1".as_bytes());
        assert_eq!(log.get("b").unwrap().unwrap(), "2".as_bytes());
        assert_eq!(log.get("c").unwrap().unwrap(), "3".as_bytes());
    }

    fn records_of(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        std::fs::write(&path, bytes).unwrap();
        let mut out = Vec::new();
        read_records(&File::open(&path).unwrap(), |lsn, p| out.push((lsn, p))).unwrap();
        out
    }

    #[test]
    fn records_stop_at_a_bad_crc_or_zeros() {
        let mut buf = Vec::new();
        for (lsn, payload) in [(1u64, &b"abc"[..]), (2, b"de")] {
            let start = buf.len();
            buf.extend_from_slice(&[0; 4]);
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&lsn.to_le_bytes());
            buf.extend_from_slice(payload);
            let crc = crc32fast::hash(&buf[start + 4..]);
            buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
        }
        let all = records_of(&buf);
        assert_eq!(all, vec![(1, b"abc".to_vec()), (2, b"de".to_vec())]);
        let mut zeros = buf.clone();
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(records_of(&zeros).len(), 2);
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert_eq!(records_of(&buf).len(), 1);
    }

    /// Files fill, are checkpointed and reused; a reopen after that replays
    /// only what is above the checkpoint.
    #[test]
    fn full_files_are_reused_after_their_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (db, log, mut wal) = open(dir.path());
        wal.file_bytes = 64 * 1024;
        let value = vec![7u8; 4096];
        let write = |wal: &mut Wal, i: u32| {
            let mut b = Batch::default();
            b.insert(i.to_be_bytes(), &value);
            let payload = b.into_payload();
            let (_, lsn) = wal.append(&payload).unwrap();
            apply(&log, &payload).unwrap();
            wal.applied(lsn.unwrap());
        };
        // Fill the first file and start the second.
        for i in 0..20 {
            write(&mut wal, i);
        }
        let files = || wal_files(&dir.path().join("wal")).unwrap().len();
        assert_eq!(files(), 2);
        // Readiness: the first file's checkpoint returns it as a spare.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while wal.spare.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "no checkpoint");
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 20..35 {
            write(&mut wal, i);
        }
        assert_eq!(files(), 2, "the checkpointed file was reused");
        drop(wal);
        drop((db, log));
        let (_db, log, wal) = open(dir.path());
        assert_eq!(log.len(), 35 + 1); // and the checkpoint key
        assert_eq!(wal.next_lsn, 36);
    }
}
