//! The durable store: the only module that touches sled.
//!
//! - The **log** holds every accepted alert by sequence number, with an id
//!   index (dedupe, get by id). Exactly one thread, the [writer](writer),
//!   changes it: it takes every pending command, writes the group to the
//!   [write-ahead log](wal), applies it, and a flusher thread syncs the WAL
//!   once for all groups waiting (group commit) before anyone is answered.
//! - **Feed state** (filter and cursor of durable feeds) is written directly;
//!   it becomes durable with the next checkpoint (at most a second). Losing
//!   the newest acks in a crash only means redelivery, which at-least-once
//!   allows.
//! - Committed records also go into a small in-memory cache of the newest
//!   records, so live feeds read them without decoding anything.
//!
//! Readers learn about new records through a `watch` of the head sequence:
//! the channel only wakes, the data is always read from the store.

mod journal;
mod keys;
mod outbox;
mod recent;
mod wal;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};

use crate::alert::{Alert, AlertId, Record, Seq, from_micros};
use crate::proto as pb;
pub use outbox::{OutboxLimits, OutboxStats, Outcome};
use recent::Recent;
pub use writer::{AppendKind, Appended, Meta, Pruned};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage failure: {0}")]
    Sled(#[from] sled::Error),
    #[error("the disk is full: {0}")]
    DiskFull(String),
    #[error("stored data is corrupt at {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("the store is closed")]
    Closed,
    #[error("storage failure: {0}")]
    Failed(String),
    #[error("alert.id: already used by another node's alert")]
    IdConflict,
    #[error(
        "the outbox is full ({alerts} alerts, {bytes} bytes waiting for the upstream link); nothing was stored"
    )]
    OutboxFull { alerts: u64, bytes: u64 },
}

impl StoreError {
    /// Whether the store refused for lack of room (a full disk or outbox):
    /// the caller may retry later; nothing was stored.
    pub fn is_resource_exhausted(&self) -> bool {
        matches!(
            self,
            StoreError::DiskFull(_) | StoreError::OutboxFull { .. }
        )
    }

    fn from_sled(e: sled::Error) -> Self {
        match &e {
            sled::Error::Io(io) if io.raw_os_error() == Some(28) => {
                StoreError::DiskFull(io.to_string())
            }
            _ => StoreError::Sled(e),
        }
    }
}

/// Persisted state of one durable feed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredFeed {
    #[prost(message, optional, tag = "1")]
    pub filter: Option<pb::Filter>,
    /// Every seq up to and including this one is acknowledged or unwanted.
    #[prost(uint64, tag = "2")]
    pub ack_floor: u64,
    /// Seqs above the floor that are acknowledged already.
    #[prost(uint64, repeated, tag = "3")]
    pub acked: Vec<u64>,
    #[prost(uint64, tag = "4")]
    pub created_us: u64,
    /// When the feed last received an acknowledgement (0: never).
    #[prost(uint64, tag = "5")]
    pub last_ack_us: u64,
}

