//! The single writer of the log: group commit, pipelined.
//!
//! The writer thread blocks for one command, then takes every other command
//! already queued (up to `max_batch`), turns them into one atomic sled batch
//! and applies it (in memory). A flusher thread then flushes it to disk and
//! only then makes it visible (head, counters, cache) and answers every
//! caller. While one group is being flushed, the writer applies the next, and
//! the flusher covers every group waiting with one flush: the number of
//! fsyncs adapts to the load, never one per alert, and the disk's latency
//! overlaps with the CPU work of the next group. Readers never see past the
//! published head, so an applied group is invisible until it is durable.
//! Dedicated threads (not `flush_async` from many tasks, which deadlocks in
//! sled 0.34) keep sled's blocking calls off the async runtime.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, warn};

use super::journal::{self, Chain};
use super::outbox::{self, OutboxLimits, Outcome};
use super::recent::Recent;
use super::wal::{self, Wal};
use super::{StoreError, corrupt, decode_record, keys, lock};
use crate::alert::{Alert, AlertId, Record, Seq, from_micros, micros};
use crate::audit::{AuditEvent, AuditKind};
use crate::receipt::Receipt;

/// The answer to an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: Seq,
    pub received_at: SystemTime,
    /// The id was already stored; nothing was written.
    pub duplicate: bool,
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub alerts: u64,
    pub bytes: u64,
    /// Newest removed sequence.
    pub through: Option<Seq>,
}

/// Where an appended alert goes besides the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendKind {
    /// Only the log (a broker's publish).
    Log,
    /// The log and the outbox, within these limits (an agent's local publish).
    Outbox(OutboxLimits),
    /// The log, counted as received from upstream (an agent's inbox).
    Inbox,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

// Appends dominate the traffic; boxing them would add an allocation per alert.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    Append {
        alert: Alert,
        kind: AppendKind,
        reply: Reply<Appended>,
    },
    OutboxDone {
        seqs: Vec<Seq>,
        outcome: Outcome,
        reply: Reply<()>,
    },
    /// Append an audit record; nobody waits for it.
    Audit {
        event: AuditEvent,
    },
    Receipt {
        receipts: Vec<Receipt>,
        reply: Reply<()>,
    },
    Prune {
        cutoff: Option<SystemTime>,
        max_bytes: Option<u64>,
        reply: Reply<Pruned>,
    },
    Flush {
        reply: Reply<()>,
    },
    Stop {
        done: oneshot::Sender<()>,
    },
}

impl Command {
    /// Roughly the bytes this command adds to a group's write-ahead record.
    fn weight(&self) -> usize {
        match self {
            Command::Append { alert, .. } => prost::Message::encoded_len(&alert.body),
            _ => 0,
        }
    }
}

/// A group stops growing at this many bytes of alerts (besides
/// `max_batch` commands): it bounds the write-ahead record, the memory of a
/// group and the latency of its callers when alerts are large.
const GROUP_BYTES: usize = 32 * 1024 * 1024;

/// Counters kept in `m…` keys of the log, written with every commit that
/// changes them (so they are exactly as durable as the alerts they count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    pub next_seq: Seq,
    pub bytes: u64,
    pub outbox_count: u64,
    pub outbox_bytes: u64,
    pub forwarded: u64,
    pub expired: u64,
    pub rejected: u64,
    pub inbox: u64,
}

const META_KEYS: [&[u8]; 8] = [
    keys::META_NEXT_SEQ,
    keys::META_BYTES,
    keys::META_OUTBOX_COUNT,
    keys::META_OUTBOX_BYTES,
    keys::META_FORWARDED,
    keys::META_EXPIRED,
    keys::META_REJECTED,
    keys::META_INBOX,
];

impl Meta {
    fn values(&self) -> [u64; 8] {
        [
            self.next_seq.0,
            self.bytes,
            self.outbox_count,
            self.outbox_bytes,
            self.forwarded,
            self.expired,
            self.rejected,
            self.inbox,
        ]
    }

