//! What the writer thread is asked to do and what it builds from it: the
//! commands and their replies, the group being staged, its batch of log
//! changes, and the counters. The other store modules use these types; this
//! one uses no store module but [`super::error`] (which uses none), so
//! nothing circles back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::oneshot;

use super::error::StoreError;
use crate::alert::{Alert, AlertId, Record, Seq};
use crate::audit::AuditEvent;
use crate::proto as pb;
use crate::receipt::Receipt;

/// Where a command's answer goes.
pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

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

/// Bounds of an agent's outbox. The oldest alerts are never dropped to make
/// room: when full, new local publishes are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    pub max_alerts: u64,
    pub max_bytes: u64,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self {
            max_alerts: 1_000_000,
            max_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// How an outbox entry left the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged by the upstream broker.
    Forwarded,
    /// Its `expires` passed before it could be sent.
    Expired,
    /// Refused for good by the upstream broker.
    Rejected,
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

/// A request to the writer thread.
// Appends dominate the traffic; boxing them would add an allocation per alert.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    Append {
        alert: Alert,
        kind: AppendKind,
        /// Where an alert imported from a peer broker comes from.
        provenance: Option<Arc<pb::Provenance>>,
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
    /// Answered once everything committed so far is flushed in sled too.
    Flush {
        reply: Reply<()>,
    },
    Stop {
        done: oneshot::Sender<()>,
    },
}

impl Command {
    /// Roughly the bytes this command adds to a group's write-ahead record.
    pub fn weight(&self) -> usize {
        match self {
            Command::Append { alert, .. } => prost::Message::encoded_len(&alert.body),
            _ => 0,
        }
    }

    /// Whether somebody waits for this command to be on disk. Audit records
    /// and receipts nobody waits for (a feed's acks) are published without
    /// a sync of their own.
    pub fn needs_sync(&self) -> bool {
        match self {
            Command::Audit { .. } | Command::Stop { .. } => false,
            Command::Receipt { reply, .. } => !reply.is_closed(),
            _ => true,
        }
    }

    /// Answers the command with `err` (its stop request, if it is one, is
    /// returned instead).
    pub fn refuse(self, err: impl Fn() -> StoreError) -> Option<oneshot::Sender<()>> {
        match self {
            Command::Append { reply, .. } => drop(reply.send(Err(err()))),
            Command::OutboxDone { reply, .. }
            | Command::Flush { reply }
            | Command::Receipt { reply, .. } => drop(reply.send(Err(err()))),
            Command::Prune { reply, .. } => drop(reply.send(Err(err()))),
            Command::Audit { .. } => {}
            Command::Stop { done } => return Some(done),
        }
        None
    }
}

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
    /// Every sequence below this one may have been handed out: it is
    /// written ahead of use, so that a recovery that had to discard the
    /// newest records never gives a sequence number out twice.
    pub reserved_seq: Seq,
}

/// One change of the log tree, in its write-ahead log encoding:
/// `[1][klen u32 LE][key][vlen u32 LE][value]` for an insert,
/// `[2][klen u32 LE][key]` for a remove, `[3][len u32 LE][file name]` for
/// "the log goes on in this file" (no change to the tree).
#[derive(Default)]
pub struct Batch {
    bytes: Vec<u8>,
}

const INSERT: u8 = 1;
const REMOVE: u8 = 2;
const NEXT_FILE: u8 = 3;

