//! The audit chain and receipts in the store. Both are written only by the
//! writer thread, in the same batches as the events they record, so an
//! accepted publish and its audit record are committed together and the
//! chain has a single sequencer.

use std::time::SystemTime;

use prost::Message;

use super::writer::{Command, Staged};
use super::{Store, StoreError, corrupt, keys};
use crate::alert::{AlertId, from_micros, micros};
use crate::audit::{AuditEvent, AuditKind, AuditRecord};
use crate::receipt::{Receipt, ReceiptKind};

/// Value of a receipt key.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredReceipt {
    #[prost(uint64, tag = "1")]
    time_us: u64,
    #[prost(string, tag = "2")]
    note: String,
}

/// The head of the audit chain (writer thread).
pub struct Chain {
    next_seq: u64,
    prev_hash: Vec<u8>,
}

impl Chain {
    pub fn load(log: &sled::Tree) -> Result<Chain, StoreError> {
        let last = log
            .range(keys::audit(0)..keys::audit(u64::MAX))
            .next_back()
            .transpose()?;
        Ok(match last {
            Some((_, v)) => {
                let r = AuditRecord::decode(v.as_ref()).map_err(|e| corrupt("audit record", e))?;
                Chain {
                    next_seq: r.seq + 1,
                    prev_hash: r.hash,
                }
            }
            None => Chain {
                next_seq: 1,
                prev_hash: Vec::new(),
            },
        })
    }

    /// Adds the next record of the chain to the batch.
    pub fn stage(&mut self, staged: &mut Staged, event: &AuditEvent) {
        let record = AuditRecord::chain(
            self.next_seq,
            micros(SystemTime::now()),
            event,
            &self.prev_hash,
        );
        staged
            .batch
            .insert(keys::audit(record.seq), record.encode_to_vec());
        self.next_seq += 1;
        self.prev_hash = record.hash;
    }
}

