//! The durable store: the only module that touches sled.
//!
//! - The **log** holds every accepted alert by sequence number, with an id
//!   index (dedupe, get by id), the agent's outbox, receipts, the audit
//!   chain and the counters. Exactly one thread, the [writer](writer),
//!   changes it: it takes every pending command, writes the group as one
//!   record of the [write-ahead log](wal), applies it, and the
//!   [flusher](flusher) syncs the log once for all groups waiting (group
//!   commit) before anyone is answered.
//! - **Feed state** (filter and cursor of durable feeds, [`feeds`]) is
//!   written directly; it becomes durable with the next checkpoint (at most
//!   a second), or at once with [`Store::flush`]. So is the state of
//!   federation links (export cursor and counters, [`links`]).
//! - Committed records also go into a small in-memory cache of the newest
//!   records ([`recent`]), so live feeds read them without decoding.
//!
//! Readers learn about new records through a `watch` of the head sequence:
//! the channel only wakes, the data is always read from the store.
//!
//! Modules, leaves first: [`error`] and [`command`] (the types everything
//! shares) import no other store module but `error`; [`keys`] (every key
//! layout) and [`codec`] (the stored record); [`meta`], [`space`],
//! [`chain`], [`receipts`], [`outbox`]; the [`wal`]; the [`writer`] and
//! the [`flusher`]; [`open`] (the steps before the writer starts); this
//! handle, with its reads in [`read`].

mod bundles;
mod chain;
mod codec;
mod command;
mod error;
mod faults;
mod feeds;
mod flusher;
mod keys;
mod links;
mod meta;
mod open;
mod outbox;
mod read;
mod receipts;
mod recent;
mod seal;
#[cfg(test)]
mod sealed_tests;
mod space;
pub mod vault;
mod wal;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use crate::alert::{Alert, Seq};
use crate::proto as pb;
pub use bundles::StoredBundle;
use command::Command;
pub use command::{AppendKind, Appended, Meta, OutboxLimits, Outcome, Pruned};
pub use error::StoreError;
pub use faults::{Fault, Faults};
pub use feeds::StoredFeed;
pub use links::StoredLink;
pub use open::panic_expected;
use open::{check_identity, open_sled, recovery_event, reserve_sequences, sled_guard};
pub use outbox::OutboxStats;
use recent::Recent;
pub use seal::Seal;
pub use space::free_bytes;
pub use vault::KeySource;
pub use wal::{Mode as WalRecovery, WalConfig};

/// Tuning of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// sled page cache.
    pub cache_bytes: u64,
    /// Most commands committed as one group.
    pub max_batch: usize,
    /// Bytes of decoded records kept in memory for live feeds.
    pub recent_bytes: usize,
    /// New alerts are refused while the disk has less free space than this
    /// (0: never).
    pub min_free_bytes: u64,
    /// The ballast kept in the data directory and released when the disk
    /// fills up underneath the store (module `space`; 0: none).
    pub ballast_bytes: u64,
    pub wal: WalConfig,
    /// Faults to inject (tests of the failure paths); `None` in service.
    pub faults: Option<Arc<Faults>>,
    /// What unlocks an encrypted store (`None`: the store is not
    /// encrypted, and one that is is refused); see [`vault`].
    pub key: Option<KeySource>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            cache_bytes: 256 * 1024 * 1024,
            max_batch: 4096,
            recent_bytes: 64 * 1024 * 1024,
            min_free_bytes: 256 * 1024 * 1024,
            ballast_bytes: 32 * 1024 * 1024,
            wal: WalConfig::default(),
            faults: None,
            key: None,
        }
    }
}

/// Whether the store accepts new alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writes {
    Accepting,
    /// Refused for now (the disk is below its reserve); accepted again once
    /// there is room, without a restart.
    Refused(String),
    /// Stopped by a failure the running store cannot repair; reads go on,
    /// and a restart (which replays the write-ahead log) is needed.
    Stopped(String),
}

