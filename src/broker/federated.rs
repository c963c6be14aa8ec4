//! What a federation link needs from the core: the log to export from,
//! the link's durable cursor, and storing an imported alert with its
//! provenance (docs/federation.md). The link itself lives in
//! [`crate::federation`].

use std::sync::Arc;

use tokio::sync::watch;

use super::{Broker, BrokerError, PublishAck};
use crate::alert::{Alert, AlertId, Record, Seq};
use crate::audit::AuditEvent;
use crate::proto as pb;
use crate::store::AppendKind;
use crate::store::StoredLink;

impl Broker {
    /// Up to `limit` stored records from `from` on, in sequence order,
    /// whoever may see them (the link applies the policy itself).
    ///
    /// # Errors
    /// On a storage failure.
    pub fn records_from(&self, from: Seq, limit: usize) -> Result<Vec<Arc<Record>>, BrokerError> {
        Ok(self.store().scan(from, limit)?)
    }

    /// The oldest stored sequence (retention removes older ones).
    ///
    /// # Errors
    /// On a storage failure.
    pub fn first_seq(&self) -> Result<Option<Seq>, BrokerError> {
        Ok(self.store().first_seq()?)
    }

    /// The stored record with this id, whoever may see it.
    ///
    /// # Errors
    /// On a storage failure.
    pub fn record_by_id(&self, id: &AlertId) -> Result<Option<Arc<Record>>, BrokerError> {
        Ok(self.store().get_by_id(id)?)
    }

    /// Wakes when new records are committed.
    pub fn watch_head(&self) -> watch::Receiver<Seq> {
        self.store().watch_head()
    }

    /// The durable state of the link with `peer`.
    ///
    /// # Errors
    /// On a storage failure.
    pub fn load_link(&self, peer: &str) -> Result<StoredLink, BrokerError> {
        Ok(self.store().load_link(peer)?.unwrap_or_default())
    }

    /// Saves the state of the link with `peer` (durable with the next
    /// checkpoint, at most a second later).
    ///
    /// # Errors
    /// On a storage failure.
    pub fn save_link(&self, peer: &str, link: &StoredLink) -> Result<(), BrokerError> {
        Ok(self.store().save_link(peer, link)?)
    }

    /// Stores an alert a peer broker exported, verified and checked by the
    /// link, with where it came from; answers once it is on disk. An id
    /// already stored with the same origin answers as a duplicate (it came
    /// by another path, or again); with another origin it is refused.
    ///
    /// # Errors
    /// Storage errors; the id taken by another origin's alert.
    pub async fn submit_import(
        &self,
        alert: Alert,
        provenance: pb::Provenance,
    ) -> Result<impl Future<Output = Result<PublishAck, BrokerError>> + use<>, BrokerError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        self.submit_valid(alert, AppendKind::Log, Some(provenance))
            .await
    }

    /// Receipt journal entries from number `from` on: receipts of imported
    /// alerts with the peer broker each goes back to.
    ///
    /// # Errors
    /// On a storage failure.
    pub fn receipt_journal(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String, pb::Receipt)>, BrokerError> {
        Ok(self.store().receipt_journal(from, limit)?)
    }

    /// Records a receipt a peer broker sent back for an alert of ours (or
    /// one we relayed), naming the foreign recipient; answers once it is on
    /// disk.
    ///
    /// # Errors
    /// On a storage failure.
    pub async fn record_remote_receipt(
        &self,
        receipt: crate::receipt::Receipt,
    ) -> Result<(), BrokerError> {
        self.store().record_receipt(receipt).await?;
        Ok(())
    }

    /// Records a federation event in the audit trail.
    pub async fn audit_event(&self, event: AuditEvent) {
        self.store().audit(event).await;
    }
}
