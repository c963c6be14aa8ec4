//! The broker core: publish, history and feeds, on top of the [`Store`].
//! Transport-agnostic: the gRPC service, the CLI and the tests drive it with
//! a caller identity and domain values; it never sees tonic.

mod admin;
mod federated;
mod feed;
mod retention;
mod sharing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub use admin::{FeedView, LogStats};
pub use feed::{FeedEnd, FeedEvent, FeedHandle, FeedOpened, FeedSpec, Pending, Start};
pub use retention::Retention;
pub use sharing::PolicyChange;

use crate::alert::{self, Alert, AlertId, Limits, Record, Rejection, Seq};
use crate::filter::Filter;
use crate::identity::NodeId;
use crate::policy::{Denied, Policy};
use crate::proto as pb;
use crate::store::{AppendKind, OutboxLimits, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("no such alert")]
    NotFound,
    #[error("the feed was taken over by a newer subscription")]
    TakenOver,
    #[error("the broker is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("the broker runs without a policy file (--policy); there is nothing to reload")]
    NoPolicyFile,
    #[error("the policy file {file} was refused; the policy in force stays: {}", errors.join("; "))]
    PolicyRefused { file: String, errors: Vec<String> },
    #[error(
        "the feed `{feed}` of {owner} has a live subscription: the post is online and its inbox follows the link (bundles are for when it is not)"
    )]
    FeedBusy { owner: String, feed: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Settings of the core.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub limits: Limits,
    pub retention: Retention,
    /// Set on an agent: local publishes are also queued in the outbox for
    /// forwarding upstream, within these limits.
    pub outbox: Option<OutboxLimits>,
    /// The sharing policy in force at start (open when there is no file).
    pub policy: Arc<Policy>,
    /// The file it came from, read again on a reload.
    pub policy_file: Option<std::path::PathBuf>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            retention: Retention::default(),
            outbox: None,
            policy: Arc::new(Policy::open()),
            policy_file: None,
        }
    }
}

/// What a publisher is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishAck {
    pub id: AlertId,
    pub seq: Seq,
    pub received_at: SystemTime,
    pub duplicate: bool,
}

/// A history query.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub filter: Filter,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub page_size: usize,
    /// Continue after this sequence (from a previous page).
    pub after: Option<Seq>,
}

/// One page of history; `next` continues it.
#[derive(Debug, Default)]
pub struct Page {
    pub records: Vec<Arc<Record>>,
    pub next: Option<Seq>,
}

/// Records examined per history call at most, so that a selective filter
/// over a large log cannot make one call run for long.
const LIST_SCAN_BUDGET: usize = 10_000;
/// A page stops growing once its alerts reach this size, so that it fits a
/// gRPC response even when alerts carry attachments.
const LIST_PAGE_BYTES: usize = 256 * 1024;

/// A cheap-to-clone handle to the broker core.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: BrokerConfig,
    /// Durable feeds with a live subscription. A std mutex: held only to
    /// look up or replace an entry, never across an `.await`.
    feeds: Mutex<HashMap<(NodeId, String), feed::Slot>>,
    /// Cancelled when the broker shuts down; every feed task watches it.
    shutdown: CancellationToken,
    /// The policy in force; replaced whole on reload. Feed tasks hold
    /// receivers.
    policy: watch::Sender<Arc<Policy>>,
}

impl Broker {
    pub fn new(store: Store, config: BrokerConfig, shutdown: CancellationToken) -> Broker {
        Broker {
            inner: Arc::new(Inner {
                store,
                policy: watch::Sender::new(config.policy.clone()),
                config,
                feeds: Mutex::new(HashMap::new()),
                shutdown,
            }),
        }
    }

    /// The store under this core.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// Validates `msg`, sets its origin to `origin` and stores it; answers
    /// once it is on disk. A re-published id answers with the original
    /// sequence, flagged duplicate.
    ///
    /// # Errors
    /// [`BrokerError::Rejected`] naming the field and rule; storage errors.
    pub async fn publish(
        &self,
        origin: &NodeId,
        msg: pb::Alert,
    ) -> Result<PublishAck, BrokerError> {
        self.submit(origin, msg).await?.await
    }

