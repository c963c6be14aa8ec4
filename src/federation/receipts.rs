//! Receipts back to the originator: the DELIVERED and ACKNOWLEDGED receipts
//! recorded here for an imported alert go back over the link it came by
//! (the store journals them as they are recorded), and the peer's receipts
//! of alerts we exported are recorded here, naming the foreign recipient.
//! A relay journals what it records in turn, so receipts walk the path
//! back to the origin.
//!
//! The sender offers journal entries in order and the receiver confirms
//! them cumulatively (`ReceiptsStored`) once on disk; the sender's cursor
//! (`receipts_through`) moves with the confirmations, so a cut link or a
//! crash re-sends what was not confirmed, and receipts being idempotent,
//! nothing is recorded twice.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use tokio::sync::mpsc;
use tracing::warn;

use super::session::{Shared, local_problem, lock, send};
use super::{Federation, PeerLink};
use crate::agent::Problem;
use crate::alert::{AlertId, system_time};
use crate::identity::NodeId;
use crate::policy::Destination;
use crate::proto as pb;
use crate::receipt::{Receipt, ReceiptKind};
use pb::link_frame::Frame;

/// Receipts sent and not yet confirmed, at most.
const WINDOW: usize = 256;
/// Journal entries read at a time.
const SCAN: usize = 128;
/// Longest note and feed name accepted from a peer.
const MAX_NOTE: usize = 1024;
const MAX_FEED: usize = 128;

/// Sends the journal's receipts for this peer.
pub(super) struct ReceiptSender {
    fed: Federation,
    peer: Arc<PeerLink>,
    state: Shared,
    /// The next journal number to read.
    next: u64,
    /// Numbers sent and not yet confirmed, oldest first.
    pending: VecDeque<u64>,
    pub(super) caught_up: bool,
}

impl ReceiptSender {
    pub(super) fn new(fed: &Federation, peer: &Arc<PeerLink>, state: Shared) -> ReceiptSender {
        let next = lock(&state).receipts_through + 1;
        ReceiptSender {
            fed: fed.clone(),
            peer: peer.clone(),
            state,
            next,
            pending: VecDeque::new(),
            caught_up: false,
        }
    }

    /// Sends journal entries for the peer while the window has room.
    pub(super) async fn fill(&mut self, out: &mpsc::Sender<pb::LinkFrame>) -> Result<(), Problem> {
        let broker_urn = self.peer.config.broker.to_string();
        while self.pending.len() < WINDOW {
            // No more than the window has room for: what is read is sent.
            let room = (WINDOW - self.pending.len()).min(SCAN);
            let entries = self
                .fed
                .inner
                .broker
                .receipt_journal(self.next, room)
                .map_err(local_problem)?;
            if entries.is_empty() {
                self.caught_up = true;
                self.advance();
                return Ok(());
            }
            self.caught_up = false;
            for (n, peer, receipt) in entries {
                self.next = n + 1;
                if peer == broker_urn {
                    self.pending.push_back(n);
                    send(
                        out,
                        Frame::Receipt(pb::RemoteReceipt {
                            receipt: Some(receipt),
                            seq: n,
                        }),
                    )
                    .await?;
                    lock(&self.state).receipts_sent += 1;
                }
            }
            self.advance();
        }
        Ok(())
    }

    /// The peer stored every receipt up to `through`.
    pub(super) fn stored(&mut self, through: u64) {
        while self.pending.front().is_some_and(|n| *n <= through) {
            self.pending.pop_front();
        }
        self.advance();
    }

    fn advance(&mut self) {
        let cursor = self
            .pending
            .front()
            .map_or(self.next.saturating_sub(1), |n| n - 1);
        let mut state = lock(&self.state);
        state.receipts_through = state.receipts_through.max(cursor);
    }
}

/// Stores the peer's receipts of alerts exported to it, confirming them in
/// order.
pub(super) struct ReceiptReceiver {
    fed: Federation,
    peer: Arc<PeerLink>,
    state: Shared,
    /// Journal numbers of the peer, resolved once stored (or set aside).
    pub(super) pending: FuturesOrdered<BoxFuture<'static, Result<u64, Problem>>>,
}

impl ReceiptReceiver {
    pub(super) fn new(fed: &Federation, peer: &Arc<PeerLink>, state: Shared) -> ReceiptReceiver {
        ReceiptReceiver {
            fed: fed.clone(),
            peer: peer.clone(),
            state,
            pending: FuturesOrdered::new(),
        }
    }

    /// Checks and records one receipt from the peer.
    pub(super) fn receive(&mut self, remote: pb::RemoteReceipt) {
        let seq = remote.seq;
        let checked = remote
            .receipt
            .ok_or_else(|| "receipt: required".to_owned())
            .and_then(|r| self.check(r));
        match checked {
            Err(reason) => {
                warn!(peer = %self.peer.config.name, receipt = seq, %reason, "a receipt from a federation peer set aside");
                self.pending.push_back(Box::pin(async move { Ok(seq) }));
            }
            Ok(receipt) => {
                lock(&self.state).receipts_received += 1;
                let broker = self.fed.inner.broker.clone();
                self.pending.push_back(Box::pin(async move {
                    broker
                        .record_remote_receipt(receipt)
                        .await
                        .map_err(local_problem)?;
                    Ok(seq)
                }));
            }
        }
    }

    /// A receipt the peer may send: of an alert stored here that was
    /// released to the peer, naming a recipient outside this state.
    fn check(&self, r: pb::Receipt) -> Result<Receipt, String> {
        let id = uuid::Uuid::parse_str(&r.alert_id)
            .map(AlertId)
            .map_err(|e| format!("receipt.alert_id: {e}"))?;
        let broker = &self.fed.inner.broker;
        let record = broker
            .record_by_id(&id)
            .map_err(|e| e.to_string())?
            .ok_or("receipt.alert_id: no such alert here")?;
        let recipient: NodeId = r
            .recipient
            .as_ref()
            .map(|o| o.urn.as_str())
            .unwrap_or_default()
            .parse()
            .map_err(|e: crate::identity::IdentityError| format!("receipt.recipient: {e}"))?;
        let local = self.fed.broker_id();
        if recipient.country() == local.country() {
            return Err(format!(
                "receipt.recipient: {recipient} is a node of this state; a peer cannot speak for it"
            ));
        }
        let peer = self.peer.config.broker.to_string();
        let to = Destination {
            local: local.country(),
            country: self.peer.config.broker.country(),
            broker: &peer,
        };
        broker
            .policy()
            .may_export(&record.alert, record.provenance.as_deref(), to)
            .map_err(|w| {
                format!(
                    "the alert was not released to peer {}: {w}",
                    self.peer.config.name
                )
            })?;
        let kind = match pb::ReceiptKind::try_from(r.kind) {
            Ok(pb::ReceiptKind::Delivered) => ReceiptKind::Delivered,
            Ok(pb::ReceiptKind::Acknowledged) => ReceiptKind::Acknowledged,
            _ => return Err("receipt.kind: DELIVERED or ACKNOWLEDGED".into()),
        };
        if r.note.len() > MAX_NOTE || r.feed.len() > MAX_FEED {
            return Err(format!(
                "receipt: note at most {MAX_NOTE} bytes, feed at most {MAX_FEED}"
            ));
        }
        Ok(Receipt {
            alert: id,
            kind,
            recipient,
            feed: r.feed,
            at: r
                .at
                .as_ref()
                .and_then(system_time)
                .unwrap_or_else(SystemTime::now),
            note: r.note,
        })
    }
}
