//! The write-ahead log: what makes a commit durable, and what lets a
//! restart tell a crash's torn tail from damage.
//!
//! Every group the writer stages is written here as one record *before* it
//! is applied to sled (in memory); one `fdatasync` then makes every group
//! written meanwhile durable (group commit), before anyone is answered.
//! sled is flushed only at checkpoints ([`checkpoint`]: every second,
//! whenever a file is full, on `Store::flush` and on close), so the ack path
//! pays one sequential write and one `fdatasync`.
//!
//! # Files
//!
//! `wal/<n>.log`, each created at its full size (64 MiB, allocated with
//! `fallocate`, so that a write into it cannot fail for lack of space and
//! a sync has no size to persist), starting with a header that records
//! that size ([`frame`]). Records carry consecutive LSNs across files. When
//! a file is full, the writer first makes sure the next file exists, then
//! ends the full one with a marker record naming it, syncs it, and goes on
//! in the next; the checkpointer returns a full file for reuse once a
//! checkpoint covers all its records.
//!
//! # Recovery
//!
//! At open, the records above the checkpoint are read from every file,
//! checked ([`recovery`]) and replayed in order; re-applying a batch sled
//! already holds is harmless. A torn tail is discarded; damage (a record
//! that was certainly on disk is missing or altered, a file is missing or
//! cut) refuses the open unless the operator chose a [`Mode`] that accepts
//! the loss. Then a checkpoint covers everything, and new records follow
//! the newest LSN any file held, so an LSN is never reused either.

mod checkpoint;
mod files;
pub(crate) use files::allocate;
mod frame;
mod recovery;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};

use tracing::{debug, info, warn};

pub use checkpoint::Shared;
pub use recovery::Mode;

use super::command::{Batch, Op, Reply, decode_ops};
use super::error::StoreError;
use super::faults::{Fault, Faults, injected};
use super::{keys, lock};
use checkpoint::Request;
use frame::FILE_HEADER;

/// The size a WAL file is created with.
pub const FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Room kept at the end of each file for its end marker.
const MARKER_ROOM: u64 = (frame::RECORD_HEADER + 64) as u64;

/// How the log is kept and recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalConfig {
    pub file_bytes: u64,
    pub recovery: Mode,
    /// How often sled is flushed (a checkpoint) when nothing asks for it.
    pub checkpoint_every: std::time::Duration,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            file_bytes: FILE_BYTES,
            recovery: Mode::Strict,
            checkpoint_every: checkpoint::EVERY,
        }
    }
}

/// What the open found and did.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Records replayed.
    pub replayed: u64,
    /// The highest LSN replayed (or the checkpoint's).
    pub through: u64,
    /// The highest LSN any file held or claimed: new records follow it.
    pub newest: u64,
    /// Records that may have been acknowledged were not replayed: sequence
    /// numbers must go past anything that may have been handed out.
    pub maybe_acked_lost: bool,
    /// The highest `next_seq` any record above the checkpoint held,
    /// replayed or not.
    pub max_next_seq: u64,
    /// Damage that the operator's recovery mode passed over, and what it
    /// cost: for the log and the audit trail.
    pub damage: Vec<String>,
    pub mode: Mode,
}

/// One change of the log tree, applied operation by operation (sled's own
/// atomic batches write and sync two I/O buffers each; atomicity comes from
/// writing the payload to the WAL first).
///
/// # Errors
/// When the payload does not decode, or sled fails.
pub fn apply(log: &sled::Tree, payload: &[u8]) -> Result<(), StoreError> {
    apply_some(log, payload, None)
}

/// [`apply`], stopping with an error after `limit` operations when one is
/// given (an injected fault: a group applied in part).
pub fn apply_some(
    log: &sled::Tree,
    payload: &[u8],
    limit: Option<usize>,
) -> Result<(), StoreError> {
    let ops = decode_ops(payload).map_err(|e| StoreError::Corrupt {
        what: "write-ahead log record".into(),
        detail: e.0,
    })?;
    if let Some(limit) = limit
        && limit < ops.len()
    {
        apply_ops(log, &ops[..limit])?;
        return Err(StoreError::io(
            "sled (apply)",
            std::io::Error::from_raw_os_error(libc::EIO),
        ));
    }
    apply_ops(log, &ops)
}

