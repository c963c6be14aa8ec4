//! The audit chain in the store: records `z|seq` in the log tree, each
//! hashing the one before it ([`crate::audit`]). The writer thread is its
//! single sequencer and stages each record in the same batch as the event
//! it records, so an accepted publish and its audit record are committed
//! together.

use std::time::SystemTime;

use prost::Message;

use super::command::{Batch, Command};
use super::error::{StoreError, corrupt};
use super::seal::{Seal, Tree};
use super::{Store, keys};
use crate::alert::micros;
use crate::audit::{AuditEvent, AuditRecord};

/// The head of the audit chain (writer thread). Cloned at the start of a
/// commit, so that a group that fails gives back the sequence numbers and
/// the link its records took.
#[derive(Debug, Clone)]
pub struct Chain {
    next_seq: u64,
    prev_hash: Vec<u8>,
    seal: Seal,
}

impl Chain {
    /// Continues the chain from its newest record.
    ///
    /// # Errors
    /// When the newest record cannot be read or decoded.
    pub fn load(log: &sled::Tree, seal: &Seal) -> Result<Chain, StoreError> {
        let last = log
            .range(keys::audit(0)..keys::audit(u64::MAX))
            .next_back()
            .transpose()
            .map_err(|e| StoreError::sled("reading the audit trail", e))?;
        Ok(match last {
            Some((k, v)) => {
                let v = seal.open("audit record", Tree::Log, &k, &v)?;
                let r = AuditRecord::decode(v.as_ref()).map_err(|e| corrupt("audit record", e))?;
                Chain {
                    next_seq: r.seq + 1,
                    prev_hash: r.hash,
                    seal: seal.clone(),
                }
            }
            None => Chain {
                next_seq: 1,
                prev_hash: Vec::new(),
                seal: seal.clone(),
            },
        })
    }

    /// Adds the next record of the chain to `batch`.
    pub fn stage(&mut self, batch: &mut Batch, event: &AuditEvent) {
        let record = AuditRecord::chain(
            self.next_seq,
            micros(SystemTime::now()),
            event,
            &self.prev_hash,
        );
        batch.insert_sealed(&self.seal, keys::audit(record.seq), record.encode_to_vec());
        self.next_seq += 1;
        self.prev_hash = record.hash;
    }
}

impl Store {
    /// Records an audit event (committed with the next group; the caller
    /// does not wait for the disk).
    pub async fn audit(&self, event: AuditEvent) {
        // Only fails when the store is closed, and then there is nothing
        // left to record into.
        let _ = self.inner.writer.send(Command::Audit { event }).await;
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
            .transpose()
            .map_err(|e| StoreError::sled("reading the audit trail", e))?;
        Ok(last.and_then(|(k, _)| keys::audit_seq(&k)).unwrap_or(0))
    }

    /// Up to `limit` audit records from sequence `from` on, in key order,
    /// each with the sequence of its key (`None`: it does not decode).
    ///
    /// # Errors
    /// On a storage failure or a key that is not an audit key.
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
            let (k, v) = kv.map_err(|e| StoreError::sled("reading the audit trail", e))?;
            let seq = keys::audit_seq(&k).ok_or_else(|| corrupt("audit key", format!("{k:?}")))?;
            // A record that no longer decodes is reported by `verify` under
            // its key, not turned into an error here.
            let v = self.inner.seal.open("audit record", Tree::Log, &k, &v).ok();
            out.push((seq, v.and_then(|v| AuditRecord::decode(v.as_ref()).ok())));
        }
        Ok(out)
    }
}
