//! Checkpoints: the checkpointer thread flushes sled and records, in the
//! `mwal_checkpoint` key, the newest LSN whose batch sled now holds, the
//! file in use, and whether the store was closed cleanly. After a
//! checkpoint, the records up to its LSN are redundant, and a full file
//! whose records it covers is reused.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::error;

use super::frame::LSN_LIMIT;
use super::recovery::Checkpoint;
use crate::store::command::Reply;
use crate::store::error::StoreError;
use crate::store::{keys, lock};

/// How often sled is flushed when nothing asks for it, by default: bounds
/// what a crash can take of the state written outside the WAL (feed
/// cursors), and how much a restart replays.
pub const EVERY: Duration = Duration::from_secs(1);

/// What the appending side shares with the checkpointer and the flusher.
pub struct Shared {
    /// The newest LSN whose batch is fully applied to sled: what a
    /// checkpoint may cover. A batch that failed half-way stays above it,
    /// so the next open replays it whole.
    pub applied: AtomicU64,
    /// The newest LSN written to a file.
    pub written: AtomicU64,
    /// The newest LSN known to be on disk (synced).
    pub synced: AtomicU64,
    /// The file being appended to, and its number.
    pub active: Mutex<(u32, Arc<File>)>,
    /// Something was written to sled outside the write-ahead log (feed and
    /// link cursors) since the last checkpoint.
    pub dirty: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Records that everything through `lsn` is on disk.
    pub fn synced_through(&self, lsn: u64) {
        self.synced.fetch_max(lsn, Ordering::AcqRel);
    }
}

/// A request to the checkpointer.
pub struct Request {
    /// A full file that may be reused once a checkpoint through its last
    /// record (the LSN) is durable.
    pub retired: Option<(u32, PathBuf, Arc<File>, u64)>,
    pub replies: Vec<Reply<()>>,
    /// The last checkpoint of a clean stop.
    pub closing: bool,
}

/// The checkpoint key's value: LSN (u64 BE), state (1: closed cleanly),
/// the number of the file in use (u32 BE). A value of 8 bytes is the LSN
/// alone, as the first format wrote it.
pub fn encode(ck: Checkpoint) -> [u8; 13] {
    let mut v = [0u8; 13];
    v[..8].copy_from_slice(&ck.lsn.to_be_bytes());
    v[8] = u8::from(ck.clean);
    v[9..].copy_from_slice(&ck.active.unwrap_or(0).to_be_bytes());
    v
}

/// Reads the checkpoint key's value (none: a new store).
///
/// # Errors
/// What is wrong with a value that neither format wrote: a length other
/// than 8 or 13 bytes, a state other than 0 or 1, an LSN no log reaches.
/// Read as something else, it would replay too much or too little.
pub fn decode(v: Option<&[u8]>) -> Result<Checkpoint, String> {
    let ck = match v {
        None => Checkpoint {
            clean: true,
            ..Checkpoint::default()
        },
        Some(v) if v.len() == 13 => Checkpoint {
            lsn: u64::from_be_bytes(v[..8].try_into().unwrap_or_default()),
            clean: match v[8] {
                0 => false,
                1 => true,
                other => return Err(format!("its state is {other}, not 0 or 1")),
            },
            active: Some(u32::from_be_bytes(v[9..13].try_into().unwrap_or_default())),
            legacy: false,
        },
        Some(v) if v.len() == 8 => Checkpoint {
            lsn: u64::from_be_bytes(v.try_into().unwrap_or_default()),
            clean: false,
            active: None,
            legacy: true,
        },
        Some(v) => return Err(format!("it is {} bytes long, not 13 (or 8)", v.len())),
    };
    if ck.lsn >= LSN_LIMIT {
        return Err(format!("its LSN {} is past any a log reaches", ck.lsn));
    }
    Ok(ck)
}

/// What the checkpointer thread works with (the store holds the other
/// ends: the writer sends [`Request`]s, readers share the database).
pub struct Checkpointer {
    pub every: Duration,
    pub db: sled::Db,
    pub log: sled::Tree,
    /// Checkpointed files go here for reuse.
    pub spare: Arc<Mutex<Vec<(u32, PathBuf)>>>,
    pub shared: Arc<Shared>,
    pub failed: Arc<Mutex<Option<StoreError>>>,
    /// Measured before each flush (the ballast gives sled room on a disk
    /// that filled up).
    pub space: Arc<crate::store::space::Space>,
}