/// How many operations a payload holds (0 when it does not decode).
pub fn decode_len(payload: &[u8]) -> usize {
    decode_ops(payload).map_or(0, |ops| ops.len())
}

fn apply_ops(log: &sled::Tree, ops: &[Op<'_>]) -> Result<(), StoreError> {
    for op in ops.iter().copied() {
        match op {
            Op::Insert(k, v) => drop(log.insert(k, v).map_err(|e| StoreError::sled("apply", e))?),
            Op::Remove(k) => drop(log.remove(k).map_err(|e| StoreError::sled("apply", e))?),
            Op::NextFile(_) => {}
        }
    }
    Ok(())
}

/// The appending side, owned by the store's writer thread.
pub struct Wal {
    dir: PathBuf,
    /// A file is full at this size ([`FILE_BYTES`]).
    file_bytes: u64,
    file: Arc<File>,
    number: u32,
    offset: u64,
    next_lsn: u64,
    shared: Arc<Shared>,
    /// Checkpointed files, ready for reuse.
    spare: Arc<Mutex<Vec<(u32, PathBuf)>>>,
    checkpoints: Option<Sender<Request>>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
    buf: Vec<u8>,
    /// Set when the log can no longer be trusted (a sync failed): the
    /// store refuses every later write. Shared with the writer.
    failed: Arc<Mutex<Option<StoreError>>>,
    faults: Option<Arc<Faults>>,
}

impl Wal {
    /// Recovers what the last run left above the checkpoint into `log`
    /// (see the module docs), makes it durable in sled, and starts the
    /// checkpointer thread.
    ///
    /// # Errors
    /// [`StoreError::WalDamaged`] when the log is damaged and the mode does
    /// not accept it; when the WAL directory cannot be read or written, or
    /// a replayed batch cannot be applied or flushed.
    pub fn open(
        data: &Path,
        db: &sled::Db,
        log: &sled::Tree,
        config: WalConfig,
        failed: Arc<Mutex<Option<StoreError>>>,
        faults: Option<Arc<Faults>>,
        space: Arc<crate::store::space::Space>,
    ) -> Result<(Wal, Recovered), StoreError> {
        let dir = data.join("wal");
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(dir.display().to_string(), e))?;
        let ck = checkpoint::decode(
            log.get(keys::META_WAL_CHECKPOINT)
                .map_err(|e| StoreError::sled("reading the checkpoint", e))?
                .as_deref(),
        )
        .map_err(|detail| StoreError::Damaged {
            dir: data.to_owned(),
            detail: format!("the write-ahead log's checkpoint is damaged: {detail}"),
        })?;
        let files = files::read_files(&dir)?;
        let recovered = replay(data, log, &files, ck, config.recovery)?;
        // Everything any file holds is now in sled or given up: a
        // checkpoint says so, and new records follow the newest LSN.
        let newest = recovered.newest.max(ck.lsn);
        let (number, file) = files::reuse_files(&dir, &files, config.file_bytes)?;
        let spare: Vec<(u32, PathBuf)> = files
            .iter()
            .filter(|f| f.number != number && files::usable(f, config.file_bytes))
            .map(|f| (f.number, f.path.clone()))
            .collect();
        drop(files);
        let value = checkpoint::encode(recovery::Checkpoint {
            lsn: newest,
            clean: false,
            active: Some(number),
            legacy: false,
        });
        log.insert(keys::META_WAL_CHECKPOINT, &value)
            .map_err(|e| StoreError::sled("checkpoint", e))?;
        db.flush()
            .map_err(|e| StoreError::sled("flush after recovery", e))?;
        let file = Arc::new(file);
        let shared = Arc::new(Shared {
            applied: AtomicU64::new(newest),
            written: AtomicU64::new(newest),
            synced: AtomicU64::new(newest),
            active: Mutex::new((number, file.clone())),
            dirty: std::sync::atomic::AtomicBool::new(false),
        });
        let spare = Arc::new(Mutex::new(spare));
        let (tx, rx) = channel();
        let checkpointer = {
            let ck = checkpoint::Checkpointer {
                every: config.checkpoint_every,
                db: db.clone(),
                log: log.clone(),
                spare: spare.clone(),
                shared: shared.clone(),
                failed: failed.clone(),
                space,
            };
            std::thread::Builder::new()
                .name("liaison-store-ckpt".into())
                .spawn(move || checkpoint::run(&ck, &rx))
                .map_err(|e| StoreError::io("starting the checkpointer thread", e))?
        };
        let wal = Wal {
            dir,
            file_bytes: config.file_bytes,
            file,
            number,
            offset: FILE_HEADER as u64,
            next_lsn: newest + 1,
            shared,
            spare,
            checkpoints: Some(tx),
            checkpointer: Some(checkpointer),
            buf: Vec::new(),
            failed,
            faults,
        };
        Ok((wal, recovered))
    }

    /// What the flusher reports syncs to.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Writes `payload` as the next record (not synced: the flusher syncs
    /// the file returned, once for every group written meanwhile) and
    /// returns it with the record's LSN. Once the payload is applied,
    /// report it with [`Wal::applied`].
    ///
    /// # Errors
    /// When the write (or the start of the next file) fails; nothing was
    /// written then that a restart would replay, and the payload must not
    /// be applied.
    pub fn append(&mut self, payload: &[u8]) -> Result<(Arc<File>, u64), StoreError> {
        let frame_len = (frame::RECORD_HEADER + payload.len()) as u64;
        if self.offset > FILE_HEADER as u64
            && self.offset + frame_len + MARKER_ROOM > self.file_bytes
        {
            self.rotate()?;
        }
        let lsn = self.next_lsn;
        self.write_record(lsn, payload)?;
        Ok((self.file.clone(), lsn))
    }

    fn write_record(&mut self, lsn: u64, payload: &[u8]) -> Result<(), StoreError> {
        if injected(self.faults.as_deref(), Fault::WalWrite) {
            let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
            return Err(StoreError::io(
                self.path(self.number).display().to_string(),
                e,
            ));
        }
        self.buf.clear();
        let synced = self.shared.synced.load(Ordering::Acquire);
        frame::encode(lsn, synced, payload, &mut self.buf);
        self.file
            .write_all_at(&self.buf, self.offset)
            .map_err(|e| StoreError::io(self.path(self.number).display().to_string(), e))?;
        self.offset += self.buf.len() as u64;
        self.next_lsn = lsn + 1;
        self.shared.written.store(lsn, Ordering::Release);
        Ok(())
    }

    /// The batch of record `lsn` is applied to sled in full.
    pub fn applied(&self, lsn: u64) {
        self.shared.applied.store(lsn, Ordering::Release);
    }

    /// Asks for a checkpoint of everything applied so far; `replies` are
    /// answered once sled holds it on disk.
    pub fn checkpoint(&self, replies: Vec<Reply<()>>) {
        self.request(Request {
            retired: None,
            replies,
            closing: false,
        });
    }

    fn request(&self, request: Request) {
        if let Some(tx) = &self.checkpoints
            && let Err(std::sync::mpsc::SendError(c)) = tx.send(request)
        {
            for reply in c.replies {
                let _ = reply.send(Err(StoreError::Closed));
            }
        }
    }

    fn path(&self, number: u32) -> PathBuf {
        self.dir.join(format!("{number}.log"))
    }

    /// Goes on in a spare (checkpointed) file, or a new one: the next file
    /// exists before the full one's end marker names it, and the full one
    /// is on disk before anything is written to the next (a group published
    /// without a sync of its own then never leaves a gap before a synced
    /// one).
    ///
    /// # Errors
    /// When the next file cannot be made (the disk is full) or the full one
    /// cannot be synced; the full file is unchanged in the first case.
    fn rotate(&mut self) -> Result<(), StoreError> {
        let spare = lock(&self.spare).pop();
        let (number, path) = match spare {
            Some(s) => s,
            None => {
                let mut n = self.number + 1;
                while self.path(n).exists() {
                    n += 1;
                }
                debug!(file = n, "new write-ahead log file");
                (n, self.path(n))
            }
        };
        let next = match files::open_file(&path, self.file_bytes) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                if path.exists() && files::number_of(&path).is_some() {
                    lock(&self.spare).push((number, path));
                }
                return Err(e);
            }
        };
        let marker = Batch::next_file(&format!("{number}.log")).into_payload();
        let lsn = self.next_lsn;
        self.write_record(lsn, &marker)?;
        if let Err(e) = self.file.sync_data() {
            // What the file held unsynced may be lost: only a replay can
            // tell what is on disk.
            let e = StoreError::io(self.path(self.number).display().to_string(), e);
            lock(&self.failed).get_or_insert_with(|| e.clone());
            return Err(e);
        }
        self.applied(lsn);
        self.shared.synced_through(lsn);
        let retired = (
            self.number,
            self.path(self.number),
            std::mem::replace(&mut self.file, next.clone()),
            lsn,
        );
        self.number = number;
        *lock(&self.shared.active) = (number, next);
        self.offset = FILE_HEADER as u64;
        self.request(Request {
            retired: Some(retired),
            replies: Vec::new(),
            closing: false,
        });
        Ok(())
    }
}

