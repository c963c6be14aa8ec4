//! The agent's outbox: alerts published locally that still have to be
//! forwarded upstream. An outbox entry is a key `o|class|seq` in the log tree,
//! written in the same atomic batch as the alert itself, so an acknowledged
//! local publish is always both stored and queued.
//!
//! Entries are read in key order: every priority entry (class 0: urgency
//! IMMEDIATE or severity EXTREME) before any routine one (class 1), and by
//! sequence — publish order — within a class. A priority UPDATE or CANCEL
//! promotes the routine entries it references, so it never overtakes them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use super::codec::decode_record;
use super::command::{Command, Group, Meta, OutboxLimits, Outcome};
use super::error::{StoreError, corrupt};
use super::seal::Seal;
use super::{Store, keys};
use crate::alert::{AlertId, Record, Seq};

pub const PRIORITY: u8 = 0;
pub const ROUTINE: u8 = 1;
const CLASSES: [u8; 2] = [PRIORITY, ROUTINE];

/// Outbox depth and the lifetime counters of an agent's store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub depth: u64,
    pub bytes: u64,
    /// Accept time of the oldest waiting alert.
    pub oldest: Option<SystemTime>,
    pub forwarded: u64,
    pub expired: u64,
    pub rejected: u64,
    pub inbox: u64,
}

fn range() -> std::ops::Range<[u8; 10]> {
    keys::outbox(PRIORITY, Seq(0))..keys::outbox(u8::MAX, Seq(u64::MAX))
}

/// Queues a record being appended (writer thread).
pub(super) fn enqueue(
    log: &sled::Tree,
    seal: &Seal,
    group: &mut Group,
    meta: &mut Meta,
    record: &Record,
    size: u64,
    limits: OutboxLimits,
) -> Result<(), StoreError> {
    if meta.outbox_count >= limits.max_alerts || meta.outbox_bytes + size > limits.max_bytes {
        return Err(StoreError::OutboxFull {
            alerts: meta.outbox_count,
            bytes: meta.outbox_bytes,
        });
    }
    let class = if record.alert.is_priority() {
        PRIORITY
    } else {
        ROUTINE
    };
    if class == PRIORITY {
        promote_references(log, seal, group, &record.alert.body.references)?;
    }
    group
        .batch
        .insert(keys::outbox(class, record.seq), size.to_be_bytes());
    group.outbox.insert(record.seq, (class, size));
    meta.outbox_count += 1;
    meta.outbox_bytes += size;
    Ok(())
}

/// Moves the routine entry of alert `id`, if it is still queued, to the
/// priority class (keeping its sequence, so its order is kept).
fn promote_references(
    log: &sled::Tree,
    seal: &Seal,
    group: &mut Group,
    references: &[String],
) -> Result<(), StoreError> {
    let mut pending: Vec<AlertId> = references.iter().filter_map(|r| r.parse().ok()).collect();
    let mut seen = HashSet::new();
    while let Some(id) = pending.pop() {
        if seen.len() >= 1024 || !seen.insert(id) {
            continue;
        }
        if let Some(seq) = promote(log, group, &id)? {
            // Follow the chain through the promoted alert's own references.
            let refs = match group.record_refs(seq) {
                Some(refs) => refs,
                None => match log.get(keys::alert(seq))? {
                    Some(bytes) => decode_record(seal, seq, &bytes)?
                        .alert
                        .body
                        .references
                        .clone(),
                    None => Vec::new(),
                },
            };
            pending.extend(refs.iter().filter_map(|r| r.parse::<AlertId>().ok()));
        }
    }
    Ok(())
}

/// Moves the routine entry of alert `id`, if it is still queued, to the
/// priority class (keeping its sequence, so its order is kept). Returns its
/// sequence when it was moved.
fn promote(log: &sled::Tree, group: &mut Group, id: &AlertId) -> Result<Option<Seq>, StoreError> {
    let seq = match group.seq_of(id) {
        Some(seq) => seq,
        None => match log.get(keys::id(id))? {
            Some(v) => {
                keys::parse_id_value(&v)
                    .ok_or_else(|| corrupt("id index", id))?
                    .0
            }
            None => return Ok(None),
        },
    };
    let size = match group.outbox.get(&seq) {
        Some((ROUTINE, size)) => Some(*size),
        Some(_) => None,
        None => log
            .get(keys::outbox(ROUTINE, seq))?
            .and_then(|v| keys::u64_value(&v))
            .filter(|_| !group.removed.contains(&seq)),
    };
    let Some(size) = size else {
        return Ok(None);
    };
    group.batch.remove(keys::outbox(ROUTINE, seq));
    group
        .batch
        .insert(keys::outbox(PRIORITY, seq), size.to_be_bytes());
    group.outbox.insert(seq, (PRIORITY, size));
    Ok(Some(seq))
}