/// Stages a receipt unless one exists already; true when it is new
/// (writer thread).
/// Stages the receipts that do not exist yet, and one audit record per
/// (kind, recipient, feed) among them (writer thread).
pub fn stage_receipts(
    log: &sled::Tree,
    staged: &mut Staged,
    chain: &mut Chain,
    receipts: &[Receipt],
) -> Result<(), StoreError> {
    let mut fresh: Vec<&Receipt> = Vec::new();
    for r in receipts {
        let key = keys::receipt(&r.alert, r.kind.code(), &r.recipient.to_string(), &r.feed);
        if staged.receipts.contains(&key) || log.contains_key(&key)? {
            continue;
        }
        let value = StoredReceipt {
            time_us: micros(r.at),
            note: r.note.clone(),
        };
        staged.batch.insert(key.as_slice(), value.encode_to_vec());
        staged.receipts.insert(key);
        fresh.push(r);
    }
    // Receipts of one acknowledgement share kind, recipient and feed.
    let mut groups: Vec<Vec<&Receipt>> = Vec::new();
    for r in fresh {
        match groups
            .iter_mut()
            .find(|g| g[0].kind == r.kind && g[0].recipient == r.recipient && g[0].feed == r.feed)
        {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    for group in groups {
        let first = group[0];
        let what = match first.kind {
            ReceiptKind::Delivered => format!("delivered; feed {}", feed_name(&first.feed)),
            ReceiptKind::Acknowledged => format!("acknowledged; note {:?}", first.note),
        };
        let (alert, detail) = match group.as_slice() {
            [one] => (Some(one.alert), what),
            many => {
                let ids: Vec<String> = many.iter().map(|r| r.alert.to_string()).collect();
                (
                    None,
                    format!("{what}; {} alerts {}", many.len(), ids.join(" ")),
                )
            }
        };
        chain.stage(
            staged,
            &AuditEvent::new(
                AuditKind::Receipt,
                first.recipient.to_string(),
                alert,
                detail,
            ),
        );
    }
    Ok(())
}

pub fn feed_name(feed: &str) -> &str {
    if feed.is_empty() { "(ephemeral)" } else { feed }
}

impl Store {
    /// Records an audit event (committed with the next group; the caller
    /// does not wait for the disk).
    pub async fn audit(&self, event: AuditEvent) {
        // Only fails when the store is closed, and then there is nothing
        // left to record into.
        let _ = self.inner.writer.send(Command::Audit { event }).await;
    }

    /// Records a receipt (and its audit record) unless the same receipt
    /// exists; answers the stored receipt once it is on disk.
    ///
    /// # Errors
    /// On a storage failure.
    pub async fn record_receipt(&self, receipt: Receipt) -> Result<Receipt, StoreError> {
        let (alert, kind, recipient, feed) = (
            receipt.alert,
            receipt.kind,
            receipt.recipient.clone(),
            receipt.feed.clone(),
        );
        self.call(|reply| Command::Receipt {
            receipts: vec![receipt],
            reply,
        })
        .await?;
        let key = keys::receipt(&alert, kind.code(), &recipient.to_string(), &feed);
        match self.inner.log.get(&key)? {
            Some(v) => decode_receipt(&key, &v),
            None => Err(corrupt("receipt", alert)),
        }
    }

    /// Records receipts without waiting for the disk (a feed's ack path).
    pub async fn record_receipts_nowait(&self, receipts: Vec<Receipt>) {
        if receipts.is_empty() {
            return;
        }
        let (reply, _) = tokio::sync::oneshot::channel();
        let _ = self
            .inner
            .writer
            .send(Command::Receipt { receipts, reply })
            .await;
    }

    /// Every receipt of an alert, oldest first.
    ///
    /// # Errors
    /// On a storage failure or a corrupt receipt.
    pub fn receipts(&self, alert: &AlertId) -> Result<Vec<Receipt>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.log.scan_prefix(keys::receipts_of(alert)) {
            let (k, v) = kv?;
            out.push(decode_receipt(&k, &v)?);
        }
        out.sort_by_key(|r| r.at);
        Ok(out)
    }

    /// A receiver that changes whenever receipts are committed.
    pub fn watch_receipts(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.receipts.clone()
    }

    /// How many audit records there are.
    ///
    /// # Errors
    /// On a storage failure.
    pub fn audit_count(&self) -> Result<u64, StoreError> {
        let last = self
            .inner
            .log
            .range(keys::audit(0)..keys::audit(u64::MAX))
            .next_back()
            .transpose()?;
        Ok(last.map_or(0, |(k, _)| {
            u64::from_be_bytes(k[1..9].try_into().unwrap_or([0; 8]))
        }))
    }

    /// Up to `limit` audit records from sequence `from` on, in key order,
    /// each with the sequence of its key (`None`: it does not decode).
    ///
    /// # Errors
    /// On a storage failure or a record that cannot be decoded.
    pub fn audit_records(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Option<AuditRecord>)>, StoreError> {
        let mut out = Vec::new();
        for kv in self
            .inner
            .log
            .range(keys::audit(from)..keys::audit(u64::MAX))
            .take(limit)
        {
            let (k, v) = kv?;
            let seq = k
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            let seq = seq.ok_or_else(|| corrupt("audit key", format!("{k:?}")))?;
            // A record that no longer decodes is reported by `verify` under
            // its key, not turned into an error here.
            out.push((seq, AuditRecord::decode(v.as_ref()).ok()));
        }
        Ok(out)
    }
}

fn decode_receipt(key: &[u8], value: &[u8]) -> Result<Receipt, StoreError> {
    let bad = || corrupt("receipt key", format!("{key:?}"));
    let alert =
        AlertId(uuid::Uuid::from_slice(key.get(1..17).ok_or_else(bad)?).map_err(|_| bad())?);
    let (kind, recipient, feed) = keys::parse_receipt(key).ok_or_else(bad)?;
    let stored = StoredReceipt::decode(value).map_err(|e| corrupt("receipt", e))?;
    Ok(Receipt {
        alert,
        kind: ReceiptKind::from_code(kind).ok_or_else(bad)?,
        recipient: recipient.parse().map_err(|_| bad())?,
        feed: feed.to_owned(),
        at: from_micros(stored.time_us),
        note: stored.note,
    })
}
