//! The gRPC adapter: reads the caller's identity from the connection,
//! converts protobuf requests into core calls and core results (and errors)
//! into protobuf responses and gRPC statuses. No broker logic lives here.

use std::pin::Pin;

use futures::stream::{FuturesOrdered, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info_span, warn};

use crate::alert::{AlertId, Rejection, Seq, origin_proto, system_time, timestamp};
use crate::broker::{Broker, BrokerError, FeedEnd, FeedEvent, FeedSpec, ListQuery, PublishAck};
use crate::filter::Filter;
use crate::identity::NodeId;
use crate::proto as pb;
use crate::proto::broker_server::Broker as BrokerApi;
use crate::store::StoreError;
use crate::tls::Peer;

/// How many acknowledgements one PublishStream may await at once.
const STREAM_PIPELINE: usize = 2048;

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Status {
        match e {
            BrokerError::Rejected(r) => Status::invalid_argument(r.to_string()),
            BrokerError::NotFound => Status::not_found("no such alert"),
            BrokerError::Denied(d) => Status::permission_denied(d.to_string()),
            BrokerError::TakenOver => Status::aborted(e.to_string()),
            BrokerError::ShuttingDown => Status::unavailable(e.to_string()),
            BrokerError::Store(StoreError::DiskFull(d)) => Status::resource_exhausted(format!(
                "the broker's disk is full; nothing was stored: {d}"
            )),
            BrokerError::Store(StoreError::Closed) => {
                Status::unavailable("the broker is shutting down")
            }
            BrokerError::Store(e @ StoreError::IdConflict) => Status::already_exists(e.to_string()),
            BrokerError::Store(e @ StoreError::OutboxFull { .. }) => {
                Status::resource_exhausted(e.to_string())
            }
            BrokerError::Store(e) => Status::internal(e.to_string()),
        }
    }
}

fn invalid(field: &str, rule: &str) -> Status {
    Status::invalid_argument(format!("{field}: {rule}"))
}

/// The caller's identity, from the certificate of its connection.
///
/// # Errors
/// `UNAUTHENTICATED` naming what is wrong with the certificate.
pub fn caller<T>(req: &Request<T>) -> Result<NodeId, Status> {
    match req.extensions().get::<Peer>() {
        Some(Peer {
            identity: Ok(node), ..
        }) => Ok(node.clone()),
        Some(Peer {
            identity: Err(e), ..
        }) => Err(Status::unauthenticated(e.to_string())),
        None => Err(Status::unauthenticated(
            "no client certificate identifies the caller",
        )),
    }
}

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
        authenticated(&self.broker, req).await
    }
}

/// The caller's identity, as [`caller`]; a certificate without one is also
/// recorded in the audit trail.
///
/// # Errors
/// `UNAUTHENTICATED` naming what is wrong with the certificate.
pub(crate) async fn authenticated<T>(broker: &Broker, req: &Request<T>) -> Result<NodeId, Status> {
    let status = match caller(req) {
        Ok(node) => return Ok(node),
        Err(status) => status,
    };
    let peer = req
        .extensions()
        .get::<Peer>()
        .map_or_else(|| "unknown peer".to_owned(), |p| p.remote.to_string());
    broker.auth_failure(&peer, status.message()).await;
    Err(status)
}

fn ack_proto(ack: &PublishAck) -> pb::PublishResponse {
    pb::PublishResponse {
        id: ack.id.to_string(),
        seq: ack.seq.0,
        duplicate: ack.duplicate,
        received_at: Some(timestamp(ack.received_at)),
    }
}