    pub fn load(log: &sled::Tree) -> Result<Meta, StoreError> {
        let mut v = [0u64; 8];
        for (slot, key) in v.iter_mut().zip(META_KEYS) {
            *slot = log.get(key)?.and_then(|b| keys::u64_value(&b)).unwrap_or(0);
        }
        Ok(Meta {
            next_seq: Seq(v[0].max(1)),
            bytes: v[1],
            outbox_count: v[2],
            outbox_bytes: v[3],
            forwarded: v[4],
            expired: v[5],
            rejected: v[6],
            inbox: v[7],
        })
    }

    /// Adds to `batch` the keys whose value differs from `before`.
    fn save(&self, before: &Meta, batch: &mut wal::Batch) {
        for ((key, new), old) in META_KEYS.iter().zip(self.values()).zip(before.values()) {
            if new != old {
                batch.insert(*key, new.to_be_bytes());
            }
        }
    }
}

/// The writer's view of the log, loaded at open.
pub struct State {
    meta: Meta,
    last_received_us: u64,
}

impl State {
    pub fn load(log: &sled::Tree) -> Result<State, StoreError> {
        let mut meta = Meta::load(log)?;
        let mut last_received_us = 0;
        if let Some((k, v)) = log
            .range(keys::alert(Seq(0))..keys::alert(Seq(u64::MAX)))
            .next_back()
            .transpose()?
        {
            let seq = keys::alert_seq(&k).ok_or_else(|| corrupt("alert key", format!("{k:?}")))?;
            meta.next_seq = meta.next_seq.max(seq.next());
            last_received_us = micros(decode_record(seq, &v)?.received_at);
        }
        Ok(State {
            meta,
            last_received_us,
        })
    }

    pub fn head(&self) -> Seq {
        Seq(self.meta.next_seq.0 - 1)
    }

    pub fn meta(&self) -> Meta {
        self.meta
    }
}

pub struct Writer {
    pub log: sled::Tree,
    /// Each group is written here before it is applied.
    pub wal: Option<Wal>,
    pub rx: mpsc::Receiver<Command>,
    /// What readers see; handed to the flusher thread when the writer runs.
    pub outlet: Arc<Outlet>,
    /// Groups handed to the flusher and not yet answered by it.
    pub in_flusher: Arc<AtomicUsize>,
    pub state: State,
    pub max_batch: usize,
    /// Set when a commit failed (by the writer or the flusher): every later
    /// command is refused.
    pub failed: Arc<Mutex<Option<String>>>,
    /// The head of the audit chain.
    pub chain: Chain,
}

/// The watch senders and the cache through which committed groups become
/// visible to readers. Only the flusher thread uses them, in commit order.
pub struct Outlet {
    pub head: watch::Sender<Seq>,
    /// The counters, for readers (`Store::meta`).
    pub meta: watch::Sender<Meta>,
    pub recent: Arc<Mutex<Recent>>,
    /// Bumped when receipts are committed; readers hold receivers.
    pub receipts: watch::Sender<u64>,
}

/// A group applied to sled (in memory), waiting for the flush that makes it
/// durable; nobody is answered before that.
struct Applied {
    /// The counters after this group (and the prunes that followed it).
    meta: Meta,
    receipts: u64,
    records: Vec<(Arc<Record>, usize)>,
    replies: Vec<(Reply<Appended>, Appended)>,
    done: Vec<(Reply<()>, Result<(), StoreError>)>,
    flush_waiters: Vec<Reply<()>>,
    pruned: Vec<(Reply<Pruned>, Result<Pruned, StoreError>)>,
    commands: usize,
    /// The write-ahead log files this group's records went to.
    files: Vec<Arc<File>>,
    /// Whether somebody waits for the group to be durable.
    sync: bool,
}

/// How many applied groups may wait for their flush: the writer applies the
/// next group while the flusher writes the previous one to disk.
const PIPELINE: usize = 2;

/// Appends of one group, staged before the batch is applied.
pub(super) struct Staged {
    pub batch: wal::Batch,
    records: Vec<(Arc<Record>, usize)>,
    replies: Vec<(Reply<Appended>, Appended)>,
    /// Ids staged in this group (with their index in `records`), for
    /// duplicates within the group.
    ids: HashMap<AlertId, (Appended, usize)>,
    /// Outbox entries staged in this group: seq → (class, size).
    pub outbox: HashMap<Seq, (u8, u64)>,
    /// Outbox entries removed in this group.
    pub removed: HashSet<Seq>,
    /// Receipt keys staged in this group.
    pub receipts: HashSet<Vec<u8>>,
}

