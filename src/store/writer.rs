//! The single writer of the log: group commit, pipelined.
//!
//! The writer thread blocks for one command, then takes every other command
//! already queued (up to `max_batch`, or 32 MiB of alerts), and commits the
//! group in four steps:
//!
//! 1. **collect** the commands;
//! 2. **stage** them: sequence numbers, receive times, dedupe, outbox and
//!    receipt changes, audit records and counters, all into one batch;
//! 3. **write ahead**: the batch becomes one record of the write-ahead log
//!    ([`super::wal`]), and only then is applied to sled (in memory);
//! 4. **hand off** the group to the flusher thread ([`super::flusher`]),
//!    which syncs the log once for every group waiting and only then makes
//!    them visible and answers their callers.
//!
//! While one group is being synced, the writer stages the next: the number
//! of fsyncs adapts to the load, never one per alert. Readers never see
//! past the published head, so an applied group is invisible until it is
//! durable. Dedicated threads (not `flush_async` from many tasks, which
//! deadlocks in sled 0.34) keep the blocking calls off the async runtime.
//!
//! A failed step never leaves half a group: a write-ahead that fails
//! (the disk is full) rolls the staged counters back and answers the group
//! with the error; the store goes on, and a retry may succeed once there is
//! room. A failure after which sled may hold part of a group that its
//! record cannot complete (an apply or a sync that fails) stops all writes
//! until the store is opened again, which replays the log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, warn};

use super::chain::Chain;
use super::codec::{decode_record, encode_record};
use super::command::{AppendKind, Appended, Batch, Command, Group, Pruned};
use super::error::{StoreError, corrupt};
use super::faults::{Fault, Faults, injected};
use super::flusher::{self, Outlet};
use super::meta::{self, State};
use super::seal::Seal;
use super::space::Space;
use super::wal::{self, Wal};
use super::{keys, lock, outbox, receipts};
use crate::alert::{Alert, AlertId, Record, Seq, from_micros, micros};
use crate::audit::AuditEvent;
use crate::proto as pb;

/// A group stops growing at this many bytes of alerts (besides
/// `max_batch` commands): it bounds the write-ahead record, the memory of a
/// group and the latency of its callers when alerts are large.
const GROUP_BYTES: usize = 32 * 1024 * 1024;

/// How many groups may wait for their sync: the writer stages the next
/// group while the flusher writes the previous one to disk.
const PIPELINE: usize = 2;

pub struct Writer {
    pub log: sled::Tree,
    /// Each group is written here before it is applied.
    pub wal: Option<Wal>,
    /// Commands; every `Store` handle holds a sender.
    pub rx: mpsc::Receiver<Command>,
    /// What readers see; handed to the flusher thread when the writer runs.
    pub outlet: Arc<Outlet>,
    /// Groups handed to the flusher and not yet answered by it.
    pub in_flusher: Arc<AtomicUsize>,
    pub state: State,
    pub max_batch: usize,
    /// Set when a failure stopped the store's writes (by the writer, the
    /// flusher or the checkpointer): every later command is refused.
    pub failed: Arc<Mutex<Option<StoreError>>>,
    /// The head of the audit chain.
    pub chain: Chain,
    pub space: Arc<Space>,
    /// Whether alerts are accepted, for readers; shared with the handle.
    pub writes: Arc<watch::Sender<super::Writes>>,
    pub faults: Option<Arc<Faults>>,
    /// Seals what the store writes (clear when it is not encrypted).
    pub seal: Seal,
}