fn stream_error(index: u64, id: &str, status: &Status) -> pb::PublishStreamResponse {
    pb::PublishStreamResponse {
        index,
        result: Some(pb::publish_stream_response::Result::Error(
            pb::PublishError {
                code: status.code() as i32,
                message: status.message().to_owned(),
                id: id.to_owned(),
            },
        )),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

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

    type PublishStreamStream = ReceiverStream<Result<pb::PublishStreamResponse, Status>>;

    async fn publish_stream(
        &self,
        req: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let node = self.caller(&req).await?;
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_PIPELINE);
        let broker = self.broker.clone();
        let shutdown = self.shutdown.clone();
        let span = info_span!("publish_stream", %node);
        tokio::spawn(pump_publishes(broker, node, inbound, tx, shutdown).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type SubscribeStream = BoxStream<pb::SubscribeResponse>;

    async fn subscribe(
        &self,
        req: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let node = self.caller(&req).await?;
        let mut inbound = req.into_inner();
        let open = match inbound.message().await? {
            Some(pb::SubscribeRequest {
                request: Some(pb::subscribe_request::Request::Open(open)),
            }) => open,
            Some(_) => {
                return Err(Status::failed_precondition(
                    "the first request of Subscribe must be `open`",
                ));
            }
            None => return Err(Status::cancelled("the stream ended before `open`")),
        };
        let spec = FeedSpec::from_proto(&open).map_err(BrokerError::from)?;
        let handle = self.broker.open_feed(node.clone(), spec).await?;
        let o = &handle.opened;
        let opened = pb::SubscribeResponse {
            event: Some(pb::subscribe_response::Event::Opened(pb::FeedOpened {
                feed: o.name.clone().unwrap_or_default(),
                created: o.created,
                ack_floor: o.ack_floor.0,
                head_seq: o.head.0,
                max_in_flight: o.max_in_flight,
                ack_wait: prost_types::Duration::try_from(o.ack_wait).ok(),
            })),
        };
        let span = info_span!("subscribe", %node, feed = %open.feed);
        tokio::spawn(pump_acks(inbound, handle.acks).instrument(span));
        let events = ReceiverStream::new(handle.events).map(|event| match event {
            FeedEvent::Delivery { record, attempt } => Ok(pb::SubscribeResponse {
                event: Some(pb::subscribe_response::Event::Delivery(pb::Delivery {
                    record: Some(record.to_proto()),
                    attempt,
                })),
            }),
            FeedEvent::Ended(FeedEnd::TakenOver) => Err(Status::aborted(
                "the feed was taken over by a newer subscription",
            )),
            FeedEvent::Ended(FeedEnd::ShuttingDown) => {
                Err(Status::unavailable("the broker is shutting down"))
            }
            FeedEvent::Ended(FeedEnd::Denied(reason)) => Err(Status::permission_denied(reason)),
            FeedEvent::Ended(FeedEnd::Failed(e)) => Err(Status::internal(e)),
        });
        let stream = futures::stream::once(async move { Ok(opened) }).chain(events);
        Ok(Response::new(Box::pin(stream)))
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
            let mut changes = broker.store().watch_receipts();
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
        .map_err(|r: Rejection| Status::invalid_argument(r.to_string()))?;
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

/// Reads a PublishStream and answers each alert in order. Submissions happen
/// in stream order (so sequences follow it); up to [`STREAM_PIPELINE`]
/// acknowledgements are awaited at once, so a backlog drains at the speed of
/// group commit rather than one flush per alert.
async fn pump_publishes(
    broker: Broker,
    node: NodeId,
    mut inbound: Streaming<pb::PublishRequest>,
    tx: mpsc::Sender<Result<pb::PublishStreamResponse, Status>>,
    shutdown: CancellationToken,
) {
    type Pending = Pin<Box<dyn Future<Output = pb::PublishStreamResponse> + Send>>;
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut index = 0u64;
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            biased;
            Some(resp) = pending.next(), if !pending.is_empty() => {
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
            () = shutdown.cancelled(), if open => {
                // Stop taking new alerts; answer those already submitted.
                open = false;
            }
            msg = inbound.message(), if open && pending.len() < STREAM_PIPELINE => match msg {
                Ok(Some(req)) => {
                    pending.push_back(submit_one(&broker, &node, index, req).await);
                    index += 1;
                }
                Ok(None) => open = false,
                Err(status) => {
                    debug!(%status, "publish stream broken by the client");
                    open = false;
                }
            },
        }
    }
    if shutdown.is_cancelled() {
        let _ = tx
            .send(Err(Status::unavailable("the broker is shutting down")))
            .await;
    }
}

/// Validates and submits one streamed alert; the returned future yields its
/// answer (acknowledgement or error) once it is known.
async fn submit_one(
    broker: &Broker,
    node: &NodeId,
    index: u64,
    req: pb::PublishRequest,
) -> Pin<Box<dyn Future<Output = pb::PublishStreamResponse> + Send>> {
    let Some(alert) = req.alert else {
        let status = invalid("alert", "is required");
        return Box::pin(std::future::ready(stream_error(index, "", &status)));
    };
    let id = alert.id.clone();
    match broker.submit(node, alert).await {
        Ok(ack) => Box::pin(async move {
            match ack.await {
                Ok(ack) => pb::PublishStreamResponse {
                    index,
                    result: Some(pb::publish_stream_response::Result::Ack(ack_proto(&ack))),
                },
                Err(e) => stream_error(index, &id, &Status::from(e)),
            }
        }),
        Err(e) => {
            let status = Status::from(e);
            if status.code() != tonic::Code::InvalidArgument {
                warn!(%status, %id, "streamed publish failed");
            }
            Box::pin(std::future::ready(stream_error(index, &id, &status)))
        }
    }
}

/// Forwards a subscriber's acknowledgements to its feed until either side
/// goes away.
async fn pump_acks(mut inbound: Streaming<pb::SubscribeRequest>, acks: mpsc::Sender<Vec<u64>>) {
    loop {
        let msg = tokio::select! {
            () = acks.closed() => return,
            msg = inbound.message() => msg,
        };
        match msg {
            Ok(Some(pb::SubscribeRequest {
                request: Some(pb::subscribe_request::Request::Ack(ack)),
            })) => {
                if acks.send(ack.seqs).await.is_err() {
                    return;
                }
            }
            Ok(Some(_)) => debug!("ignoring a second `open` or an empty request on an open feed"),
            Ok(None) => return,
            Err(status) => {
                debug!(%status, "subscriber stream ended");
                return;
            }
        }
    }
}
