//! Receipts in the store: keys `r|alert-id|kind|recipient 0x00 feed` in the
//! log tree, the first of each kept. The writer stages them, with one audit
//! record per (kind, recipient, feed) among them, in the same batch.

use prost::Message;

use super::chain::Chain;
use super::command::{Command, Group};
use super::error::{StoreError, corrupt};
use super::seal::{Seal, Tree};
use super::{Store, keys};
use crate::alert::{AlertId, from_micros, micros};
use crate::audit::AuditEvent;
use crate::receipt::{Receipt, ReceiptKind};

/// Value of a receipt key.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredReceipt {
    #[prost(uint64, tag = "1")]
    time_us: u64,
    #[prost(string, tag = "2")]
    note: String,
}

/// One entry of the receipt journal: a receipt of an imported alert, and
/// the peer broker it goes back to.
#[derive(Clone, PartialEq, prost::Message)]
struct JournalEntry {
    #[prost(string, tag = "1")]
    peer: String,
    #[prost(message, optional, tag = "2")]
    receipt: Option<crate::proto::Receipt>,
}

/// Stages the receipts that do not exist yet, and one audit record per
/// (kind, recipient, feed) among them (writer thread).
///
/// # Errors
/// On a storage failure.
pub fn stage(
    log: &sled::Tree,
    seal: &Seal,
    group: &mut Group,
    chain: &mut Chain,
    receipts: &[Receipt],
    next_journal: &mut u64,
) -> Result<(), StoreError> {
    let mut fresh: Vec<&Receipt> = Vec::new();
    for r in receipts {
        let key = key_of(r);
        let known = group.receipts.contains(&key)
            || log
                .contains_key(&key)
                .map_err(|e| StoreError::sled("reading receipts", e))?;
        if known {
            continue;
        }
        let value = StoredReceipt {
            time_us: micros(r.at),
            note: r.note.clone(),
        };
        group
            .batch
            .insert_sealed(seal, key.as_slice(), value.encode_to_vec());
        group.receipts.insert(key);
        // A receipt of an imported alert goes back over the link it came by.
        let imported = keys::imported(&r.alert);
        if let Some(hop) = log
            .get(imported)
            .map_err(|e| StoreError::sled("reading receipts", e))?
        {
            let hop = seal.open("import record", Tree::Log, &imported, &hop)?;
            let entry = JournalEntry {
                peer: String::from_utf8_lossy(&hop).into_owned(),
                receipt: Some(r.to_proto()),
            };
            group
                .batch
                .insert_sealed(seal, keys::journal(*next_journal), entry.encode_to_vec());
            *next_journal += 1;
        }
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
    for same in groups {
        let first = same[0];
        let what = match first.kind {
            ReceiptKind::Delivered => format!("delivered; feed {}", feed_name(&first.feed)),
            ReceiptKind::Acknowledged => format!("acknowledged; note {:?}", first.note),
        };
        let alerts: Vec<AlertId> = same.iter().map(|r| r.alert).collect();
        chain.stage(
            &mut group.batch,
            &AuditEvent::receipts(first.recipient.to_string(), &what, &alerts),
        );
    }
    Ok(())
}

fn key_of(r: &Receipt) -> Vec<u8> {
    keys::receipt(&r.alert, r.kind.code(), &r.recipient.to_string(), &r.feed)
}

/// How a feed is named in the audit trail.
pub fn feed_name(feed: &str) -> &str {
    if feed.is_empty() { "(ephemeral)" } else { feed }
}

impl Store {
    /// Records a receipt (and its audit record) unless the same receipt
    /// exists; answers the stored receipt once it is on disk.
    ///
    /// # Errors
    /// On a storage failure.
    pub async fn record_receipt(&self, receipt: Receipt) -> Result<Receipt, StoreError> {
        let key = key_of(&receipt);
        let alert = receipt.alert;
        self.call(|reply| Command::Receipt {
            receipts: vec![receipt],
            reply,
        })
        .await?;
        match self
            .inner
            .log
            .get(&key)
            .map_err(|e| StoreError::sled("reading receipts", e))?
        {
            Some(v) => decode(&self.inner.seal, &key, &v),
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
            let (k, v) = kv.map_err(|e| StoreError::sled("reading receipts", e))?;
            out.push(decode(&self.inner.seal, &k, &v)?);
        }
        out.sort_by_key(|r| r.at);
        Ok(out)
    }

    /// Up to `limit` entries of the receipt journal from number `from` on:
    /// (number, the peer broker it goes back to, the receipt).
    ///
    /// # Errors
    /// On a storage failure or a corrupt entry.
    pub fn receipt_journal(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String, crate::proto::Receipt)>, StoreError> {
        let mut out = Vec::new();
        for kv in self
            .inner
            .log
            .range(keys::journal(from)..=keys::journal(u64::MAX))
            .take(limit)
        {
            let (k, v) = kv.map_err(|e| StoreError::sled("reading the receipt journal", e))?;
            let n =
                keys::journal_seq(&k).ok_or_else(|| corrupt("journal key", format!("{k:?}")))?;
            let v = self.inner.seal.open("journal entry", Tree::Log, &k, &v)?;
            let entry =
                JournalEntry::decode(v.as_ref()).map_err(|e| corrupt("journal entry", e))?;
            if let Some(r) = entry.receipt {
                out.push((n, entry.peer, r));
            }
        }
        Ok(out)
    }

    /// A receiver that changes whenever receipts are committed.
    pub fn watch_receipts(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.receipts.clone()
    }
}

fn decode(seal: &Seal, key: &[u8], value: &[u8]) -> Result<Receipt, StoreError> {
    let value = seal.open("receipt", Tree::Log, key, value)?;
    let bad = || corrupt("receipt key", format!("{key:?}"));
    let alert =
        AlertId(uuid::Uuid::from_slice(key.get(1..17).ok_or_else(bad)?).map_err(|_| bad())?);
    let (kind, recipient, feed) = keys::parse_receipt(key).ok_or_else(bad)?;
    let stored = StoredReceipt::decode(value.as_ref()).map_err(|e| corrupt("receipt", e))?;
    Ok(Receipt {
        alert,
        kind: ReceiptKind::from_code(kind).ok_or_else(bad)?,
        recipient: recipient.parse().map_err(|_| bad())?,
        feed: feed.to_owned(),
        at: from_micros(stored.time_us),
        note: stored.note,
    })
}
