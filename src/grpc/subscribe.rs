//! `Subscribe`: the first request opens a feed of the core; the responses
//! are its events; later requests carry acknowledgements.
//!
//! A stream used out of order (no `open` first, a second `open`) is refused
//! with FAILED_PRECONDITION. When the subscriber half-closes, its stream
//! ends only after the feed has processed every acknowledgement sent
//! before and saved its cursor durably ([`crate::broker`]'s feed task does
//! that as it ends), so a clean close loses no acknowledgement even in a
//! crash a moment later.

use std::pin::Pin;

use futures::stream::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::{Instrument, debug, info_span};

use super::status::feed_end;
use crate::broker::{Broker, BrokerError, FeedEvent, FeedOpened, FeedSpec};
use crate::identity::NodeId;
use crate::proto as pb;

/// The responses of one Subscribe stream.
pub type Events = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

/// Reads the `open` request, opens the feed and returns its responses.
///
/// # Errors
/// FAILED_PRECONDITION when the first request is not `open`; the core's
/// refusals.
pub(super) async fn open(
    broker: &Broker,
    node: NodeId,
    mut inbound: Streaming<pb::SubscribeRequest>,
) -> Result<Events, Status> {
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
    let handle = broker.open_feed(node.clone(), spec).await?;
    let opened = opened_proto(&handle.opened);
    let (violation_tx, violation) = oneshot::channel();
    let span = info_span!("subscribe", %node, feed = %open.feed);
    tokio::spawn(pump_acks(inbound, handle.acks, violation_tx).instrument(span));
    let events = ReceiverStream::new(handle.events).map(|event| match event {
        FeedEvent::Delivery { record, attempt } => Ok(pb::SubscribeResponse {
            event: Some(pb::subscribe_response::Event::Delivery(pb::Delivery {
                record: Some(record.to_proto()),
                attempt,
            })),
        }),
        FeedEvent::Ended(end) => Err(feed_end(end)),
    });
    // A protocol violation by the subscriber ends the stream with its
    // status; tonic sends nothing after the first error.
    let violation = futures::stream::once(violation).filter_map(|v| async move { v.ok().map(Err) });
    let stream = futures::stream::once(async move { Ok(opened) })
        .chain(futures::stream::select(events, violation));
    Ok(Box::pin(stream))
}

fn opened_proto(o: &FeedOpened) -> pb::SubscribeResponse {
    pb::SubscribeResponse {
        event: Some(pb::subscribe_response::Event::Opened(pb::FeedOpened {
            feed: o.name.clone().unwrap_or_default(),
            created: o.created,
            ack_floor: o.ack_floor.0,
            head_seq: o.head.0,
            max_in_flight: o.max_in_flight,
            ack_wait: prost_types::Duration::try_from(o.ack_wait).ok(),
        })),
    }
}

/// Forwards a subscriber's acknowledgements to its feed until either side
/// goes away; a second `open` is reported on `violation` and ends the feed.
async fn pump_acks(
    mut inbound: Streaming<pb::SubscribeRequest>,
    acks: mpsc::Sender<Vec<u64>>,
    violation: oneshot::Sender<Status>,
) {
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
            Ok(Some(pb::SubscribeRequest {
                request: Some(pb::subscribe_request::Request::Open(_)),
            })) => {
                let _ = violation.send(Status::failed_precondition(
                    "`open` must be the first request of Subscribe and only the first; \
                     open another stream for another feed",
                ));
                return;
            }
            // A request with no field set (perhaps one this broker does not
            // know yet) changes nothing.
            Ok(Some(_)) => debug!("ignoring an empty request on an open feed"),
            Ok(None) => return,
            Err(status) => {
                debug!(%status, "subscriber stream ended");
                return;
            }
        }
    }
}
