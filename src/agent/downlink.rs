//! The downlink: a durable feed at the upstream broker whose deliveries are
//! written to the agent's inbox (its local store) and only then
//! acknowledged upstream. Local subscribers read the inbox through the
//! agent's own Subscribe, online or not.

use std::pin::Pin;

use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};

use super::link::{self, Backoff, Link, LinkConfig, Problem};
use crate::alert::Alert;
use crate::broker::{Broker, BrokerError};
use crate::proto as pb;
use crate::proto::broker_client::BrokerClient;
use crate::store::StoreError;

/// The upstream feed the inbox follows.
#[derive(Debug, Clone)]
pub struct InboxConfig {
    /// Durable feed name at the upstream broker.
    pub feed: String,
    pub filter: pb::Filter,
    /// Where the feed starts when it is first created upstream.
    pub start: pb::StartPosition,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            feed: "inbox".into(),
            filter: pb::Filter::default(),
            start: pb::StartPosition {
                position: Some(pb::start_position::Position::NewOnly(true)),
            },
        }
    }
}

pub(super) async fn run(
    broker: Broker,
    endpoint: Endpoint,
    link: Link,
    config: LinkConfig,
    inbox: InboxConfig,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(&config);
    loop {
        // A fresh connection per session (see the uplink).
        // Deliveries come gzip-compressed where upstream compresses.
        let client = BrokerClient::new(endpoint.connect_lazy())
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let problem = match session(
            &broker,
            client,
            &link,
            &config,
            &inbox,
            &shutdown,
            &mut backoff,
        )
        .await
        {
            Ok(()) => return, // shutdown
            Err(p) => p,
        };
        link.failed(&problem);
        let delay = backoff.delay(&problem);
        debug!(?delay, "downlink retrying");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

type Stored = Pin<Box<dyn Future<Output = (u64, Result<(), BrokerError>)> + Send>>;

async fn session(
    broker: &Broker,
    mut client: BrokerClient<Channel>,
    link: &Link,
    config: &LinkConfig,
    inbox: &InboxConfig,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), Problem> {
    let (tx, rx) = mpsc::channel(64);
    // The post's own alerts are in its store already: carrying them back
    // down would double the traffic on the scarcest link.
    let filter = pb::Filter {
        exclude_own: true,
        ..inbox.filter.clone()
    };
    let open = pb::OpenFeed {
        feed: inbox.feed.clone(),
        filter: Some(filter),
        start: Some(inbox.start),
        max_in_flight: 256,
        ack_wait: None,
    };
    let closed = || Problem::Down("upstream closed the inbox feed".into());
    tx.send(pb::SubscribeRequest {
        request: Some(pb::subscribe_request::Request::Open(open)),
    })
    .await
    .map_err(|_| closed())?;
    let mut stream = link::open(config, client.subscribe(ReceiverStream::new(rx))).await?;
    // Appends to the inbox in delivery order; each yields the upstream seq to
    // acknowledge once it is on disk here.
    let mut storing: FuturesOrdered<Stored> = FuturesOrdered::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            Some((upstream_seq, stored)) = storing.next(), if !storing.is_empty() => {
                match stored {
                    Ok(()) => {}
                    Err(e) => return Err(Problem::Local(format!("cannot write the inbox: {e}"))),
                }
                let ack = pb::SubscribeRequest {
                    request: Some(pb::subscribe_request::Request::Ack(pb::Ack { seqs: vec![upstream_seq] })),
                };
                tx.send(ack).await.map_err(|_| closed())?;
            }
            msg = stream.message() => {
                let msg = msg.map_err(|s| Problem::of(&s))?.ok_or_else(closed)?;
                link.contact();
                backoff.reset();
                match msg.event {
                    Some(pb::subscribe_response::Event::Delivery(d)) => {
                        storing.push_back(store(broker, d).await);
                    }
                    Some(pb::subscribe_response::Event::Opened(o)) => {
                        debug!(feed = %o.feed, created = o.created, floor = o.ack_floor, "inbox feed open upstream");
                    }
                    None => {}
                }
            }
        }
    }
}

/// Submits one delivery to the inbox; the future resolves once it is stored.
async fn store(broker: &Broker, delivery: pb::Delivery) -> Stored {
    let Some(record) = delivery.record else {
        return Box::pin(std::future::ready((0, Ok(()))));
    };
    let seq = record.seq;
    let provenance = record.provenance;
    let alert = match record.alert.map(Alert::from_stored) {
        Some(Ok(alert)) => alert,
        Some(Err(e)) => {
            // Acknowledge it anyway: redelivering an alert we cannot read
            // would block the feed forever.
            warn!(seq, reason = %e, "upstream delivered an alert this agent cannot read; skipped");
            return Box::pin(std::future::ready((seq, Ok(()))));
        }
        None => return Box::pin(std::future::ready((seq, Ok(())))),
    };
    match broker.submit_from_upstream(alert, provenance).await {
        Ok(pending) => Box::pin(async move {
            match pending.await {
                Err(BrokerError::Store(StoreError::IdConflict)) => {
                    warn!(
                        seq,
                        "upstream delivered an alert whose id a local alert of another origin uses; skipped"
                    );
                    (seq, Ok(()))
                }
                other => (seq, other.map(drop)),
            }
        }),
        Err(e) => Box::pin(std::future::ready((seq, Err(e)))),
    }
}
