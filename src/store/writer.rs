//! The single writer of the log: group commit.
//!
//! The writer thread blocks for one command, then takes every other command
//! already queued (up to `max_batch`), turns all appends into one atomic sled
//! batch, applies it, flushes once, and only then answers every caller. While
//! it flushes, new commands queue up and form the next group, so the number
//! of fsyncs adapts to the load: one per group, never one per alert.
//! A dedicated thread (not `flush_async` from many tasks, which deadlocks in
//! sled 0.34) keeps sled's blocking calls off the async runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error};

use super::recent::Recent;
use super::{StoreError, corrupt, decode_record, keys};
use crate::alert::{Alert, AlertId, Record, Seq, from_micros, micros};

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

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

// Appends dominate the traffic; boxing them would add an allocation per alert.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    Append {
        alert: Alert,
        reply: Reply<Appended>,
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

/// The writer's view of the log, loaded at open.
pub struct State {
    next_seq: Seq,
    last_received_us: u64,
    bytes: u64,
}

impl State {
    pub fn load(log: &sled::Tree) -> Result<State, StoreError> {
        let meta = |k: &[u8]| -> Result<u64, StoreError> {
            Ok(log.get(k)?.and_then(|v| keys::u64_value(&v)).unwrap_or(0))
        };
        let mut next_seq = Seq(meta(keys::META_NEXT_SEQ)?.max(1));
        let mut last_received_us = 0;
        if let Some((k, v)) = log
            .range(keys::alert(Seq(0))..keys::alert(Seq(u64::MAX)))
            .next_back()
            .transpose()?
        {
            let seq = keys::alert_seq(&k).ok_or_else(|| corrupt("alert key", format!("{k:?}")))?;
            next_seq = next_seq.max(seq.next());
            last_received_us = micros(decode_record(seq, &v)?.received_at);
        }
        Ok(State {
            next_seq,
            last_received_us,
            bytes: meta(keys::META_BYTES)?,
        })
    }

    pub fn head(&self) -> Seq {
        Seq(self.next_seq.0 - 1)
    }
}

pub struct Writer {
    pub db: sled::Db,
    pub log: sled::Tree,
    pub rx: mpsc::Receiver<Command>,
    pub head: watch::Sender<Seq>,
    pub recent: Arc<Mutex<Recent>>,
    pub state: State,
    pub max_batch: usize,
}

/// Appends of one group, staged before the batch is applied.
struct Staged {
    batch: sled::Batch,
    records: Vec<(Arc<Record>, usize)>,
    replies: Vec<(Reply<Appended>, Appended)>,
    /// Ids staged in this group, for duplicates within the group.
    ids: HashMap<AlertId, Appended>,
}

