//! The broker's side of the sharing policy, receipts and the audit trail:
//! the policy in force (and its reload), refusals, acknowledgements and
//! receipt reads.

use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Broker, BrokerError};
use crate::alert::AlertId;
use crate::audit::{AuditEvent, AuditKind};
use crate::identity::NodeId;
use crate::policy::{Denied, Policy};
use crate::receipt::{Receipt, ReceiptKind};

/// Longest note of an acknowledgement, in bytes.
const MAX_NOTE: usize = 1024;

impl Broker {
    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.inner.policy.borrow().clone()
    }

    /// A receiver of policy changes (feed tasks re-read it per chunk).
    pub fn watch_policy(&self) -> watch::Receiver<Arc<Policy>> {
        self.inner.policy.subscribe()
    }

    /// Puts a new policy in force and records it in the audit trail with a
    /// digest of its source text.
    pub async fn set_policy(&self, policy: Policy, source: &str, text: &str) {
        let digest: String = Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        info!(%source, sha256 = %digest, "sharing policy in force");
        // The record first: nothing decided under the new policy can come
        // before it in the audit trail.
        let detail = format!("{source} sha256 {digest}");
        self.inner
            .store
            .audit(AuditEvent::new(
                AuditKind::PolicyReloaded,
                "broker",
                None,
                detail,
            ))
            .await;
        self.inner.policy.send_replace(Arc::new(policy));
    }

    /// Records that a new policy file was refused (the old one stays).
    pub async fn policy_rejected(&self, source: &str, reason: &str) {
        warn!(%source, %reason, "new policy refused; the previous policy stays in force");
        let detail = format!("{source}: {reason}");
        self.inner
            .store
            .audit(AuditEvent::new(
                AuditKind::PolicyRejected,
                "broker",
                None,
                detail,
            ))
            .await;
    }

    /// Records a policy refusal and returns it as an error.
    pub(super) async fn refused(
        &self,
        node: &NodeId,
        alert: Option<AlertId>,
        denied: Denied,
    ) -> BrokerError {
        info!(%node, reason = %denied.0, "refused by policy");
        self.inner
            .store
            .audit(AuditEvent::new(
                AuditKind::Refused,
                node.to_string(),
                alert,
                denied.0.clone(),
            ))
            .await;
        BrokerError::Denied(denied)
    }

    /// Records a refusal decided outside the core (an admin call) and
    /// returns it as an error.
    pub async fn record_refusal(&self, node: &NodeId, denied: Denied) -> BrokerError {
        self.refused(node, None, denied).await
    }

    /// Records a connection or call refused for its certificate.
    pub async fn auth_failure(&self, peer: &str, reason: &str) {
        self.inner
            .store
            .audit(AuditEvent::new(AuditKind::AuthFailure, peer, None, reason))
            .await;
    }

    /// An officer's explicit acknowledgement: records (once) an
    /// ACKNOWLEDGED receipt of `viewer` for the alert.
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] when the viewer may not see the alert; a
    /// rejection when the note is too long.
    pub async fn acknowledge(
        &self,
        viewer: &NodeId,
        id: &AlertId,
        note: &str,
    ) -> Result<Receipt, BrokerError> {
        if note.len() > MAX_NOTE || note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(crate::alert::Rejection {
                field: "note".into(),
                rule: format!("at most {MAX_NOTE} bytes, no control characters except newlines"),
            }
            .into());
        }
        let record = self.get(viewer, id)?;
        let receipt = Receipt {
            alert: record.alert.id,
            kind: ReceiptKind::Acknowledged,
            recipient: viewer.clone(),
            feed: String::new(),
            at: SystemTime::now(),
            note: note.to_owned(),
        };
        Ok(self.inner.store.record_receipt(receipt).await?)
    }

    /// The receipts of an alert, for its originating agency and national
    /// centres.
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] for anyone else, as for a missing id.
    pub fn receipts(&self, viewer: &NodeId, id: &AlertId) -> Result<Vec<Receipt>, BrokerError> {
        let policy = self.policy();
        match self.inner.store.get_by_id(id)? {
            // Reading receipts also needs the right to see the alert itself.
            Some(r)
                if policy.may_see_receipts(&r.alert, viewer)
                    && policy.entitled(&r.alert, viewer) =>
            {
                Ok(self.inner.store.receipts(id)?)
            }
            _ => Err(BrokerError::NotFound),
        }
    }
}
