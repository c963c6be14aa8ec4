//! What the broker core tells an operator: its feeds, the totals of its
//! log, the audit trail and (on an agent) the outbox.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::{Broker, BrokerError};
use crate::alert::{Seq, from_micros};
use crate::audit::AuditRecord;
use crate::store::OutboxStats;

/// The totals of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// The newest committed sequence.
    pub head: Seq,
    /// The oldest retained sequence.
    pub first: Option<Seq>,
    /// Encoded size of the retained alerts.
    pub bytes: u64,
    pub audit_records: u64,
}

/// One durable feed as the admin view shows it.
#[derive(Debug, Clone)]
pub struct FeedView {
    pub owner: String,
    pub name: String,
    pub ack_floor: u64,
    pub backlog: u64,
    pub in_flight: u32,
    pub connected: bool,
    pub last_ack: Option<SystemTime>,
    pub created: SystemTime,
}

impl Broker {
    /// Every durable feed with its cursor and, when subscribed now, its
    /// live state.
    ///
    /// # Errors
    /// Storage errors.
    pub fn feed_views(&self) -> Result<Vec<FeedView>, BrokerError> {
        let head = self.inner.store.head().0;
        let live = self.feeds();
        let views = self
            .inner
            .store
            .list_feeds()?
            .into_iter()
            .map(|(owner, name, state)| {
                let slot = owner
                    .parse()
                    .ok()
                    .and_then(|node| live.get(&(node, name.clone())));
                let (connected, in_flight) = slot.map_or((false, 0), |s| {
                    (
                        s.live.connected.load(Ordering::Relaxed),
                        s.live.in_flight.load(Ordering::Relaxed),
                    )
                });
                FeedView {
                    backlog: head.saturating_sub(state.ack_floor),
                    ack_floor: state.ack_floor,
                    in_flight,
                    connected,
                    last_ack: (state.last_ack_us > 0).then(|| from_micros(state.last_ack_us)),
                    created: from_micros(state.created_us),
                    owner,
                    name,
                }
            })
            .collect();
        Ok(views)
    }

    /// The totals of the log.
    ///
    /// # Errors
    /// Storage errors.
    pub fn log_stats(&self) -> Result<LogStats, BrokerError> {
        let store = &self.inner.store;
        Ok(LogStats {
            head: store.head(),
            first: store.first_seq()?,
            bytes: store.log_bytes()?,
            audit_records: store.audit_count()?,
        })
    }

    /// Whether new alerts are accepted, and a receiver of changes.
    pub fn watch_writes(&self) -> tokio::sync::watch::Receiver<crate::store::Writes> {
        self.inner.store.watch_writes()
    }

    /// Measures free space now and updates [`Broker::watch_writes`].
    pub fn refresh_writes(&self) {
        self.inner.store.refresh_writes();
    }

    /// Free bytes on the data directory's disk, and the reserve below which
    /// new alerts are refused.
    pub fn disk(&self) -> (Option<u64>, u64) {
        self.inner.store.disk()
    }

    /// The newest committed sequence (0 when empty).
    pub fn head(&self) -> Seq {
        self.inner.store.head()
    }

    /// How many audit records there are.
    ///
    /// # Errors
    /// Storage errors.
    pub fn audit_count(&self) -> Result<u64, BrokerError> {
        Ok(self.inner.store.audit_count()?)
    }

    /// Up to `limit` audit records from sequence `from` on, each with the
    /// sequence of its key (`None`: it does not decode).
    ///
    /// # Errors
    /// Storage errors.
    pub fn audit_records(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Option<AuditRecord>)>, BrokerError> {
        Ok(self.inner.store.audit_records(from, limit)?)
    }

    /// The outbox of an agent: depth, oldest alert and lifetime counters.
    ///
    /// # Errors
    /// Storage errors.
    pub fn outbox_stats(&self) -> Result<OutboxStats, BrokerError> {
        Ok(self.inner.store.outbox_stats()?)
    }

    /// A receiver that changes whenever receipts are committed.
    pub fn watch_receipts(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.store.watch_receipts()
    }
}
