//! The `liaison.v1.Admin` gRPC service: feeds, connected nodes and totals,
//! for administrator nodes.

use std::time::SystemTime;

use tonic::{Request, Response, Status};

use super::authenticated;
use crate::alert::timestamp;
use std::sync::Arc;

use crate::audit::{AuditEvent, AuditKind};
use crate::broker::Broker;
use crate::bundle::{self, BundleError, Party, Peer};
use crate::identity::NodeId;
use crate::proto as pb;
use crate::proto::admin_server::Admin;
use crate::tls::Connections;

pub struct AdminService {
    broker: Broker,
    connections: Connections,
    started: SystemTime,
    federation: Option<crate::federation::Federation>,
    /// The broker's certificate, key and CA: what opens and signs bundles.
    bundles: Option<Arc<BundleKeys>>,
}

struct BundleKeys {
    files: crate::tls::TlsFiles,
    /// One import at a time: a bundle's replay check and its record of
    /// import must not interleave with another copy's.
    import: tokio::sync::Mutex<()>,
}

impl AdminService {
    pub fn new(broker: Broker, connections: Connections) -> Self {
        Self {
            broker,
            connections,
            started: SystemTime::now(),
            federation: None,
            bundles: None,
        }
    }

    /// The federation links `Links` reports.
    pub fn with_federation(mut self, federation: Option<crate::federation::Federation>) -> Self {
        self.federation = federation;
        self
    }

    /// Offline bundles, opened and signed with the broker's own
    /// certificate and key (read at each call, so a renewed certificate
    /// is used at once).
    pub fn with_bundles(mut self, files: crate::tls::TlsFiles) -> Self {
        self.bundles = Some(Arc::new(BundleKeys {
            files,
            import: tokio::sync::Mutex::new(()),
        }));
        self
    }

    fn bundle_keys(&self) -> Result<(Arc<BundleKeys>, Party), Status> {
        let keys = self
            .bundles
            .clone()
            .ok_or_else(|| Status::unimplemented("this broker does not take offline bundles"))?;
        let party = Party::load(&keys.files).map_err(|e| {
            Status::failed_precondition(format!("the broker's own certificate and key: {e}"))
        })?;
        Ok((keys, party))
    }

    /// Records a refused bundle in the audit trail, and answers with it.
    async fn bundle_refused(&self, caller: &NodeId, e: BundleError) -> Status {
        self.broker
            .audit_event(AuditEvent::new(
                AuditKind::BundleRefused,
                caller.to_string(),
                None,
                e.to_string(),
            ))
            .await;
        bundle_status(e)
    }

    /// Administrators only (any node when no policy file is in force).
    async fn authorise<T>(&self, req: &Request<T>) -> Result<NodeId, Status> {
        let node = authenticated(&self.broker, req).await?;
        let policy = self.broker.policy();
        if policy.is_open() || policy.is_administrator(&node) {
            return Ok(node);
        }
        let denied = crate::policy::Denied(format!("{node} is not an administrator"));
        Err(self.broker.record_refusal(&node, denied).await.into())
    }
}

fn change_proto(
    diff: crate::policy::PolicyDiff,
    source: String,
    sha256: String,
) -> pb::PolicyChange {
    pb::PolicyChange {
        added: diff.added,
        removed: diff.removed,
        changed: diff.changed,
        source,
        sha256,
    }
}