/// Removes entries that left the outbox and counts how (writer thread).
/// Unknown or already removed sequences are ignored.
pub(super) fn finish(
    log: &sled::Tree,
    group: &mut Group,
    meta: &mut Meta,
    seqs: &[Seq],
    outcome: Outcome,
) -> Result<(), StoreError> {
    for seq in seqs {
        if group.removed.contains(seq) {
            continue;
        }
        let mut entry = group.outbox.get(seq).copied();
        for class in CLASSES {
            if entry.is_none() {
                entry = log
                    .get(keys::outbox(class, *seq))?
                    .and_then(|v| keys::u64_value(&v))
                    .map(|size| (class, size));
            }
        }
        let Some((class, size)) = entry else {
            continue;
        };
        group.batch.remove(keys::outbox(class, *seq));
        group.outbox.remove(seq);
        group.removed.insert(*seq);
        meta.outbox_count = meta.outbox_count.saturating_sub(1);
        meta.outbox_bytes = meta.outbox_bytes.saturating_sub(size);
        match outcome {
            Outcome::Forwarded => meta.forwarded += 1,
            Outcome::Expired => meta.expired += 1,
            Outcome::Rejected => meta.rejected += 1,
        }
    }
    Ok(())
}

/// The lowest sequence still in the outbox.
pub(super) fn oldest_seq(log: &sled::Tree) -> Result<Option<Seq>, StoreError> {
    let mut oldest: Option<Seq> = None;
    for class in CLASSES {
        let first = log
            .range(keys::outbox(class, Seq(0))..keys::outbox(class, Seq(u64::MAX)))
            .next()
            .transpose()?;
        if let Some(seq) = first.and_then(|(k, _)| keys::outbox_seq(&k)) {
            oldest = Some(oldest.map_or(seq, |o| o.min(seq)));
        }
    }
    Ok(oldest)
}

impl Store {
    /// Up to `limit` queued records in forwarding order (priority first,
    /// then publish order), leaving out those in `skip` (already in flight).
    ///
    /// # Errors
    /// On a storage failure or a corrupt entry.
    pub fn outbox_peek(
        &self,
        skip: &HashSet<Seq>,
        limit: usize,
    ) -> Result<Vec<Arc<Record>>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.log.range(range()) {
            let (k, _) = kv?;
            let seq =
                keys::outbox_seq(&k).ok_or_else(|| corrupt("outbox key", format!("{k:?}")))?;
            // Past the head: being committed right now, not yet acknowledged.
            if skip.contains(&seq) || seq > self.head() {
                continue;
            }
            let record = self.get(seq)?.ok_or_else(|| corrupt("outbox entry", seq))?;
            out.push(record);
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// Records that queued alerts left the outbox (forwarded, expired or
    /// rejected).
    ///
    /// # Errors
    /// On a storage failure.
    pub async fn outbox_done(&self, seqs: Vec<Seq>, outcome: Outcome) -> Result<(), StoreError> {
        self.call(|reply| Command::OutboxDone {
            seqs,
            outcome,
            reply,
        })
        .await
    }

    /// Depth of the outbox, age of its oldest alert and the counters.
    ///
    /// # Errors
    /// On a storage failure.
    pub fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let meta = self.meta();
        let oldest = match oldest_seq(&self.inner.log)? {
            Some(seq) => self.get(seq)?.map(|r| r.received_at),
            None => None,
        };
        Ok(OutboxStats {
            depth: meta.outbox_count,
            bytes: meta.outbox_bytes,
            oldest,
            forwarded: meta.forwarded,
            expired: meta.expired,
            rejected: meta.rejected,
            inbox: meta.inbox,
        })
    }
}
