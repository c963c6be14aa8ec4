//! The `liaison.v1.Admin` gRPC service: feeds, connected nodes and totals,
//! for administrator nodes.

use std::time::SystemTime;

use tonic::{Request, Response, Status};

use super::authenticated;
use crate::alert::timestamp;
use crate::broker::Broker;
use crate::proto as pb;
use crate::proto::admin_server::Admin;
use crate::tls::Connections;

pub struct AdminService {
    broker: Broker,
    connections: Connections,
    started: SystemTime,
    federation: Option<crate::federation::Federation>,
}

impl AdminService {
    pub fn new(broker: Broker, connections: Connections) -> Self {
        Self {
            broker,
            connections,
            started: SystemTime::now(),
            federation: None,
        }
    }

    /// The federation links `Links` reports.
    pub fn with_federation(mut self, federation: Option<crate::federation::Federation>) -> Self {
        self.federation = federation;
        self
    }

    /// Administrators only (any node when no policy file is in force).
    async fn authorise<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let node = authenticated(&self.broker, req).await?;
        let policy = self.broker.policy();
        if policy.is_open() || policy.is_administrator(&node) {
            return Ok(());
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

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// Audit records per read of the store while streaming the trail.
const AUDIT_PAGE: usize = 1024;

#[tonic::async_trait]
impl Admin for AdminService {
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