/// One decoded operation of a [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    Insert(&'a [u8], &'a [u8]),
    Remove(&'a [u8]),
    NextFile(&'a [u8]),
}

/// A payload that does not decode as a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPayload(pub String);

impl Batch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.bytes.push(INSERT);
        put_bytes(&mut self.bytes, key.as_ref());
        put_bytes(&mut self.bytes, value.as_ref());
    }

    /// Inserts `value` sealed for `key` ([`Seal`](super::seal::Seal); as
    /// it is when the store is not encrypted), without a copy of its own.
    pub fn insert_sealed(
        &mut self,
        seal: &super::seal::Seal,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.bytes.push(INSERT);
        put_bytes(&mut self.bytes, key);
        let len_at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        seal.seal_into(super::seal::Tree::Log, key, value, &mut self.bytes);
        let len = u32::try_from(self.bytes.len() - len_at - 4).unwrap_or(u32::MAX);
        self.bytes[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.bytes.push(REMOVE);
        put_bytes(&mut self.bytes, key.as_ref());
    }

    /// The marker that ends a full write-ahead log file.
    pub fn next_file(name: &str) -> Batch {
        let mut b = Batch::default();
        b.bytes.push(NEXT_FILE);
        put_bytes(&mut b.bytes, name.as_bytes());
        b
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The encoded operations.
    pub fn into_payload(self) -> Vec<u8> {
        self.bytes
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values are bounded far below 4 GiB (alerts by the message
    // size limit).
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes every operation of a payload.
///
/// # Errors
/// When the payload is cut short or holds an unknown operation.
pub fn decode_ops(mut p: &[u8]) -> Result<Vec<Op<'_>>, BadPayload> {
    fn take<'a>(p: &mut &'a [u8]) -> Result<&'a [u8], BadPayload> {
        let bad = || BadPayload("an operation is cut short".into());
        let (len, rest) = p.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_le_bytes(*len) as usize;
        let bytes = rest.get(..len).ok_or_else(bad)?;
        *p = &rest[len..];
        Ok(bytes)
    }
    let mut ops = Vec::new();
    while let Some((&op, rest)) = p.split_first() {
        p = rest;
        ops.push(match op {
            INSERT => {
                let key = take(&mut p)?;
                Op::Insert(key, take(&mut p)?)
            }
            REMOVE => Op::Remove(take(&mut p)?),
            NEXT_FILE => Op::NextFile(take(&mut p)?),
            other => return Err(BadPayload(format!("unknown operation {other}"))),
        });
    }
    Ok(ops)
}

/// One group of commands on its way from the writer to its callers:
/// staged, written ahead, applied, synced (by the flusher) and answered.
#[derive(Default)]
pub struct Group {
    pub batch: Batch,
    /// Accepted alerts, with their encoded size.
    pub records: Vec<(Arc<Record>, usize)>,
    pub replies: Vec<(Reply<Appended>, Appended)>,
    /// Answers of the other commands, sent once the group is durable.
    pub done: Vec<(Reply<()>, Result<(), StoreError>)>,
    /// Flushes waiting for the group (answered by a checkpoint).
    pub flushes: Vec<Reply<()>>,
    /// Prunes to run after the group, then their answers.
    pub prunes: Vec<(Option<SystemTime>, Option<u64>, Reply<Pruned>)>,
    pub pruned: Vec<(Reply<Pruned>, Result<Pruned, StoreError>)>,
    /// Ids staged in this group (with their index in `records`), for
    /// duplicates within the group.
    pub ids: HashMap<AlertId, (Appended, usize)>,
    /// Outbox entries staged in this group: seq → (class, size).
    pub outbox: HashMap<Seq, (u8, u64)>,
    /// Outbox entries removed in this group.
    pub removed: HashSet<Seq>,
    /// Receipt keys staged in this group.
    pub receipts: HashSet<Vec<u8>>,
    /// Whether anybody waits for the group to be on disk.
    pub sync: bool,
    /// How many commands the group holds.
    pub commands: usize,
    /// The counters after this group (and the prunes that followed it).
    pub meta: Meta,
    /// The write-ahead log files its records went to, and the newest LSN.
    pub files: Vec<Arc<std::fs::File>>,
    pub lsn: u64,
}

impl Group {
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

    /// An earlier alert of this group with the same id.
    pub fn earlier(&self, id: &AlertId) -> Option<(&Alert, Appended)> {
        self.ids
            .get(id)
            .map(|(appended, i)| (&self.records[*i].0.alert, *appended))
    }

    /// Notes that a record of this group went to `file` with `lsn`.
    pub fn written(&mut self, file: Arc<std::fs::File>, lsn: u64) {
        if !self.files.iter().any(|f| Arc::ptr_eq(f, &file)) {
            self.files.push(file);
        }
        self.lsn = self.lsn.max(lsn);
    }

    /// Answers every caller waiting for this group with `e`: nothing of it
    /// was acknowledged.
    pub fn fail(self, e: &StoreError) {
        for (reply, _) in self.replies {
            let _ = reply.send(Err(e.clone()));
        }
        for (reply, _) in self.done {
            let _ = reply.send(Err(e.clone()));
        }
        for reply in self.flushes {
            let _ = reply.send(Err(e.clone()));
        }
        for (_, _, reply) in self.prunes {
            let _ = reply.send(Err(e.clone()));
        }
        for (reply, _) in self.pruned {
            let _ = reply.send(Err(e.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_decodes_to_what_was_encoded_and_garbage_is_refused() {
        let mut b = Batch::default();
        b.insert("a", "1");
        b.remove("b");
        b.insert("", "");
        let mut payload = b.into_payload();
        payload.extend(Batch::next_file("7.log").into_payload());
        assert_eq!(
            decode_ops(&payload).expect("decodes"),
            [
                Op::Insert(b"a", b"1"),
                Op::Remove(b"b"),
                Op::Insert(b"", b""),
                Op::NextFile(b"7.log")
            ]
        );
        assert!(decode_ops(&payload[..payload.len() - 1]).is_err());
        assert!(decode_ops(&[9]).is_err());
        assert!(decode_ops(&[1, 255, 255, 255, 255]).is_err());
    }
}
