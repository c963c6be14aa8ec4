//! The `liaison.v1.Broker` service: each call reads the caller's identity
//! from its connection, converts the request into a core call and the
//! result (or error) back. No broker logic lives here. `Subscribe` is in
//! [`super::subscribe`]; `PublishStream` in [`super::publish`].

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info_span};

use super::publish::{self, Inbound};
use super::status::invalid;
use crate::alert::{AlertId, Seq, origin_proto, system_time, timestamp};
use crate::broker::{Broker, ListQuery, PublishAck};
use crate::filter::Filter;
use crate::identity::NodeId;
use crate::proto as pb;
use crate::proto::broker_server::Broker as BrokerApi;

/// The `liaison.v1.Broker` service.
#[derive(Clone)]
pub struct BrokerService {
    broker: Broker,
    shutdown: CancellationToken,
}

impl BrokerService {
    pub fn new(broker: Broker, shutdown: CancellationToken) -> Self {
        Self { broker, shutdown }
    }

    async fn caller<T>(&self, req: &Request<T>) -> Result<NodeId, Status> {
        super::authenticated(&self.broker, req).await
    }
}

pub(super) fn ack_proto(ack: &PublishAck) -> pb::PublishResponse {
    pb::PublishResponse {
        id: ack.id.to_string(),
        seq: ack.seq.0,
        duplicate: ack.duplicate,
        received_at: Some(timestamp(ack.received_at)),
    }
}

#[tonic::async_trait]
impl BrokerApi for BrokerService {
    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let node = self.caller(&req).await?;
        let alert = req
            .into_inner()
            .alert
            .ok_or_else(|| invalid("alert", "is required"))?;
        let span = info_span!("publish", %node, id = %alert.id);
        let ack = self.broker.publish(&node, alert).instrument(span).await?;
        Ok(Response::new(ack_proto(&ack)))
    }

    type PublishStreamStream = publish::Answers;

    /// Served by [`publish::PublishStreamRoute`], which decodes each request
    /// on its own; this is the same pump behind tonic's strict decoding, for
    /// a `BrokerServer` mounted without the route: an undecodable request
    /// then ends the stream with an error naming its index.
    async fn publish_stream(
        &self,
        req: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let node = self.caller(&req).await?;
        let inbound = req.into_inner().map(|r| r.map(Inbound::Request));
        Ok(Response::new(publish::start(
            self.broker.clone(),
            node,
            inbound,
            self.shutdown.clone(),
        )))
    }

    type SubscribeStream = super::subscribe::Events;

    async fn subscribe(
        &self,
        req: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let node = self.caller(&req).await?;
        super::subscribe::open(&self.broker, node, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_alert(
        &self,
        req: Request<pb::GetAlertRequest>,
    ) -> Result<Response<pb::AlertRecord>, Status> {
        let node = self.caller(&req).await?;
        let id: AlertId = req
            .get_ref()
            .id
            .parse()
            .map_err(|_| invalid("id", "must be a UUID"))?;
        let record = self.broker.get(&node, &id)?;
        Ok(Response::new(record.to_proto()))
    }

    async fn list_alerts(
        &self,
        req: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let node = self.caller(&req).await?;
        let query = list_query(req.get_ref())?;
        let page = self.broker.list(&node, &query).await?;
        Ok(Response::new(pb::ListAlertsResponse {
            alerts: page.records.iter().map(|r| r.to_proto()).collect(),
            next_page_token: page.next.map(|s| s.0.to_string()).unwrap_or_default(),
        }))
    }

    async fn acknowledge(
        &self,
        req: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::Receipt>, Status> {
        let node = self.caller(&req).await?;
        let id = alert_id(&req.get_ref().id)?;
        let receipt = self
            .broker
            .acknowledge(&node, &id, &req.get_ref().note)
            .await?;
        Ok(Response::new(receipt.to_proto()))
    }

    type ReceiptsStream = ReceiverStream<Result<pb::Receipt, Status>>;

    async fn receipts(
        &self,
        req: Request<pb::ReceiptsRequest>,
    ) -> Result<Response<Self::ReceiptsStream>, Status> {
        let node = self.caller(&req).await?;
        let id = alert_id(&req.get_ref().id)?;
        let first = self.broker.receipts(&node, &id)?;
        let (tx, rx) = mpsc::channel(64);
        let follow = req.get_ref().follow;
        let broker = self.broker.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // Receipts are never removed; each is sent once.
            let mut sent = std::collections::HashSet::new();
            let mut changes = broker.watch_receipts();
            let mut receipts = first;
            loop {
                for r in receipts {
                    if sent.insert((r.kind, r.recipient.clone(), r.feed.clone()))
                        && tx.send(Ok(r.to_proto())).await.is_err()
                    {
                        return;
                    }
                }
                if !follow {
                    return;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                receipts = match broker.receipts(&node, &id) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let node = self.caller(&req).await?;
        Ok(Response::new(pb::WhoAmIResponse {
            identity: Some(origin_proto(&node)),
        }))
    }
}

fn alert_id(id: &str) -> Result<AlertId, Status> {
    id.parse().map_err(|_| invalid("id", "must be a UUID"))
}

fn list_query(req: &pb::ListAlertsRequest) -> Result<ListQuery, Status> {
    let time = |field: &str, ts: &Option<prost_types::Timestamp>| match ts {
        None => Ok(None),
        Some(t) => system_time(t)
            .map(Some)
            .ok_or_else(|| invalid(field, "must be a valid time after 1970")),
    };
    let filter = Filter::from_proto("filter", &req.filter.clone().unwrap_or_default())
        .map_err(Status::from)?;
    let after = match req.page_token.as_str() {
        "" => None,
        t => Some(Seq(t.parse().map_err(|_| {
            invalid("page_token", "is not a token this broker issued")
        })?)),
    };
    let page_size = match req.page_size {
        0 => 100,
        n @ 1..=1000 => n as usize,
        _ => return Err(invalid("page_size", "must be between 1 and 1000")),
    };
    Ok(ListQuery {
        filter,
        since: time("since", &req.since)?,
        until: time("until", &req.until)?,
        page_size,
        after,
    })
}
