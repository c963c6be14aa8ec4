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
use crate::policy::{Denied, Policy, PolicyDiff, PolicyError};
use crate::receipt::{Receipt, ReceiptKind};

/// What a policy reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
    /// The file it came from.
    pub source: String,
    /// SHA-256 of the file's text, hex.
    pub sha256: String,
    /// What changed (empty: the file says what is in force already).
    pub diff: PolicyDiff,
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

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

    /// Records the policy the broker starts with (from `source`) in the
    /// audit trail, with a digest of its text.
    pub async fn policy_at_start(&self, source: &str, text: &str) {
        let digest = sha256_hex(text);
        info!(%source, sha256 = %digest, "sharing policy in force");
        self.audit_policy(format!("{source} sha256 {digest}; at start"))
            .await;
    }

    /// Reads the policy file again and puts it in force, unless it is not
    /// valid (then the policy in force stays, and the refusal is audited).
    /// Reloading happens only on request (SIGHUP, `Admin.ReloadPolicy`),
    /// never because the file changed: an editor's half-saved file must
    /// not become the policy.
    ///
    /// # Errors
    /// [`BrokerError::NoPolicyFile`] when the broker runs without one;
    /// [`BrokerError::PolicyRefused`] when the file cannot be read or is
    /// not a valid policy.
    pub async fn reload_policy(&self) -> Result<PolicyChange, BrokerError> {
        let Some(path) = self.inner.config.policy_file.clone() else {
            return Err(BrokerError::NoPolicyFile);
        };
        let source = path.display().to_string();
        let text = match std::fs::read(&path).map(String::from_utf8) {
            Ok(Ok(text)) => text,
            Ok(Err(_)) => {
                return Err(self
                    .policy_rejected(&source, vec!["the file is not UTF-8 text".into()])
                    .await);
            }
            Err(e) => {
                return Err(self
                    .policy_rejected(&source, vec![format!("cannot read it: {e}")])
                    .await);
            }
        };
        let policy = match crate::policy::parse(&text) {
            Ok(p) => p,
            Err(errors) => {
                let errors = errors.iter().map(ToString::to_string).collect();
                return Err(self.policy_rejected(&source, errors).await);
            }
        };
        let change = PolicyChange {
            diff: crate::policy::diff(&self.policy(), &policy),
            sha256: sha256_hex(&text),
            source,
        };
        if change.diff.is_empty() {
            info!(source = %change.source, "sharing policy reloaded: no change");
            return Ok(change);
        }
        info!(source = %change.source, sha256 = %change.sha256, change = %change.diff, "sharing policy reloaded");
        // The record first: nothing decided under the new policy can come
        // before it in the audit trail.
        self.audit_policy(format!(
            "{} sha256 {}; {}",
            change.source, change.sha256, change.diff
        ))
        .await;
        self.inner.policy.send_replace(Arc::new(policy));
        Ok(change)
    }

    /// What a policy file's text would change against the policy in force,
    /// without changing anything.
    ///
    /// # Errors
    /// Every problem of the text, each with its line.
    pub fn check_policy(&self, text: &str) -> Result<PolicyDiff, Vec<PolicyError>> {
        let policy = crate::policy::parse(text)?;
        Ok(crate::policy::diff(&self.policy(), &policy))
    }

    async fn audit_policy(&self, detail: String) {
        self.inner
            .store
            .audit(AuditEvent::new(
                AuditKind::PolicyReloaded,
                "broker",
                None,
                detail,
            ))
            .await;
    }

    /// Records that a new policy file was refused (the old one stays) and
    /// returns the refusal.
    async fn policy_rejected(&self, source: &str, errors: Vec<String>) -> BrokerError {
        let reason = errors.join("; ");
        warn!(%source, %reason, "new policy refused; the previous policy stays in force");
        self.inner
            .store
            .audit(AuditEvent::new(
                AuditKind::PolicyRejected,
                "broker",
                None,
                format!("{source}: {reason}"),
            ))
            .await;
        BrokerError::PolicyRefused {
            file: source.to_owned(),
            errors,
        }
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
            return Err(crate::alert::Rejection::new(
                "note",
                format!("at most {MAX_NOTE} bytes, no control characters except newlines"),
            )
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
