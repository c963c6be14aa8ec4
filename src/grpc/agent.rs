//! The `liaison.v1.Agent` gRPC service: the agent's status.

use tonic::{Request, Response, Status};

use crate::agent::Link;
use crate::alert::{origin_proto, timestamp};
use crate::broker::Broker;
use crate::identity::NodeId;
use crate::proto as pb;
use crate::proto::agent_server::Agent;

pub struct AgentService {
    broker: Broker,
    link: Link,
    identity: NodeId,
    upstream: String,
}

impl AgentService {
    pub fn new(broker: Broker, link: Link, identity: NodeId, upstream: String) -> Self {
        Self {
            broker,
            link,
            identity,
            upstream,
        }
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn status(
        &self,
        _req: Request<pb::AgentStatusRequest>,
    ) -> Result<Response<pb::AgentStatusResponse>, Status> {
        let stats = self
            .broker
            .outbox_stats()
            .map_err(|e| Status::internal(e.to_string()))?;
        let link = self.link.status();
        Ok(Response::new(pb::AgentStatusResponse {
            identity: Some(origin_proto(&self.identity)),
            upstream: self.upstream.clone(),
            link_state: link.state as i32,
            last_contact: link.last_contact.map(timestamp),
            last_error: link.last_error,
            reconnects: link.reconnects,
            outbox_depth: stats.depth,
            outbox_bytes: stats.bytes,
            outbox_oldest: stats.oldest.map(timestamp),
            forwarded_total: stats.forwarded,
            expired_total: stats.expired,
            rejected_total: stats.rejected,
            inbox_total: stats.inbox,
            head_seq: self.broker.head().0,
        }))
    }
}