/// Tuning of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// sled page cache.
    pub cache_bytes: u64,
    /// Most commands committed as one group.
    pub max_batch: usize,
    /// Bytes of decoded records kept in memory for live feeds.
    pub recent_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            cache_bytes: 256 * 1024 * 1024,
            max_batch: 4096,
            recent_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A cheap-to-clone handle to the store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    log: sled::Tree,
    feeds: sled::Tree,
    /// Requests to the writer thread, which holds the receiver. Bounded: when
    /// the disk cannot keep up, publishers wait here.
    writer: mpsc::Sender<writer::Command>,
    /// The newest committed seq; the writer holds the sender.
    head: watch::Receiver<Seq>,
    /// The counters as of the last commit; the writer holds the sender.
    meta: watch::Receiver<Meta>,
    /// Count of committed receipts; the writer holds the sender.
    receipts: watch::Receiver<u64>,
    /// Newest committed records. A std mutex: critical sections are a few
    /// pointer copies and never cross an `.await`.
    recent: Arc<Mutex<Recent>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts its writer thread.
    ///
    /// # Errors
    /// When sled cannot open the directory or the stored meta data is corrupt.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(config.cache_bytes)
            // Durability comes from the write-ahead log; sled is flushed at
            // its checkpoints, so sled's own background flusher only adds
            // I/O.
            .flush_every_ms(None)
            .open()
            .map_err(StoreError::from_sled)?;
        let log = db.open_tree("log")?;
        let feeds = db.open_tree("feeds")?;
        // Replays what a crash left in the write-ahead log before anything
        // reads the log.
        let failed = Arc::new(Mutex::new(None));
        let wal = wal::Wal::open(dir, &db, &log, failed.clone())?;
        let state = writer::State::load(&log)?;
        let (head_tx, head) = watch::channel(state.head());
        let (meta_tx, meta) = watch::channel(state.meta());
        let (receipts_tx, receipts) = watch::channel(0);
        let chain = journal::Chain::load(&log)?;
        let recent = Arc::new(Mutex::new(Recent::new(config.recent_bytes)));
        let (tx, rx) = mpsc::channel(config.max_batch * 2);
        let w = writer::Writer {
            log: log.clone(),
            wal: Some(wal),
            rx,
            outlet: Arc::new(writer::Outlet {
                head: head_tx,
                meta: meta_tx,
                recent: recent.clone(),
                receipts: receipts_tx,
            }),
            in_flusher: Arc::default(),
            state,
            max_batch: config.max_batch,
            failed,
            chain,
        };
        let thread = std::thread::Builder::new()
            .name("liaison-store-writer".into())
            .spawn(move || w.run())
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        Ok(Store {
            inner: Arc::new(Inner {
                log,
                feeds,
                writer: tx,
                head,
                meta,
                receipts,
                recent,
                writer_thread: Mutex::new(Some(thread)),
            }),
        })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> writer::Command,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .writer
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends a validated alert and answers once it is synced to disk, or
    /// with the original sequence if its id is already stored.
    ///
    /// # Errors
    /// On a storage failure (full disk included); nothing is stored then.
    pub async fn append(&self, alert: Alert) -> Result<Appended, StoreError> {
        self.submit(alert, AppendKind::Log).await?.await
    }

    /// Queues an append and returns the future of its answer. Appends are
    /// committed in the order they were submitted, so a caller that submits
    /// in order (one stream of one origin) gets sequences in that order while
    /// it waits for many acknowledgements at once.
    ///
    /// # Errors
    /// [`StoreError::Closed`] when the writer has stopped.
    pub async fn submit(
        &self,
        alert: Alert,
        kind: AppendKind,
    ) -> Result<impl std::future::Future<Output = Result<Appended, StoreError>> + use<>, StoreError>
    {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(writer::Command::Append { alert, kind, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(async move { rx.await.map_err(|_| StoreError::Closed)? })
    }

    /// Deletes the oldest records while they are older than `max_age` or the
    /// log is larger than `max_bytes`.
    ///
    /// # Errors
    /// On a storage failure.
    pub async fn prune(
        &self,
        max_age: Option<Duration>,
        max_bytes: Option<u64>,
    ) -> Result<Pruned, StoreError> {
        let cutoff = max_age.and_then(|age| SystemTime::now().checked_sub(age));
        let mut total = Pruned::default();
        loop {
            let chunk = self
                .call(|reply| writer::Command::Prune {
                    cutoff,
                    max_bytes,
                    reply,
                })
                .await?;
            if chunk.alerts == 0 {
                return Ok(total);
            }
            total.alerts += chunk.alerts;
            total.bytes += chunk.bytes;
            total.through = chunk.through;
        }
    }

    /// Flushes everything (feed state included) to disk.
    ///
    /// # Errors
    /// On a storage failure.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.call(|reply| writer::Command::Flush { reply }).await
    }

    /// The newest committed sequence (0 when empty).
    pub fn head(&self) -> Seq {
        *self.inner.head.borrow()
    }

    /// A receiver that changes whenever new records are committed.
    pub fn watch_head(&self) -> watch::Receiver<Seq> {
        self.inner.head.clone()
    }

    /// Reads the record with sequence `seq`.
    ///
    /// # Errors
    /// On a storage failure or a corrupt record.
    pub fn get(&self, seq: Seq) -> Result<Option<Arc<Record>>, StoreError> {
        // Past the head are records of a group being committed: not yet on
        // disk, so not yet visible.
        if seq > self.head() {
            return Ok(None);
        }
        if let Some(r) = self.recent().get(seq) {
            return Ok(Some(r));
        }
        self.inner
            .log
            .get(keys::alert(seq))?
            .map(|v| decode_record(seq, &v))
            .transpose()
    }

    /// Reads the record of an alert id.
    ///
    /// # Errors
    /// On a storage failure or a corrupt record.
    pub fn get_by_id(&self, id: &AlertId) -> Result<Option<Arc<Record>>, StoreError> {
        match self.inner.log.get(keys::id(id))? {
            Some(v) => {
                let (seq, _) = keys::parse_id_value(&v).ok_or_else(|| corrupt("id index", id))?;
                self.get(seq)
            }
            None => Ok(None),
        }
    }

    /// Up to `limit` records with sequence `from` or later, in order.
    ///
    /// # Errors
    /// On a storage failure or a corrupt record.
    pub fn scan(&self, from: Seq, limit: usize) -> Result<Vec<Arc<Record>>, StoreError> {
        let cached = self.recent().range(from, limit);
        if !cached.is_empty() && cached[0].seq == from {
            return Ok(cached);
        }
        let mut out = Vec::new();
        for kv in self
            .inner
            .log
            .range(keys::alert(from)..keys::alert(self.head().next()))
            .take(limit)
        {
            let (k, v) = kv?;
            let seq = keys::alert_seq(&k).ok_or_else(|| corrupt("alert key", format!("{k:?}")))?;
            out.push(decode_record(seq, &v)?);
        }
        Ok(out)
    }

    /// The oldest retained sequence, if any.
    ///
    /// # Errors
    /// On a storage failure.
    pub fn first_seq(&self) -> Result<Option<Seq>, StoreError> {
        let first = self
            .inner
            .log
            .range(keys::alert(Seq(0))..keys::alert(Seq(u64::MAX)))
            .next()
            .transpose()?;
        Ok(first.and_then(|(k, _)| keys::alert_seq(&k)))
    }

    /// The first sequence received at or after `t` (the next one to be
    /// assigned when there is none).
    ///
    /// # Errors
    /// On a storage failure.
    pub fn seq_at_time(&self, t: SystemTime) -> Result<Seq, StoreError> {
        // Receive times never decrease with the sequence and retention only
        // removes from the oldest end, so the retained records are a sorted,
        // gap-free run: a binary search needs no time index (one insert per
        // alert fewer on the hot path).
        let head = self.head();
        let Some(first) = self.first_seq()? else {
            return Ok(head.next());
        };
        let (mut lo, mut hi) = (first.0, head.0 + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = self
                .get(Seq(mid))?
                .ok_or_else(|| {
                    corrupt(
                        "alert",
                        format!("seq {mid} missing inside the retained run"),
                    )
                })?
                .received_at;
            if at < t {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(Seq(lo))
    }

    /// Loads the state of a durable feed.
    ///
    /// # Errors
    /// On a storage failure or corrupt state.
    pub fn load_feed(&self, owner: &str, name: &str) -> Result<Option<StoredFeed>, StoreError> {
        let key = keys::feed(owner, name);
        self.inner
            .feeds
            .get(&key)?
            .map(|v| StoredFeed::decode(v.as_ref()).map_err(|e| corrupt("feed", e)))
            .transpose()
    }

    /// Saves the state of a durable feed (durable with the next checkpoint).
    ///
    /// # Errors
    /// On a storage failure.
    pub fn save_feed(&self, owner: &str, name: &str, feed: &StoredFeed) -> Result<(), StoreError> {
        self.inner
            .feeds
            .insert(keys::feed(owner, name), feed.encode_to_vec())?;
        Ok(())
    }

    /// Every durable feed as (owner, name, state).
    ///
    /// # Errors
    /// On a storage failure or corrupt state.
    pub fn list_feeds(&self) -> Result<Vec<(String, String, StoredFeed)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.feeds.iter() {
            let (k, v) = kv?;
            let split = k
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| corrupt("feed key", format!("{k:?}")))?;
            let owner = String::from_utf8_lossy(&k[..split]).into_owned();
            let name = String::from_utf8_lossy(&k[split + 1..]).into_owned();
            out.push((
                owner,
                name,
                StoredFeed::decode(v.as_ref()).map_err(|e| corrupt("feed", e))?,
            ));
        }
        Ok(out)
    }

    /// Total encoded size of the retained alerts, in bytes.
    pub fn log_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.meta().bytes)
    }

    /// A receiver that changes whenever a commit changed the counters
    /// (outbox depth among them).
    pub fn watch_meta(&self) -> watch::Receiver<Meta> {
        self.inner.meta.clone()
    }

    /// The store's counters as of the last commit.
    pub fn meta(&self) -> Meta {
        *self.inner.meta.borrow()
    }

    /// Stops the writer after it has committed everything queued, and flushes.
    /// Idempotent; later calls that need the writer fail with `Closed`.
    ///
    /// # Errors
    /// When the final flush fails.
    pub async fn close(&self) -> Result<(), StoreError> {
        let flushed = self.flush().await;
        let handle = self
            .inner
            .writer_thread
            .lock()
            .map(|mut h| h.take())
            .unwrap_or(None);
        if let Some(handle) = handle {
            // Closing is rare; a blocking join in spawn_blocking keeps the
            // runtime free.
            let (stop, done) = oneshot::channel();
            let _ = self
                .inner
                .writer
                .send(writer::Command::Stop { done: stop })
                .await;
            let _ = done.await;
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        match flushed {
            Err(StoreError::Closed) => Ok(()),
            other => other,
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        // A poisoned lock only means another thread panicked mid-update of a
        // cache; the cache is rebuilt from the log on misses, so keep going.
        lock(&self.inner.recent)
    }
}

/// Locks a std mutex of the store. Its holders never leave the data half
/// changed (critical sections are a few pointer copies or a swap), so a
/// lock poisoned by a panic elsewhere still guards valid data.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what: what.to_owned(),
        detail: detail.to_string(),
    }
}

fn decode_record(seq: Seq, bytes: &[u8]) -> Result<Arc<Record>, StoreError> {
    let rec = pb::AlertRecord::decode(bytes).map_err(|e| corrupt(&format!("alert {seq}"), e))?;
    let body = rec
        .alert
        .ok_or_else(|| corrupt(&format!("alert {seq}"), "no alert"))?;
    let alert = Alert::from_stored(body).map_err(|e| corrupt(&format!("alert {seq}"), e))?;
    let received_at = rec
        .received_at
        .as_ref()
        .and_then(crate::alert::system_time)
        .unwrap_or_else(|| from_micros(0));
    Ok(Arc::new(Record {
        seq,
        received_at,
        alert,
    }))
}