/// The status of a refused bundle: ALREADY_EXISTS for a replay, the core's
/// and the store's own statuses, INVALID_ARGUMENT for the rest.
fn bundle_status(e: BundleError) -> Status {
    match e {
        BundleError::Replayed { .. } => Status::already_exists(e.to_string()),
        BundleError::Broker(e) => e.into(),
        BundleError::Store(e) => e.into(),
        e => Status::invalid_argument(e.to_string()),
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// Audit records per read of the store while streaming the trail.
const AUDIT_PAGE: usize = 1024;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn import_bundle(
        &self,
        req: Request<pb::ImportBundleRequest>,
    ) -> Result<Response<pb::ImportBundleResponse>, Status> {
        let caller = self.authorise(&req).await?;
        let (keys, party) = self.bundle_keys()?;
        let _one = keys.import.lock().await;
        let req = req.into_inner();
        let expect = bundle::centre::Expect::parse(&req.expect).map_err(bundle_status)?;
        let imported = match bundle::centre::import(&self.broker, &party, &req.bundle, expect).await
        {
            Ok(imported) => imported,
            Err(e) => return Err(self.bundle_refused(&caller, e).await),
        };
        let c = imported.counts;
        self.broker
            .audit_event(AuditEvent::new(
                AuditKind::Bundle,
                imported.from.clone(),
                None,
                format!(
                    "imported bundle {} (by {caller}): {} stored, {} duplicates, {} refused, {} to retry, {} feed deliveries acknowledged",
                    imported.id, c.stored, c.duplicates, c.refused, c.retry, imported.acknowledged
                ),
            ))
            .await;
        Ok(Response::new(pb::ImportBundleResponse {
            bundle: imported.id.to_string(),
            from: imported.from,
            receipt: imported.receipt.unwrap_or_default(),
            stored: c.stored,
            duplicates: c.duplicates,
            refused: c.refused,
            retry: c.retry,
            acknowledged: imported.acknowledged,
        }))
    }

    async fn export_bundle(
        &self,
        req: Request<pb::ExportBundleRequest>,
    ) -> Result<Response<pb::ExportBundleResponse>, Status> {
        let caller = self.authorise(&req).await?;
        let (_, party) = self.bundle_keys()?;
        let req = req.into_inner();
        let post = Peer::parse(&req.recipient_certificate)
            .map_err(|e| Status::invalid_argument(format!("recipient_certificate: {e}")))?;
        let feed = if req.feed.is_empty() {
            "inbox"
        } else {
            req.feed.as_str()
        };
        let max_alerts = match req.max_alerts {
            0 => bundle::DEFAULT_MAX_ALERTS,
            n => n as usize,
        };
        let max_bytes = match req.max_bytes {
            0 => bundle::DEFAULT_MAX_BYTES,
            n => n.min(bundle::DEFAULT_MAX_BYTES),
        };
        let exported =
            match bundle::centre::export(&self.broker, &party, &post, feed, max_alerts, max_bytes)
                .await
            {
                Ok(exported) => exported,
                Err(e) => return Err(self.bundle_refused(&caller, e).await),
            };
        self.broker
            .audit_event(AuditEvent::new(
                AuditKind::Bundle,
                post.name(),
                None,
                format!(
                    "exported bundle {} (by {caller}): {} alerts of feed {feed}, {} left",
                    exported.id, exported.alerts, exported.remaining
                ),
            ))
            .await;
        Ok(Response::new(pb::ExportBundleResponse {
            bundle: exported.file,
            id: exported.id.to_string(),
            alerts: exported.alerts,
            remaining: exported.remaining,
        }))
    }

    type AuditStream = tokio_stream::wrappers::ReceiverStream<Result<pb::AuditEntry, Status>>;

    async fn audit(
        &self,
        req: Request<pb::AdminAuditRequest>,
    ) -> Result<Response<Self::AuditStream>, Status> {
        self.authorise(&req).await?;
        let broker = self.broker.clone();
        // The trail as it stands now: records appended while it streams are
        // for the next call.
        let end = broker.audit_count().map_err(internal)?;
        let mut from = req.into_inner().from_seq.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while from <= end {
                let page = match broker.audit_records(from, AUDIT_PAGE) {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(internal(e))).await;
                        return;
                    }
                };
                let Some(&(last, _)) = page.last() else {
                    return;
                };
                for (seq, record) in page {
                    if seq > end {
                        return;
                    }
                    if tx
                        .send(Ok(crate::audit::to_entry(seq, record)))
                        .await
                        .is_err()
                    {
                        return; // the caller went away
                    }
                }
                from = last.saturating_add(1);
                if last == u64::MAX {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn feeds(
        &self,
        req: Request<pb::AdminFeedsRequest>,
    ) -> Result<Response<pb::AdminFeedsResponse>, Status> {
        self.authorise(&req).await?;
        let feeds = self
            .broker
            .feed_views()
            .map_err(internal)?
            .into_iter()
            .map(|f| pb::FeedView {
                owner: f.owner,
                feed: f.name,
                ack_floor: f.ack_floor,
                backlog: f.backlog,
                in_flight: f.in_flight,
                connected: f.connected,
                last_ack: f.last_ack.map(timestamp),
                created: Some(timestamp(f.created)),
            })
            .collect();
        Ok(Response::new(pb::AdminFeedsResponse { feeds }))
    }

    async fn check_policy(
        &self,
        req: Request<pb::CheckPolicyRequest>,
    ) -> Result<Response<pb::PolicyChange>, Status> {
        self.authorise(&req).await?;
        let diff = self
            .broker
            .check_policy(&req.get_ref().text)
            .map_err(|errors| {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                Status::invalid_argument(format!("not a valid policy: {}", lines.join("; ")))
            })?;
        Ok(Response::new(change_proto(
            diff,
            String::new(),
            String::new(),
        )))
    }

    async fn reload_policy(
        &self,
        req: Request<pb::ReloadPolicyRequest>,
    ) -> Result<Response<pb::PolicyChange>, Status> {
        self.authorise(&req).await?;
        let change = self.broker.reload_policy().await?;
        Ok(Response::new(change_proto(
            change.diff,
            change.source,
            change.sha256,
        )))
    }

    async fn links(
        &self,
        req: Request<pb::AdminLinksRequest>,
    ) -> Result<Response<pb::AdminLinksResponse>, Status> {
        self.authorise(&req).await?;
        let Some(federation) = &self.federation else {
            return Ok(Response::new(pb::AdminLinksResponse::default()));
        };
        let links = federation
            .reports()
            .map_err(internal)?
            .into_iter()
            .map(|r| pb::LinkView {
                peer: r.name,
                broker: r.broker.to_string(),
                dials: r.dials,
                state: r.state as i32,
                last_contact: r.last_contact.map(timestamp),
                last_error: r.last_error,
                exported_through: r.stored.exported_through,
                backlog_out: r.backlog_out,
                exported: r.stored.exported,
                duplicates: r.stored.duplicates,
                refused_by_peer: r.stored.refused_by_peer,
                imported: r.stored.imported,
                refused: r.stored.refused,
                missed: r.stored.missed,
            })
            .collect();
        Ok(Response::new(pb::AdminLinksResponse { links }))
    }

    async fn nodes(
        &self,
        req: Request<pb::AdminNodesRequest>,
    ) -> Result<Response<pb::AdminNodesResponse>, Status> {
        self.authorise(&req).await?;
        let nodes = self
            .connections
            .list()
            .into_iter()
            .map(|c| pb::ConnectedNode {
                urn: c.node.map(|n| n.to_string()).unwrap_or_default(),
                remote: c.remote.to_string(),
                since: Some(timestamp(c.since)),
            })
            .collect();
        Ok(Response::new(pb::AdminNodesResponse { nodes }))
    }

    async fn stats(
        &self,
        req: Request<pb::AdminStatsRequest>,
    ) -> Result<Response<pb::AdminStatsResponse>, Status> {
        self.authorise(&req).await?;
        let stats = self.broker.log_stats().map_err(internal)?;
        let feeds = self.broker.feed_views().map_err(internal)?;
        let policy = self.broker.policy();
        Ok(Response::new(pb::AdminStatsResponse {
            head_seq: stats.head.0,
            first_seq: stats.first.map_or(0, |s| s.0),
            log_bytes: stats.bytes,
            feeds: feeds.len() as u64,
            feeds_connected: feeds.iter().filter(|f| f.connected).count() as u64,
            connections: self.connections.list().len() as u64,
            audit_records: stats.audit_records,
            started: Some(timestamp(self.started)),
            policy_open: policy.is_open(),
            agreements: policy.agreements().len() as u64,
            writes: self.broker.watch_writes().borrow().to_string(),
            disk_free_bytes: self.broker.disk().0.unwrap_or(0),
            disk_reserve_bytes: self.broker.disk().1,
        }))
    }
}