impl Staged {
    /// The sequence of an alert staged in this group.
    pub fn seq_of(&self, id: &AlertId) -> Option<Seq> {
        self.ids.get(id).map(|(a, _)| a.seq)
    }

    /// The references of an alert staged in this group.
    pub fn record_refs(&self, seq: Seq) -> Option<Vec<String>> {
        self.records
            .iter()
            .find(|(r, _)| r.seq == seq)
            .map(|(r, _)| r.alert.body.references.clone())
    }
}

impl Writer {
    pub fn run(mut self) {
        let (to_flusher, jobs) = std::sync::mpsc::sync_channel(PIPELINE);
        let flusher = {
            let failed = self.failed.clone();
            let outlet = self.outlet.clone();
            let in_flusher = self.in_flusher.clone();
            std::thread::Builder::new()
                .name("liaison-store-flush".into())
                .spawn(move || flush_loop(&jobs, &outlet, &failed, &in_flusher))
        };
        let flusher = match flusher {
            Ok(handle) => handle,
            Err(e) => {
                error!(error = %e, "cannot start the store's flusher thread");
                *lock(&self.failed) = Some(format!("no flusher thread: {e}"));
                // Refuse everything, answering each caller.
                while let Some(first) = self.rx.blocking_recv() {
                    if let Some(done) = refuse(vec![first], "no flusher thread") {
                        let _ = done.send(());
                        break;
                    }
                }
                return;
            }
        };
        let mut stop = None;
        while let Some(first) = self.rx.blocking_recv() {
            let mut bytes = first.weight();
            let mut group = vec![first];
            while group.len() < self.max_batch && bytes < GROUP_BYTES {
                match self.rx.try_recv() {
                    Ok(cmd) => {
                        bytes += cmd.weight();
                        group.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            stop = self.commit(group, &to_flusher);
            if stop.is_some() {
                break;
            }
        }
        // Every applied group is flushed and answered before the writer
        // reports that it stopped (the caller may reopen the directory).
        drop(to_flusher);
        let _ = flusher.join();
        // A final checkpoint: a clean stop leaves nothing to replay.
        drop(self.wal.take());
        if let Some(done) = stop {
            let _ = done.send(());
        }
        debug!("store writer stopped");
    }

    /// Stages and applies one group and hands it to the flusher; returns the
    /// stop request when the group held one.
    fn commit(
        &mut self,
        group: Vec<Command>,
        to_flusher: &std::sync::mpsc::SyncSender<Applied>,
    ) -> Option<oneshot::Sender<()>> {
        if let Some(reason) = lock(&self.failed).clone() {
            return refuse(group, &reason);
        }
        let mut staged = Staged {
            batch: wal::Batch::default(),
            records: Vec::new(),
            replies: Vec::new(),
            ids: HashMap::new(),
            outbox: HashMap::new(),
            removed: HashSet::new(),
            receipts: HashSet::new(),
        };
        let mut done = Vec::new();
        let mut flush_waiters = Vec::new();
        let mut prunes = Vec::new();
        let mut stop = None;
        let saved = (self.state.meta, self.state.last_received_us);
        let commands = group.len();
        // Whether anybody waits for this group to be on disk. A group of
        // audit records and of receipts nobody waits for (a feed's acks)
        // is published without a sync of its own: the next sync of the
        // same file, or the next checkpoint (at most a second), covers it.
        let mut sync = false;
        for cmd in group {
            sync |= match &cmd {
                Command::Audit { .. } | Command::Stop { .. } => false,
                Command::Receipt { reply, .. } => !reply.is_closed(),
                _ => true,
            };
            match cmd {
                Command::Append { alert, kind, reply } => {
                    match self.stage(&mut staged, alert, kind) {
                        Ok(appended) => staged.replies.push((reply, appended)),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Command::OutboxDone {
                    seqs,
                    outcome,
                    reply,
                } => {
                    let result = outbox::finish(
                        &self.log,
                        &mut staged,
                        &mut self.state.meta,
                        &seqs,
                        outcome,
                    );
                    done.push((reply, result));
                }
                Command::Audit { event } => self.chain.stage(&mut staged, &event),
                Command::Receipt { receipts, reply } => {
                    let result =
                        journal::stage_receipts(&self.log, &mut staged, &mut self.chain, &receipts);
                    done.push((reply, result));
                }
                Command::Prune {
                    cutoff,
                    max_bytes,
                    reply,
                } => prunes.push((cutoff, max_bytes, reply)),
                Command::Flush { reply } => flush_waiters.push(reply),
                Command::Stop { done } => stop = Some(done),
            }
        }
        self.audit_published(&mut staged);
        self.state.meta.save(&saved.0, &mut staged.batch);
        let mut files = Vec::new();
        if let Err(e) = self.write_ahead(staged.batch, &mut files) {
            // Perhaps written ahead, perhaps applied in part: the log can no
            // longer be trusted to match what was promised, so the store
            // refuses everything from now on. A restart replays whatever
            // reached the write-ahead log, so the group may turn out stored
            // although its callers were told it failed; their retries are
            // recognised as duplicates.
            error!(error = %e, alerts = staged.replies.len(), "commit failed; nothing acknowledged; the store refuses further writes until restarted");
            *lock(&self.failed) = Some(e.to_string());
            (self.state.meta, self.state.last_received_us) = saved;
            for (reply, _) in staged.replies {
                let _ = reply.send(Err(clone_err(&e)));
            }
            for (reply, _) in done {
                let _ = reply.send(Err(clone_err(&e)));
            }
            for (_, _, reply) in prunes {
                let _ = reply.send(Err(clone_err(&e)));
            }
            for reply in flush_waiters {
                let _ = reply.send(Err(clone_err(&e)));
            }
            return stop;
        }
        // Prunes follow the group; they are answered with it, once durable
        // and counted.
        let pruned = prunes
            .into_iter()
            .map(|(cutoff, max_bytes, reply)| (reply, self.prune(cutoff, max_bytes, &mut files)))
            .collect();
        if !flush_waiters.is_empty()
            && let Some(wal) = &self.wal
        {
            // `Store::flush` promises everything on disk in sled, feed
            // state included: a checkpoint answers it.
            wal.checkpoint(std::mem::take(&mut flush_waiters));
        }
        let applied = Applied {
            meta: self.state.meta,
            receipts: staged.receipts.len() as u64,
            records: staged.records,
            replies: staged.replies,
            done,
            flush_waiters,
            pruned,
            commands,
            files,
            sync,
        };
        if self.in_flusher.load(Ordering::Acquire) == 0 && self.rx.is_empty() {
            // Nothing to overlap with: nothing waits to be staged, and every
            // earlier group is answered (the flusher has none in hand, so
            // commit order holds). Syncing here saves waking the flusher,
            // which is most of a lone publish's latency after the sync.
            flush_groups(vec![applied], &self.outlet, &self.failed);
            return stop;
        }
        self.in_flusher.fetch_add(1, Ordering::AcqRel);
        if let Err(std::sync::mpsc::SendError(applied)) = to_flusher.send(applied) {
            self.in_flusher.fetch_sub(1, Ordering::AcqRel);
            let e = StoreError::Failed("the store's flusher thread stopped".into());
            *lock(&self.failed) = Some(e.to_string());
            fail(applied, &e);
        }
        stop
    }

    /// Writes a batch to the write-ahead log, then applies it to the log
    /// tree; notes the WAL file to sync.
    fn write_ahead(
        &mut self,
        batch: wal::Batch,
        files: &mut Vec<Arc<File>>,
    ) -> Result<(), StoreError> {
        let payload = batch.into_payload();
        let wal = self.wal.as_mut().ok_or(StoreError::Closed)?;
        let (file, lsn) = wal
            .append(&payload)
            .map_err(|e| StoreError::from_sled(sled::Error::Io(e)))?;
        if !files.iter().any(|f| Arc::ptr_eq(f, &file)) {
            files.push(file);
        }
        wal::apply(&self.log, &payload)?;
        if let Some(lsn) = lsn {
            wal.applied(lsn);
        }
        Ok(())
    }

    fn stage(
        &mut self,
        staged: &mut Staged,
        alert: Alert,
        kind: AppendKind,
    ) -> Result<Appended, StoreError> {
        if let Some(earlier) = staged.ids.get(&alert.id) {
            let (record, _) = &staged.records[earlier.1];
            check_same_origin(&record.alert, &alert)?;
            return Ok(Appended {
                duplicate: true,
                ..earlier.0
            });
        }
        if let Some(v) = self
            .log
            .get(keys::id(&alert.id))
            .map_err(StoreError::from_sled)?
        {
            let (seq, us) =
                keys::parse_id_value(&v).ok_or_else(|| corrupt("id index", alert.id))?;
            match self.log.get(keys::alert(seq))? {
                Some(stored) => {
                    check_same_origin(&decode_record(seq, &stored)?.alert, &alert)?;
                    return Ok(Appended {
                        seq,
                        received_at: from_micros(us),
                        duplicate: true,
                    });
                }
                // An index entry without its record: left by a group that
                // never became durable (a power cut while sled wrote in the
                // background), or by a prune. The alert is not stored.
                None => {
                    warn!(id = %alert.id, seq = seq.0, "id index points to no record; storing the alert anew")
                }
            }
        }
        let seq = self.state.meta.next_seq;
        // Receive times never decrease, so time order is sequence order.
        let us = micros(SystemTime::now()).max(self.state.last_received_us);
        let record = Record {
            seq,
            received_at: from_micros(us),
            alert,
        };
        let bytes = encode_record(&record);
        let size = bytes.len() as u64;
        match kind {
            AppendKind::Log => {}
            AppendKind::Inbox => self.state.meta.inbox += 1,
            AppendKind::Outbox(limits) => {
                outbox::enqueue(
                    &self.log,
                    staged,
                    &mut self.state.meta,
                    &record,
                    size,
                    limits,
                )?;
            }
        }
        staged.batch.insert(keys::alert(seq), bytes);
        staged
            .batch
            .insert(keys::id(&record.alert.id), keys::id_value(seq, us));
        self.state.meta.next_seq = seq.next();
        self.state.last_received_us = us;
        self.state.meta.bytes += size;
        let appended = Appended {
            seq,
            received_at: record.received_at,
            duplicate: false,
        };
        staged
            .ids
            .insert(record.alert.id, (appended, staged.records.len()));
        staged.records.push((Arc::new(record), size as usize));
        Ok(appended)
    }

    /// One `published` audit record per origin for the alerts this group
    /// accepts, in the same batch as the alerts (an alert is never accepted
    /// without its record; a record per alert would double the writes).
    fn audit_published(&mut self, staged: &mut Staged) {
        let mut by_origin: Vec<(String, Vec<(Seq, AlertId)>)> = Vec::new();
        for (record, _) in &staged.records {
            let origin = record.alert.origin.to_string();
            let entry = (record.seq, record.alert.id);
            match by_origin.iter_mut().find(|(o, _)| *o == origin) {
                Some((_, list)) => list.push(entry),
                None => by_origin.push((origin, vec![entry])),
            }
        }
        for (origin, list) in by_origin {
            let (alert, detail) = match list.as_slice() {
                [(seq, id)] => (Some(*id), format!("seq {seq}")),
                many => {
                    let items: Vec<String> =
                        many.iter().map(|(seq, id)| format!("{seq}:{id}")).collect();
                    (
                        None,
                        format!("{} alerts (seq:id) {}", many.len(), items.join(" ")),
                    )
                }
            };
            self.chain.stage(
                staged,
                &AuditEvent::new(AuditKind::Published, origin, alert, detail),
            );
        }
    }

    /// Removes up to 1024 of the oldest records while they are too old or
    /// the log too big — but never an alert still waiting in the outbox, nor
    /// anything after it. One chunk per command, so that publishes queued
    /// meanwhile are not held up by a long prune; `Store::prune` sends the
    /// next command until a chunk removes nothing.
    fn prune(
        &mut self,
        cutoff: Option<SystemTime>,
        max_bytes: Option<u64>,
        files: &mut Vec<Arc<File>>,
    ) -> Result<Pruned, StoreError> {
        let cutoff_us = cutoff.map(micros);
        let keep_from = outbox::oldest_seq(&self.log)?.unwrap_or(Seq(u64::MAX));
        let mut batch = wal::Batch::default();
        let mut pruned = Pruned::default();
        for kv in self
            .log
            .range(keys::alert(Seq(0))..keys::alert(keep_from))
            .take(1024)
        {
            let (k, v) = kv?;
            let seq = keys::alert_seq(&k).ok_or_else(|| corrupt("alert key", format!("{k:?}")))?;
            let record = decode_record(seq, &v)?;
            let us = micros(record.received_at);
            let too_old = cutoff_us.is_some_and(|c| us < c);
            let too_big =
                max_bytes.is_some_and(|m| self.state.meta.bytes.saturating_sub(pruned.bytes) > m);
            if !(too_old || too_big) {
                break;
            }
            batch.remove(&k);
            batch.remove(keys::id(&record.alert.id));
            // Stores written before the time index was dropped still hold one.
            batch.remove(keys::time(us, seq));
            pruned.alerts += 1;
            pruned.bytes += v.len() as u64;
            pruned.through = Some(seq);
        }
        let Some(through) = pruned.through else {
            return Ok(pruned);
        };
        let before = self.state.meta;
        self.state.meta.bytes = self.state.meta.bytes.saturating_sub(pruned.bytes);
        self.state.meta.save(&before, &mut batch);
        if let Err(e) = self.write_ahead(batch, files) {
            self.state.meta = before;
            *lock(&self.failed) = Some(e.to_string());
            return Err(e);
        }
        lock(&self.outlet.recent).forget_through(through);
        Ok(pruned)
    }
}

/// The flusher thread: takes every applied group waiting and flushes them
/// together.
fn flush_loop(
    jobs: &std::sync::mpsc::Receiver<Applied>,
    outlet: &Outlet,
    failed: &Mutex<Option<String>>,
    in_flusher: &AtomicUsize,
) {
    while let Ok(first) = jobs.recv() {
        let mut groups = vec![first];
        groups.extend(jobs.try_iter());
        let n = groups.len();
        flush_groups(groups, outlet, failed);
        // Only now may the writer answer a group itself.
        in_flusher.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Makes applied groups durable with one `fdatasync` of the write-ahead log
/// file(s) they went to, then makes them visible and answers their callers,
/// in commit order.
fn flush_groups(groups: Vec<Applied>, outlet: &Outlet, failed: &Mutex<Option<String>>) {
    let failure = lock(failed).clone();
    let result = match &failure {
        Some(reason) => Err(StoreError::Failed(format!(
            "an earlier commit failed ({reason}); restart the broker"
        ))),
        None => {
            let started = std::time::Instant::now();
            let mut files: Vec<&Arc<File>> = Vec::new();
            // A sync covers every earlier write to the same file; a full
            // file is synced before the next one is written to.
            for f in groups.iter().filter(|g| g.sync).flat_map(|g| &g.files) {
                if !files.iter().any(|seen| Arc::ptr_eq(seen, f)) {
                    files.push(f);
                }
            }
            let r = files
                .iter()
                .try_for_each(|f| f.sync_data())
                .map_err(|e| StoreError::from_sled(sled::Error::Io(e)));
            metrics::histogram!(crate::metrics::COMMIT_FLUSH_SECONDS)
                .record(started.elapsed().as_secs_f64());
            r
        }
    };
    match result {
        Ok(()) => {
            for group in groups {
                metrics::histogram!(crate::metrics::COMMIT_BATCH).record(group.commands as f64);
                publish(outlet, group);
            }
        }
        Err(e) => {
            if failure.is_none() {
                let alerts: usize = groups.iter().map(|g| g.replies.len()).sum();
                error!(error = %e, alerts, "flush failed; nothing acknowledged; the store refuses further writes until restarted");
                *lock(failed) = Some(e.to_string());
            }
            for group in groups {
                fail(group, &e);
            }
        }
    }
}

/// Makes a flushed group visible — counters, cache, head — then answers its
/// callers. Counters first: whoever is answered and asks for the status must
/// see its own write.
fn publish(outlet: &Outlet, group: Applied) {
    outlet.meta.send_if_modified(|m| {
        let changed = *m != group.meta;
        *m = group.meta;
        changed
    });
    if group.receipts > 0 {
        outlet.receipts.send_modify(|n| *n += group.receipts);
    }
    if let Some((last, _)) = group.records.last() {
        let head = last.seq;
        let mut recent = lock(&outlet.recent);
        for (r, size) in group.records {
            recent.push(r, size);
        }
        drop(recent);
        outlet.head.send_replace(head);
    }
    for (reply, appended) in group.replies {
        let _ = reply.send(Ok(appended));
    }
    for (reply, r) in group.done {
        let _ = reply.send(r);
    }
    for (reply, r) in group.pruned {
        let _ = reply.send(r);
    }
}

/// Answers every caller of a group that could not be made durable.
fn fail(group: Applied, e: &StoreError) {
    for (reply, _) in group.replies {
        let _ = reply.send(Err(clone_err(e)));
    }
    for (reply, _) in group.done {
        let _ = reply.send(Err(clone_err(e)));
    }
    for reply in group.flush_waiters {
        let _ = reply.send(Err(clone_err(e)));
    }
    for (reply, _) in group.pruned {
        let _ = reply.send(Err(clone_err(e)));
    }
}

/// A re-published id is a duplicate only when it comes from the same origin;
/// another node reusing an id is refused without revealing the original.
fn check_same_origin(stored: &Alert, new: &Alert) -> Result<(), StoreError> {
    if stored.origin == new.origin {
        Ok(())
    } else {
        Err(StoreError::IdConflict)
    }
}

/// Encodes a record as a `pb::AlertRecord` without cloning the alert body
/// (the body is the bulk of the bytes; `Record::to_proto` would copy it).
fn encode_record(record: &Record) -> Vec<u8> {
    use prost::encoding::{message, uint64};
    let received_at = crate::alert::timestamp(record.received_at);
    let body = &record.alert.body;
    let len = uint64::encoded_len(1, &record.seq.0)
        + message::encoded_len(2, &received_at)
        + message::encoded_len(3, body);
    let mut buf = Vec::with_capacity(len);
    uint64::encode(1, &record.seq.0, &mut buf);
    message::encode(2, &received_at, &mut buf);
    message::encode(3, body, &mut buf);
    buf
}

/// Answers every command of a group with the failure that stopped the writer;
/// returns the stop request when the group held one.
fn refuse(group: Vec<Command>, reason: &str) -> Option<oneshot::Sender<()>> {
    let err = || {
        StoreError::Failed(format!(
            "an earlier commit failed ({reason}); restart the broker"
        ))
    };
    let mut stop = None;
    for cmd in group {
        match cmd {
            Command::Append { reply, .. } => drop(reply.send(Err(err()))),
            Command::OutboxDone { reply, .. }
            | Command::Flush { reply }
            | Command::Receipt { reply, .. } => drop(reply.send(Err(err()))),
            Command::Audit { .. } => {}
            Command::Prune { reply, .. } => drop(reply.send(Err(err()))),
            Command::Stop { done } => stop = Some(done),
        }
    }
    stop
}

fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::DiskFull(s) => StoreError::DiskFull(s.clone()),
        other => StoreError::Failed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn encode_record_matches_the_protobuf_encoding() {
        let body = crate::proto::Alert {
            id: "0192b8a0-7d3c-7cc1-9a0e-3f1c2b4d5e6f".into(),
            headline: "x".repeat(300),
            origin: Some(crate::alert::origin_proto(
                &"urn:liaison:TJ:border-guard:ishkashim".parse().unwrap(),
            )),
            status: 1,
            category: 1,
            severity: 1,
            urgency: 1,
            marking: Some(crate::proto::Marking {
                tlp: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let record = Record {
            seq: Seq(77),
            received_at: from_micros(1_764_000_000_123_456),
            alert: Alert::from_stored(body).unwrap(),
        };
        assert_eq!(encode_record(&record), record.to_proto().encode_to_vec());
    }
}