impl std::fmt::Display for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Writes::Accepting => f.write_str("accepting"),
            Writes::Refused(why) => write!(f, "refused: {why}"),
            Writes::Stopped(why) => write!(f, "stopped: {why}"),
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
    /// Federation links' export cursors and counters ([`links`]).
    links: sled::Tree,
    /// Offline bundles imported or answered ([`bundles`]).
    bundles: sled::Tree,
    /// Shared with the write-ahead log's checkpointer: direct writes (feed
    /// and link state) mark it dirty, so the next checkpoint flushes them.
    wal_shared: Arc<wal::Shared>,
    /// Requests to the writer thread, which holds the receiver. Bounded: when
    /// the disk cannot keep up, publishers wait here.
    writer: mpsc::Sender<Command>,
    /// The newest committed seq; the writer holds the sender.
    head: watch::Receiver<Seq>,
    /// The counters as of the last commit; the writer holds the sender.
    meta: watch::Receiver<Meta>,
    /// Count of committed receipts; the writer holds the sender.
    receipts: watch::Receiver<u64>,
    /// Whether alerts are accepted; the writer (and
    /// [`Store::refresh_writes`]) send on `writes_tx`.
    writes: watch::Receiver<Writes>,
    writes_tx: Arc<watch::Sender<Writes>>,
    failed: Arc<Mutex<Option<StoreError>>>,
    space: Arc<space::Space>,
    /// Newest committed records. A std mutex: critical sections are a few
    /// pointer copies and never cross an `.await`.
    recent: Arc<Mutex<Recent>>,
    /// Opens what the store reads (clear when it is not encrypted).
    seal: Seal,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, recovers what the write-ahead
    /// log holds, and starts its writer thread.
    ///
    /// # Errors
    /// When sled cannot open the directory or its files are damaged, when
    /// the write-ahead log is damaged ([`StoreError::WalDamaged`], unless
    /// `config.wal.recovery` accepts it), or stored data is corrupt.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        // The key first: a store that cannot be unlocked is not touched.
        let seal = vault::unlock(dir, config.key.as_ref())?;
        if seal.is_encrypted() {
            vault::no_core_dumps();
        }
        let (db, log, feeds, links, bundles) = open_sled(dir, &config)?;
        check_identity(dir, &db, &log)?;
        let failed = Arc::new(Mutex::new(None));
        let space = Arc::new(space::Space::new(
            dir,
            config.min_free_bytes,
            config.ballast_bytes,
        ));
        let (wal, recovered) = sled_guard(dir, || {
            wal::Wal::open(
                dir,
                &db,
                &log,
                config.wal,
                failed.clone(),
                config.faults.clone(),
                space.clone(),
            )
        })?;
        let mut state = sled_guard(dir, || {
            meta::State::load(
                &log,
                &seal,
                recovered.maybe_acked_lost,
                recovered.max_next_seq,
            )
        })?;
        let loaded = state;
        reserve_sequences(&db, &log, &mut state, config.max_batch)?;
        let chain = sled_guard(dir, || chain::Chain::load(&log, &seal))?;
        let (head_tx, head) = watch::channel(state.head());
        let (meta_tx, meta) = watch::channel(state.meta);
        let (receipts_tx, receipts) = watch::channel(0);
        let (writes_tx, writes) = watch::channel(Writes::Accepting);
        let writes_tx = Arc::new(writes_tx);
        let recent = Arc::new(Mutex::new(Recent::new(config.recent_bytes)));
        let (tx, rx) = mpsc::channel(config.max_batch * 2);
        if let Some(event) = recovery_event(&recovered, &loaded) {
            // The first record of this run's audit trail.
            let _ = tx.try_send(Command::Audit { event });
        }
        let wal_shared = wal.shared();
        let w = writer::Writer {
            log: log.clone(),
            wal: Some(wal),
            rx,
            outlet: Arc::new(flusher::Outlet {
                head: head_tx,
                meta: meta_tx,
                recent: recent.clone(),
                receipts: receipts_tx,
                writes: writes_tx.clone(),
                space: space.clone(),
            }),
            in_flusher: Arc::default(),
            state,
            max_batch: config.max_batch,
            failed: failed.clone(),
            chain,
            space: space.clone(),
            writes: writes_tx.clone(),
            faults: config.faults.clone(),
            seal: seal.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("liaison-store-writer".into())
            .spawn(move || w.run())
            .map_err(|e| StoreError::io("starting the store's writer thread", e))?;
        Ok(Store {
            inner: Arc::new(Inner {
                log,
                feeds,
                links,
                bundles,
                wal_shared,
                writer: tx,
                head,
                meta,
                receipts,
                writes,
                recent,
                writer_thread: Mutex::new(Some(thread)),
                writes_tx,
                failed,
                space,
                seal,
            }),
        })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
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
        self.submit_with(alert, kind, None).await
    }

    /// As [`Store::submit`], with where the alert came from when it was
    /// imported from another state's broker (kept in its record). An import
    /// (`AppendKind::Log`) also names the peer its receipts go back to; an
    /// agent's inbox (`AppendKind::Inbox`) keeps the provenance only to
    /// show it.
    ///
    /// # Errors
    /// [`StoreError::Closed`] when the writer has stopped.
    pub async fn submit_with(
        &self,
        alert: Alert,
        kind: AppendKind,
        provenance: Option<pb::Provenance>,
    ) -> Result<impl std::future::Future<Output = Result<Appended, StoreError>> + use<>, StoreError>
    {
        let provenance = provenance.map(Arc::new);
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(Command::Append {
                alert,
                kind,
                provenance,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(async move { rx.await.map_err(|_| StoreError::Closed)? })
    }

    /// Something was written to sled outside the write-ahead log: the next
    /// checkpoint must flush it.
    fn mark_dirty(&self) {
        self.inner
            .wal_shared
            .dirty
            .store(true, std::sync::atomic::Ordering::Release);
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
                .call(|reply| Command::Prune {
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
        self.call(|reply| Command::Flush { reply }).await
    }

    /// The newest committed sequence (0 when empty).
    pub fn head(&self) -> Seq {
        *self.inner.head.borrow()
    }

    /// A receiver that changes whenever new records are committed.
    pub fn watch_head(&self) -> watch::Receiver<Seq> {
        self.inner.head.clone()
    }

    /// Whether the store accepts new alerts, and a receiver of changes.
    pub fn watch_writes(&self) -> watch::Receiver<Writes> {
        self.inner.writes.clone()
    }

    /// Measures free space now and tells readers whether alerts are
    /// accepted (a refusal for want of space otherwise lifts only at the
    /// next attempt to store one).
    pub fn refresh_writes(&self) {
        let _ = self.inner.space.check(true);
        report_writes(&self.inner.failed, &self.inner.space, &self.inner.writes_tx);
    }

    /// Free bytes on the data directory's disk now, and the reserve.
    pub fn disk(&self) -> (Option<u64>, u64) {
        (
            free_bytes(self.inner.space.dir()).ok(),
            self.inner.space.reserve(),
        )
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

    /// Stops the writer after it has committed everything queued, and
    /// flushes. Idempotent; later calls that need the writer fail with
    /// `Closed`. A final flush that fails is logged, not returned: every
    /// acknowledged alert is in the write-ahead log, which the next open
    /// replays.
    ///
    /// # Errors
    /// None as of now (see above).
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
            let _ = self.inner.writer.send(Command::Stop { done: stop }).await;
            let _ = done.await;
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        match flushed {
            Ok(()) | Err(StoreError::Closed) => {}
            Err(e) => warn!(
                error = %e,
                "the store could not be flushed as it closed; every acknowledged alert is in the \
                 write-ahead log, which the next start replays"
            ),
        }
        Ok(())
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        // A poisoned lock only means another thread panicked mid-update of a
        // cache; the cache is rebuilt from the log on misses, so keep going.
        lock(&self.inner.recent)
    }
}

/// What recovery would replay from write-ahead log files (`(number,
/// bytes)`) given the checkpoint key's value: the LSNs, or the damage that
/// refuses the open. For `cargo fuzz` and for looking at a copy of a data
/// directory; nothing is written.
///
/// # Errors
/// The damage, as the store would report it.
#[doc(hidden)]
pub fn plan_wal_recovery(
    files: Vec<(u32, Vec<u8>)>,
    checkpoint: Option<&[u8]>,
    mode: WalRecovery,
) -> Result<Vec<u64>, String> {
    wal::plan_only(files, checkpoint, mode)
}

/// Publishes whether alerts are accepted: not after a failure that stopped
/// the writes, nor while the disk is below its reserve.
fn report_writes(
    failed: &Mutex<Option<StoreError>>,
    space: &space::Space,
    tx: &watch::Sender<Writes>,
) {
    let now = match (lock(failed).clone(), space.refusal()) {
        (Some(e), _) => Writes::Stopped(e.to_string()),
        (None, Some(low)) => Writes::Refused(low.to_string()),
        (None, None) => Writes::Accepting,
    };
    tx.send_if_modified(|w| {
        let changed = *w != now;
        if changed {
            let (refused, stopped) = match &now {
                Writes::Accepting => (0.0, 0.0),
                Writes::Refused(_) => (1.0, 0.0),
                Writes::Stopped(_) => (0.0, 1.0),
            };
            metrics::gauge!(crate::metrics::WRITES_REFUSED, "reason" => "low_disk").set(refused);
            metrics::gauge!(crate::metrics::WRITES_REFUSED, "reason" => "stopped").set(stopped);
        }
        *w = now;
        changed
    });
}

/// Locks a std mutex of the store. Its holders never leave the data half
/// changed (critical sections are a few pointer copies or a swap), so a
/// lock poisoned by a panic elsewhere still guards valid data.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