impl Writer {
    pub fn run(mut self) {
        let (to_flusher, jobs) = std::sync::mpsc::sync_channel(PIPELINE);
        let flusher = {
            let (outlet, failed, in_flusher) = (
                self.outlet.clone(),
                self.failed.clone(),
                self.in_flusher.clone(),
            );
            let synced = self.wal.as_ref().map(Wal::shared);
            let faults = self.faults.clone();
            std::thread::Builder::new()
                .name("liaison-store-flush".into())
                .spawn(move || {
                    flusher::run(
                        &jobs,
                        &outlet,
                        &failed,
                        &in_flusher,
                        synced,
                        faults.as_deref(),
                    )
                })
        };
        let flusher = match flusher {
            Ok(handle) => handle,
            Err(e) => {
                let e = StoreError::io("starting the store's flusher thread", e);
                error!(error = %e, "the store cannot write");
                *lock(&self.failed) = Some(e);
                self.refuse_until_stopped();
                return;
            }
        };
        let mut stop = None;
        while let Some(commands) = self.collect() {
            stop = self.commit(commands, &to_flusher);
            self.report_writes();
            if stop.is_some() {
                break;
            }
        }
        // Every applied group is synced and answered before the writer
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

    /// Step 1: blocks for a command, then takes what else is queued.
    fn collect(&mut self) -> Option<Vec<Command>> {
        let first = self.rx.blocking_recv()?;
        let mut bytes = first.weight();
        let mut commands = vec![first];
        while commands.len() < self.max_batch && bytes < GROUP_BYTES {
            match self.rx.try_recv() {
                Ok(cmd) => {
                    bytes += cmd.weight();
                    commands.push(cmd);
                }
                Err(_) => break,
            }
        }
        Some(commands)
    }

    /// Commits one group (steps 2 to 4); returns the stop request when the
    /// group held one.
    fn commit(
        &mut self,
        commands: Vec<Command>,
        to_flusher: &std::sync::mpsc::SyncSender<Group>,
    ) -> Option<oneshot::Sender<()>> {
        if let Some(cause) = lock(&self.failed).clone() {
            let refused = StoreError::Failed(Arc::new(cause));
            return refuse(commands, &refused);
        }
        // Every group is applied to sled, which may then write: a disk that
        // filled up underneath gets the ballast's room first.
        let _ = self.space.check(false);
        let (saved, saved_chain) = (self.state, self.chain.clone());
        let (mut group, stop) = self.stage(commands, &saved);
        if let Err(e) = self.write_ahead(&mut group) {
            error!(error = %e, alerts = group.replies.len(), "commit failed; nothing of the group was acknowledged");
            // Nothing of the group is stored: its sequence numbers, receive
            // times, counters and audit records are given back.
            self.state = saved;
            self.chain = saved_chain;
            group.fail(&e);
            return stop;
        }
        self.run_prunes(&mut group);
        if !group.flushes.is_empty()
            && let Some(wal) = &self.wal
        {
            // `Store::flush` promises everything on disk in sled, feed
            // state included: a checkpoint answers it.
            wal.checkpoint(std::mem::take(&mut group.flushes));
        }
        group.meta = self.state.meta;
        self.hand_off(group, to_flusher);
        stop
    }

    /// Step 2: turns the commands into one group.
    fn stage(
        &mut self,
        commands: Vec<Command>,
        before: &State,
    ) -> (Group, Option<oneshot::Sender<()>>) {
        let mut group = Group {
            commands: commands.len(),
            ..Group::default()
        };
        self.state.reserve(self.max_batch as u64);
        let mut stop = None;
        for cmd in commands {
            group.sync |= cmd.needs_sync();
            match cmd {
                Command::Append {
                    alert,
                    kind,
                    provenance,
                    reply,
                } => match self.stage_append(&mut group, alert, kind, provenance) {
                    Ok(appended) => group.replies.push((reply, appended)),
                    Err(e) => drop(reply.send(Err(e))),
                },
                Command::OutboxDone {
                    seqs,
                    outcome,
                    reply,
                } => {
                    let result =
                        outbox::finish(&self.log, &mut group, &mut self.state.meta, &seqs, outcome);
                    group.done.push((reply, result));
                }
                Command::Audit { event } => self.chain.stage(&mut group.batch, &event),
                Command::Receipt { receipts, reply } => {
                    let result = receipts::stage(
                        &self.log,
                        &self.seal,
                        &mut group,
                        &mut self.chain,
                        &receipts,
                        &mut self.state.next_journal,
                    );
                    group.done.push((reply, result));
                }
                Command::Prune {
                    cutoff,
                    max_bytes,
                    reply,
                } => group.prunes.push((cutoff, max_bytes, reply)),
                Command::Flush { reply } => group.flushes.push(reply),
                Command::Stop { done } => stop = Some(done),
            }
        }
        self.audit_published(&mut group);
        meta::save(&self.state.meta, &before.meta, &mut group.batch);
        (group, stop)
    }

    /// Step 3: writes the group's batch to the write-ahead log, then
    /// applies it to the log tree.
    ///
    /// # Errors
    /// When the write fails (nothing of the group is stored) or the apply
    /// fails (the store then stops accepting writes).
    fn write_ahead(&mut self, group: &mut Group) -> Result<(), StoreError> {
        let batch = std::mem::take(&mut group.batch);
        let (file, lsn) = self.write_batch(batch)?;
        if let Some(file) = file {
            group.written(file, lsn);
        }
        Ok(())
    }

    /// Writes and applies one batch; an empty batch writes nothing.
    fn write_batch(
        &mut self,
        batch: Batch,
    ) -> Result<(Option<Arc<std::fs::File>>, u64), StoreError> {
        if batch.is_empty() {
            return Ok((None, 0));
        }
        let payload = batch.into_payload();
        let wal = self.wal.as_mut().ok_or(StoreError::Closed)?;
        // A write that fails wrote nothing a restart would replay (the WAL
        // stops the store's writes itself when a sync fails).
        let (file, lsn) = wal.append(&payload)?;
        let limit =
            injected(self.faults.as_deref(), Fault::Apply).then(|| wal::decode_len(&payload) / 2);
        if let Err(e) = wal::apply_some(&self.log, &payload, limit) {
            // Perhaps applied in part: only a replay of the log (at the next
            // open) can complete it. The record is written, so the group
            // may turn out stored although its callers were told it failed;
            // their retries are then recognised as duplicates.
            self.stop_writes(&e);
            return Err(e);
        }
        wal.applied(lsn);
        Ok((Some(file), lsn))
    }

    /// Prunes follow the group; they are answered with it, once durable.
    fn run_prunes(&mut self, group: &mut Group) {
        for (cutoff, max_bytes, reply) in std::mem::take(&mut group.prunes) {
            let result = self.prune(cutoff, max_bytes, group);
            group.pruned.push((reply, result));
        }
    }

    /// Step 4: gives the group to the flusher, or syncs it here when there
    /// is nothing to overlap with.
    fn hand_off(&mut self, group: Group, to_flusher: &std::sync::mpsc::SyncSender<Group>) {
        let synced = self.wal.as_ref().map(Wal::shared);
        if self.in_flusher.load(Ordering::Acquire) == 0 && self.rx.is_empty() {
            // Nothing waits to be staged, and every earlier group is
            // answered (the flusher has none in hand, so commit order
            // holds). Syncing here saves waking the flusher, which is most
            // of a lone publish's latency after the sync.
            flusher::sync_and_answer(
                vec![group],
                &self.outlet,
                &self.failed,
                synced.as_deref(),
                self.faults.as_deref(),
            );
            return;
        }
        self.in_flusher.fetch_add(1, Ordering::AcqRel);
        if let Err(std::sync::mpsc::SendError(group)) = to_flusher.send(group) {
            self.in_flusher.fetch_sub(1, Ordering::AcqRel);
            let e = StoreError::Io {
                what: "the store's flusher thread".into(),
                source: Arc::new(std::io::Error::other("it stopped")),
            };
            self.stop_writes(&e);
            group.fail(&e);
        }
    }

    /// Stops every later write (reads go on); the next open replays the log.
    fn stop_writes(&self, e: &StoreError) {
        error!(error = %e, "the store refuses further writes until the broker is restarted");
        {
            let mut failed = lock(&self.failed);
            if failed.is_none() {
                *failed = Some(e.clone());
            }
        }
        // Before anyone is answered: a caller told of the failure finds the
        // writes reported stopped.
        self.report_writes();
    }

    /// Tells readers (health, admin, metrics) whether alerts are accepted.
    fn report_writes(&self) {
        super::report_writes(&self.failed, &self.space, &self.writes);
    }

    fn stage_append(
        &mut self,
        group: &mut Group,
        alert: Alert,
        kind: AppendKind,
        provenance: Option<Arc<pb::Provenance>>,
    ) -> Result<Appended, StoreError> {
        if let Some((earlier, appended)) = group.earlier(&alert.id) {
            check_same_origin(earlier, &alert)?;
            return Ok(Appended {
                duplicate: true,
                ..appended
            });
        }
        if let Some(stored) = self.stored(&alert)? {
            return Ok(stored);
        }
        // A duplicate is answered even on a full disk; a new alert is not.
        self.space.check(false)?;
        let seq = self.state.meta.next_seq;
        // Receive times never decrease, so time order is sequence order.
        let us = micros(SystemTime::now()).max(self.state.last_received_us);
        let record = Record {
            seq,
            received_at: from_micros(us),
            alert,
            provenance,
        };
        let bytes = encode_record(&record);
        let size = bytes.len() as u64;
        match kind {
            AppendKind::Log => {}
            AppendKind::Inbox => self.state.meta.inbox += 1,
            AppendKind::Outbox(limits) => outbox::enqueue(
                &self.log,
                &self.seal,
                group,
                &mut self.state.meta,
                &record,
                size,
                limits,
            )?,
        }
        // Receipts of an import go back over its link; an agent's inbox
        // keeps provenance only to show it.
        if let Some(hop) = record
            .provenance
            .as_ref()
            .and_then(|p| p.path.last())
            .filter(|_| kind != AppendKind::Inbox)
        {
            group
                .batch
                .insert_sealed(&self.seal, keys::imported(&record.alert.id), hop.as_bytes());
        }
        group
            .batch
            .insert_sealed(&self.seal, keys::alert(seq), bytes);
        group
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
        group
            .ids
            .insert(record.alert.id, (appended, group.records.len()));
        group.records.push((Arc::new(record), size as usize));
        Ok(appended)
    }

    /// The original acknowledgement of an alert whose id is stored already.
    fn stored(&self, alert: &Alert) -> Result<Option<Appended>, StoreError> {
        let sled_err = |e| StoreError::sled("dedupe", e);
        let Some(v) = self.log.get(keys::id(&alert.id)).map_err(sled_err)? else {
            return Ok(None);
        };
        let (seq, us) = keys::parse_id_value(&v).ok_or_else(|| corrupt("id index", alert.id))?;
        match self.log.get(keys::alert(seq)).map_err(sled_err)? {
            Some(stored) => {
                check_same_origin(&decode_record(&self.seal, seq, &stored)?.alert, alert)?;
                Ok(Some(Appended {
                    seq,
                    received_at: from_micros(us),
                    duplicate: true,
                }))
            }
            // An index entry without its record: left by a group that never
            // became durable (a power cut while sled wrote in the
            // background), or by a prune. The alert is not stored.
            None => {
                warn!(id = %alert.id, seq = seq.0, "id index points to no record; storing the alert anew");
                Ok(None)
            }
        }
    }

    /// One `published` audit record per origin for the alerts this group
    /// accepts, in the same batch as the alerts (an alert is never accepted
    /// without its record; a record per alert would double the writes).
    fn audit_published(&mut self, group: &mut Group) {
        let mut by_origin: Vec<(String, Vec<(Seq, AlertId)>)> = Vec::new();
        for (record, _) in &group.records {
            let origin = record.alert.origin.to_string();
            let entry = (record.seq, record.alert.id);
            match by_origin.iter_mut().find(|(o, _)| *o == origin) {
                Some((_, list)) => list.push(entry),
                None => by_origin.push((origin, vec![entry])),
            }
        }
        for (origin, list) in by_origin {
            self.chain
                .stage(&mut group.batch, &AuditEvent::published(origin, &list));
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
        group: &mut Group,
    ) -> Result<Pruned, StoreError> {
        let cutoff_us = cutoff.map(micros);
        let keep_from = outbox::oldest_seq(&self.log)?.unwrap_or(Seq(u64::MAX));
        let mut batch = Batch::default();
        let mut pruned = Pruned::default();
        for kv in self
            .log
            .range(keys::alert(Seq(0))..keys::alert(keep_from))
            .take(1024)
        {
            let (k, v) = kv.map_err(|e| StoreError::sled("prune", e))?;
            let seq = keys::alert_seq(&k).ok_or_else(|| corrupt("alert key", format!("{k:?}")))?;
            let record = decode_record(&self.seal, seq, &v)?;
            let too_old = cutoff_us.is_some_and(|c| micros(record.received_at) < c);
            let too_big =
                max_bytes.is_some_and(|m| self.state.meta.bytes.saturating_sub(pruned.bytes) > m);
            if !(too_old || too_big) {
                break;
            }
            batch.remove(&k);
            batch.remove(keys::id(&record.alert.id));
            pruned.alerts += 1;
            pruned.bytes += v.len().saturating_sub(self.seal.overhead()) as u64;
            pruned.through = Some(seq);
        }
        let Some(through) = pruned.through else {
            return Ok(pruned);
        };
        let before = self.state.meta;
        self.state.meta.bytes = self.state.meta.bytes.saturating_sub(pruned.bytes);
        meta::save(&self.state.meta, &before, &mut batch);
        match self.write_batch(batch) {
            Ok((file, lsn)) => {
                if let Some(file) = file {
                    group.written(file, lsn);
                }
            }
            Err(e) => {
                self.state.meta = before;
                return Err(e);
            }
        }
        lock(&self.outlet.recent).forget_through(through);
        Ok(pruned)
    }

    /// Answers every command with the failure that stopped the writes,
    /// until a stop request comes.
    fn refuse_until_stopped(&mut self) {
        while let Some(commands) = self.collect() {
            let cause = lock(&self.failed).clone();
            let e = StoreError::Failed(Arc::new(cause.unwrap_or(StoreError::Closed)));
            if let Some(done) = refuse(commands, &e) {
                let _ = done.send(());
                return;
            }
        }
    }
}

/// Answers every command of a group with `e`; returns the stop request
/// when the group held one.
fn refuse(commands: Vec<Command>, e: &StoreError) -> Option<oneshot::Sender<()>> {
    let mut stop = None;
    for cmd in commands {
        if let Some(done) = cmd.refuse(|| e.clone()) {
            stop = Some(done);
        }
    }
    stop
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