impl Drop for Wal {
    /// A final checkpoint, so that a clean stop leaves nothing to replay;
    /// waits for the checkpointer.
    fn drop(&mut self) {
        self.request(Request {
            retired: None,
            replies: Vec::new(),
            closing: true,
        });
        self.checkpoints = None;
        if let Some(handle) = self.checkpointer.take() {
            let _ = handle.join();
        }
    }
}

/// What recovery would replay, without a database (see
/// `store::plan_wal_recovery`).
pub fn plan_only(
    files: Vec<(u32, Vec<u8>)>,
    checkpoint: Option<&[u8]>,
    mode: Mode,
) -> Result<Vec<u64>, String> {
    let files: Vec<recovery::WalFile> = files
        .into_iter()
        .map(|(number, bytes)| recovery::WalFile {
            number,
            path: PathBuf::from(format!("wal/{number}.log")),
            bytes,
        })
        .collect();
    let checkpoint = checkpoint::decode(checkpoint)
        .map_err(|detail| format!("the write-ahead log's checkpoint is damaged: {detail}"))?;
    let plan = recovery::plan(&files, checkpoint, mode).map_err(|d| d.to_string())?;
    for (_, payload) in plan.replay.iter().chain(&plan.discarded) {
        let _ = decode_ops(payload);
    }
    Ok(plan.replay.iter().map(|(lsn, _)| *lsn).collect())
}