impl Writer {
    pub fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(cmd) => group.push(cmd),
                    Err(_) => break,
                }
            }
            if self.commit(group) {
                break;
            }
        }
        debug!("store writer stopped");
    }

    /// Commits one group; true when a Stop was in it.
    fn commit(&mut self, group: Vec<Command>) -> bool {
        let mut staged = Staged {
            batch: sled::Batch::default(),
            records: Vec::new(),
            replies: Vec::new(),
            ids: HashMap::new(),
        };
        let mut flush_waiters = Vec::new();
        let mut prunes = Vec::new();
        let mut stop = None;
        let saved = (
            self.state.next_seq,
            self.state.last_received_us,
            self.state.bytes,
        );
        for cmd in group {
            match cmd {
                Command::Append { alert, reply } => match self.stage(&mut staged, alert) {
                    Ok(appended) => staged.replies.push((reply, appended)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Command::Prune {
                    cutoff,
                    max_bytes,
                    reply,
                } => prunes.push((cutoff, max_bytes, reply)),
                Command::Flush { reply } => flush_waiters.push(reply),
                Command::Stop { done } => stop = Some(done),
            }
        }
        if !staged.records.is_empty() || !staged.replies.is_empty() {
            staged
                .batch
                .insert(keys::META_NEXT_SEQ, &self.state.next_seq.0.to_be_bytes());
            staged
                .batch
                .insert(keys::META_BYTES, &self.state.bytes.to_be_bytes());
        }
        let result = self
            .log
            .apply_batch(staged.batch)
            .and_then(|()| self.db.flush().map(drop))
            .map_err(StoreError::from_sled);
        match result {
            Ok(()) => self.publish(staged.records, staged.replies),
            Err(e) => {
                error!(error = %e, alerts = staged.replies.len(), "commit failed; nothing acknowledged");
                (
                    self.state.next_seq,
                    self.state.last_received_us,
                    self.state.bytes,
                ) = saved;
                for (reply, _) in staged.replies {
                    let _ = reply.send(Err(clone_err(&e)));
                }
            }
        }
        for (cutoff, max_bytes, reply) in prunes {
            let _ = reply.send(self.prune(cutoff, max_bytes));
        }
        for reply in flush_waiters {
            let _ = reply.send(self.db.flush().map(drop).map_err(StoreError::from_sled));
        }
        match stop {
            Some(done) => {
                let _ = done.send(());
                true
            }
            None => false,
        }
    }

    fn stage(&mut self, staged: &mut Staged, alert: Alert) -> Result<Appended, StoreError> {
        if let Some(earlier) = staged.ids.get(&alert.id) {
            return Ok(Appended {
                duplicate: true,
                ..*earlier
            });
        }
        if let Some(v) = self
            .log
            .get(keys::id(&alert.id))
            .map_err(StoreError::from_sled)?
        {
            let (seq, us) =
                keys::parse_id_value(&v).ok_or_else(|| corrupt("id index", alert.id))?;
            return Ok(Appended {
                seq,
                received_at: from_micros(us),
                duplicate: true,
            });
        }
        let seq = self.state.next_seq;
        // Receive times never decrease, so time order is sequence order.
        let us = micros(SystemTime::now()).max(self.state.last_received_us);
        let record = Record {
            seq,
            received_at: from_micros(us),
            alert,
        };
        let bytes = encode_record(&record);
        staged.batch.insert(&keys::alert(seq), bytes.as_slice());
        staged
            .batch
            .insert(&keys::id(&record.alert.id), &keys::id_value(seq, us));
        staged.batch.insert(&keys::time(us, seq), &[]);
        self.state.next_seq = seq.next();
        self.state.last_received_us = us;
        self.state.bytes += bytes.len() as u64;
        let appended = Appended {
            seq,
            received_at: record.received_at,
            duplicate: false,
        };
        staged.ids.insert(record.alert.id, appended);
        staged.records.push((Arc::new(record), bytes.len()));
        Ok(appended)
    }

    /// Makes a committed group visible: cache, head, then the callers.
    fn publish(
        &mut self,
        records: Vec<(Arc<Record>, usize)>,
        replies: Vec<(Reply<Appended>, Appended)>,
    ) {
        if let Some((last, _)) = records.last() {
            let head = last.seq;
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            for (r, size) in records {
                recent.push(r, size);
            }
            drop(recent);
            self.head.send_replace(head);
        }
        for (reply, appended) in replies {
            let _ = reply.send(Ok(appended));
        }
    }

    fn prune(
        &mut self,
        cutoff: Option<SystemTime>,
        max_bytes: Option<u64>,
    ) -> Result<Pruned, StoreError> {
        let cutoff_us = cutoff.map(micros);
        let mut pruned = Pruned::default();
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            let mut bytes = 0;
            let mut through = None;
            for kv in self
                .log
                .range(keys::alert(Seq(0))..keys::alert(Seq(u64::MAX)))
                .take(1024)
            {
                let (k, v) = kv?;
                let seq =
                    keys::alert_seq(&k).ok_or_else(|| corrupt("alert key", format!("{k:?}")))?;
                let record = decode_record(seq, &v)?;
                let us = micros(record.received_at);
                let too_old = cutoff_us.is_some_and(|c| us < c);
                let too_big = max_bytes.is_some_and(|m| self.state.bytes - bytes > m);
                if !(too_old || too_big) {
                    break;
                }
                batch.remove(&k);
                batch.remove(&keys::id(&record.alert.id));
                batch.remove(&keys::time(us, seq));
                n += 1;
                bytes += v.len() as u64;
                through = Some(seq);
            }
            if n == 0 {
                return Ok(pruned);
            }
            let remaining = self.state.bytes - bytes;
            batch.insert(keys::META_BYTES, &remaining.to_be_bytes());
            self.log.apply_batch(batch).map_err(StoreError::from_sled)?;
            self.state.bytes = remaining;
            pruned.alerts += n;
            pruned.bytes += bytes;
            pruned.through = through;
            if let Some(seq) = through {
                self.recent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .forget_through(seq);
            }
        }
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