/// The checkpointer thread: on request (and every `every`) records the
/// newest fully applied LSN and flushes sled; returns checkpointed files to
/// `spare`.
///
/// Before flushing it syncs the WAL files: sled's flush also writes
/// whatever part of a group the writer is applying at that moment, and that
/// group's record (written before it was applied) must then be on disk too,
/// so that a power cut cannot leave part of a group without the record
/// that completes it.
pub fn run(ck: &Checkpointer, rx: &Receiver<Request>) {
    let Checkpointer {
        every,
        db,
        log,
        spare,
        shared,
        failed,
        space,
    } = ck;
    let every = *every;
    let mut recorded: Option<[u8; 13]> = None;
    let mut flushed_through = None;
    loop {
        let mut requests = match rx.recv_timeout(every) {
            Ok(c) => vec![c],
            Err(RecvTimeoutError::Timeout) => Vec::new(),
            Err(RecvTimeoutError::Disconnected) => return,
        };
        requests.extend(rx.try_iter());
        let through = shared.applied.load(Ordering::Acquire);
        // Nothing new since the last checkpoint: no flush. (Besides sparing
        // an idle disk, this keeps a full disk from failing a flush that had
        // nothing to write, after which sled refuses even some reads.)
        let dirty = shared.dirty.swap(false, Ordering::AcqRel);
        if requests.is_empty() && !dirty && flushed_through == Some(through) {
            continue;
        }
        let closing = requests.iter().any(|r| r.closing);
        let (number, active) = lock(&shared.active).clone();
        let value = encode(Checkpoint {
            lsn: through,
            // Clean only when nothing written is left unapplied.
            clean: closing && through == shared.written.load(Ordering::Acquire),
            active: Some(number),
            legacy: false,
        });
        let result = requests
            .iter()
            .filter_map(|c| c.retired.as_ref().map(|(_, _, f, _)| f))
            .chain(std::iter::once(&active))
            .try_for_each(|f| f.sync_data())
            .map_err(|e| StoreError::io("syncing the write-ahead log", e))
            .and_then(|()| {
                shared.synced_through(through);
                // A disk filled underneath: the ballast gives sled room.
                space.before_flush();
                if recorded != Some(value) {
                    log.insert(keys::META_WAL_CHECKPOINT, &value)
                        .map_err(|e| StoreError::sled("checkpoint", e))?;
                }
                db.flush()
                    .map_err(|e| StoreError::sled("checkpoint flush", e))
            })
            .map(drop);
        match &result {
            Ok(()) => {
                recorded = Some(value);
                flushed_through = Some(through);
            }
            Err(e) => {
                let mut f = lock(failed);
                if f.is_none() {
                    error!(error = %e, "checkpoint failed; the store refuses further writes until restarted");
                    *f = Some(e.clone());
                }
            }
        }
        for c in requests {
            // A full file is reused only once every record in it is covered.
            if result.is_ok()
                && let Some((number, path, _, last)) = c.retired
                && last <= through
            {
                lock(spare).push((number, path));
            }
            for reply in c.replies {
                let _ = reply.send(result.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_values_round_trip_and_old_ones_are_legacy() {
        let ck = Checkpoint {
            lsn: 77,
            clean: true,
            active: Some(3),
            legacy: false,
        };
        assert_eq!(decode(Some(&encode(ck))), Ok(ck));
        let old = decode(Some(&9u64.to_be_bytes())).unwrap();
        assert!(old.legacy && old.lsn == 9 && !old.clean);
        assert!(
            decode(None).unwrap().clean,
            "a new store has nothing to replay"
        );
    }

    #[test]
    fn a_checkpoint_value_neither_format_wrote_is_refused() {
        let ck = Checkpoint {
            lsn: 77,
            clean: true,
            active: Some(3),
            legacy: false,
        };
        let mut bad_state = encode(ck);
        bad_state[8] = 2;
        assert_eq!(
            decode(Some(&bad_state)),
            Err("its state is 2, not 0 or 1".into())
        );
        assert_eq!(
            decode(Some(&encode(ck)[..12])),
            Err("it is 12 bytes long, not 13 (or 8)".into())
        );
        // Found by the wal_recovery fuzz target: the LSN after this one
        // overflowed.
        let past = encode(Checkpoint {
            lsn: u64::MAX,
            ..ck
        });
        assert!(
            decode(Some(&past))
                .unwrap_err()
                .contains("past any a log reaches")
        );
        assert!(decode(Some(&u64::MAX.to_be_bytes())).is_err());
    }
}