/// Plans the recovery, applies what is to be replayed and reports it.
fn replay(
    data: &Path,
    log: &sled::Tree,
    files: &[recovery::WalFile],
    ck: recovery::Checkpoint,
    mode: Mode,
) -> Result<Recovered, StoreError> {
    let plan = recovery::plan(files, ck, mode).map_err(|d| StoreError::WalDamaged {
        file: data
            .join(&d.file)
            .canonicalize()
            .unwrap_or_else(|_| data.join(&d.file)),
        offset: d.offset,
        lsn: d.lsn,
        detail: d.detail,
    })?;
    for note in &plan.notes {
        info!("{note}");
    }
    let mut recovered = Recovered {
        through: ck.lsn,
        newest: plan.newest,
        maybe_acked_lost: plan.maybe_acked_lost,
        mode,
        ..Recovered::default()
    };
    for (lsn, payload) in &plan.replay {
        apply(log, payload)?;
        recovered.replayed += 1;
        recovered.through = *lsn;
    }
    for (_, payload) in plan.replay.iter().chain(&plan.discarded) {
        recovered.max_next_seq = recovered.max_next_seq.max(next_seq_in(payload));
    }
    for d in &plan.damage {
        recovered.damage.push(d.to_string());
    }
    if !plan.discarded.is_empty() && !plan.damage.is_empty() {
        let lsns: Vec<u64> = plan.discarded.iter().map(|(l, _)| *l).collect();
        recovered.damage.push(format!(
            "--wal-recovery {}: {} intact records not replayed (LSN {}..={})",
            mode.name(),
            lsns.len(),
            lsns.first().unwrap_or(&0),
            lsns.last().unwrap_or(&0)
        ));
    }
    for line in &recovered.damage {
        warn!(
            mode = mode.name(),
            "write-ahead log damage accepted: {line}"
        );
    }
    if recovered.replayed > 0 {
        info!(
            records = recovered.replayed,
            through = recovered.through,
            "replayed the write-ahead log"
        );
    }
    Ok(recovered)
}

/// The `next_seq` a payload sets, if it sets one (0 otherwise).
fn next_seq_in(payload: &[u8]) -> u64 {
    decode_ops(payload)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|op| match op {
            Op::Insert(k, v) if k == keys::META_NEXT_SEQ => keys::u64_value(v),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