    /// Validates and queues a publish, returning the future of its
    /// acknowledgement. Submissions are stored in the order they were made:
    /// a stream of publishes submits one after the other and awaits the
    /// acknowledgements concurrently, keeping its order.
    ///
    /// # Errors
    /// [`BrokerError::Rejected`] naming the field and rule; the outer error
    /// when the store is closed, the inner one on storage failures.
    pub async fn submit(
        &self,
        origin: &NodeId,
        msg: pb::Alert,
    ) -> Result<impl Future<Output = Result<PublishAck, BrokerError>> + use<>, BrokerError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        let alert = match alert::validate(msg, origin, &self.inner.config.limits, SystemTime::now())
        {
            Ok(alert) => alert,
            Err(rejection) => return Err(count_error(rejection.into())),
        };
        if let Err(denied) = self.policy().may_publish(origin, alert.category) {
            return Err(count_error(
                self.refused(origin, Some(alert.id), denied).await,
            ));
        }
        let kind = match self.inner.config.outbox {
            Some(limits) => AppendKind::Outbox(limits),
            None => AppendKind::Log,
        };
        let pending = self
            .submit_valid(alert, kind, None)
            .await
            .map_err(count_error)?;
        Ok(async move { count_publish(pending.await) })
    }

    /// Stores an alert received from the upstream broker (an agent's inbox):
    /// it was validated there and keeps its origin, and, when it came from
    /// another state, its provenance (so the post can check its origin
    /// too); it is not forwarded.
    ///
    /// # Errors
    /// As [`Broker::submit`].
    pub async fn submit_from_upstream(
        &self,
        alert: Alert,
        provenance: Option<pb::Provenance>,
    ) -> Result<impl Future<Output = Result<PublishAck, BrokerError>> + use<>, BrokerError> {
        self.submit_valid(alert, AppendKind::Inbox, provenance)
            .await
    }

    /// Queues an alert that is already validated (with its provenance when
    /// another state's broker sent it); see [`Broker::submit`].
    async fn submit_valid(
        &self,
        alert: Alert,
        kind: AppendKind,
        provenance: Option<pb::Provenance>,
    ) -> Result<impl Future<Output = Result<PublishAck, BrokerError>> + use<>, BrokerError> {
        let id = alert.id;
        let pending = self
            .inner
            .store
            .submit_with(alert, kind, provenance)
            .await?;
        Ok(async move {
            let appended = pending.await?;
            if appended.duplicate {
                debug!(%id, seq = %appended.seq, "duplicate publish");
            }
            Ok(PublishAck {
                id,
                seq: appended.seq,
                received_at: appended.received_at,
                duplicate: appended.duplicate,
            })
        })
    }

    /// The alert with this id, if `viewer` may see it.
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] both when it does not exist and when the
    /// viewer is not entitled, so that existence does not leak.
    pub fn get(&self, viewer: &NodeId, id: &AlertId) -> Result<Arc<Record>, BrokerError> {
        let policy = self.policy();
        match self.inner.store.get_by_id(id)? {
            Some(r)
                if policy.entitled(&r.alert, viewer)
                    && (r.alert.origin == *viewer || policy.may_subscribe(viewer).is_ok()) =>
            {
                Ok(r)
            }
            _ => Err(BrokerError::NotFound),
        }
    }

    /// A page of stored alerts matching `query` that `viewer` may see, oldest
    /// first.
    ///
    /// # Errors
    /// [`BrokerError::Denied`] when the policy does not let the viewer read
    /// history; storage errors.
    pub async fn list(&self, viewer: &NodeId, query: &ListQuery) -> Result<Page, BrokerError> {
        let policy = self.policy();
        if let Err(denied) = policy.may_subscribe(viewer) {
            return Err(self.refused(viewer, None, denied).await);
        }
        let store = &self.inner.store;
        let mut from = match query.since {
            Some(t) => store.seq_at_time(t)?,
            None => Seq(1),
        };
        if let Some(after) = query.after {
            match after.0.checked_add(1) {
                Some(next) => from = from.max(Seq(next)),
                None => return Ok(Page::default()),
            }
        }
        let page_size = query.page_size.clamp(1, 1000);
        let mut page = Page::default();
        let mut examined = 0;
        let mut bytes = 0;
        while examined < LIST_SCAN_BUDGET {
            let chunk = store.scan(from, 256)?;
            let Some(last) = chunk.last() else {
                return Ok(page);
            };
            from = last.seq.next();
            for r in chunk {
                examined += 1;
                if query.until.is_some_and(|u| r.received_at >= u) {
                    page.next = None;
                    return Ok(page);
                }
                if query.filter.matches(&r.alert, viewer) && policy.entitled(&r.alert, viewer) {
                    // The provenance of an imported alert (its attestation
                    // holds the alert again, and a certificate) counts too.
                    bytes += prost::Message::encoded_len(&r.alert.body)
                        + r.provenance
                            .as_deref()
                            .map_or(0, prost::Message::encoded_len);
                    page.records.push(r.clone());
                }
                page.next = Some(r.seq);
                if page.records.len() == page_size || bytes >= LIST_PAGE_BYTES {
                    // Only promise a next page when there is something after.
                    if r.seq >= store.head() {
                        page.next = None;
                    }
                    return Ok(page);
                }
            }
        }
        Ok(page)
    }

    /// Opens a feed for `owner`. A durable feed that another subscription
    /// holds is taken over: the older one ends with [`FeedEnd::TakenOver`].
    ///
    /// # Errors
    /// Storage errors; [`BrokerError::TakenOver`] when an even newer
    /// subscription took the feed while this one waited for it.
    pub async fn open_feed(
        &self,
        owner: NodeId,
        spec: FeedSpec,
    ) -> Result<FeedHandle, BrokerError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        if let Err(denied) = self.policy().may_subscribe(&owner) {
            return Err(self.refused(&owner, None, denied).await);
        }
        feed::open(self, owner, spec).await
    }

    /// What `owner`'s durable feed `name` owes it, without delivering it:
    /// the content of an offline bundle (see [`Pending`]).
    ///
    /// # Errors
    /// [`BrokerError::FeedBusy`] while a subscription holds the feed;
    /// [`BrokerError::Denied`] when the owner may not subscribe; storage
    /// errors.
    pub async fn feed_pending(
        &self,
        owner: &NodeId,
        name: &str,
        max_alerts: usize,
        max_bytes: u64,
    ) -> Result<Pending, BrokerError> {
        feed::offline::pending(self, owner, name, max_alerts, max_bytes).await
    }

    /// Acknowledges deliveries of `owner`'s feed `name` that an offline
    /// bundle carried (its receipt came back); returns how many were new.
    ///
    /// # Errors
    /// As [`Broker::feed_pending`].
    pub async fn feed_acknowledge(
        &self,
        owner: &NodeId,
        name: &str,
        seqs: &[u64],
    ) -> Result<u64, BrokerError> {
        feed::offline::acknowledge(self, owner, name, seqs).await
    }

    /// Runs the retention loop until shutdown.
    pub async fn run_retention(self) {
        let r = self.inner.config.retention.clone();
        if r.max_age.is_none() && r.max_bytes.is_none() {
            return;
        }
        info!(max_age = ?r.max_age, max_bytes = ?r.max_bytes, "retention enabled");
        retention::run(self.inner.store.clone(), r, self.inner.shutdown.clone()).await;
    }

    fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    fn feeds(&self) -> std::sync::MutexGuard<'_, HashMap<(NodeId, String), feed::Slot>> {
        // Entries are replaced whole; a poisoned map is still consistent.
        self.inner.feeds.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts a publish outcome by result (see [`crate::metrics::PUBLISHES`]).
fn count_publish(outcome: Result<PublishAck, BrokerError>) -> Result<PublishAck, BrokerError> {
    match outcome {
        Ok(ack) => {
            let result = if ack.duplicate {
                "duplicate"
            } else {
                "accepted"
            };
            metrics::counter!(crate::metrics::PUBLISHES, "result" => result).increment(1);
            Ok(ack)
        }
        Err(e) => Err(count_error(e)),
    }
}

fn count_error(e: BrokerError) -> BrokerError {
    let result = match &e {
        BrokerError::Rejected(_) => "invalid",
        BrokerError::Denied(_) => "denied",
        BrokerError::Store(StoreError::IdConflict) => "id_conflict",
        BrokerError::Store(StoreError::OutboxFull { .. }) => "outbox_full",
        _ => "failed",
    };
    metrics::counter!(crate::metrics::PUBLISHES, "result" => result).increment(1);
    e
}

/// Default time a delivery may stay unacknowledged.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Default flow-control window.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;
