//! `PublishStream`: one answer per request, in request order, however bad
//! a request is.
//!
//! tonic's generated handler decodes every request with prost and ends the
//! whole stream at the first one that does not decode (32 bytes of 0xFF, a
//! headline that is not UTF-8). The proto promises one response per request
//! and that a refused alert does not end the stream, so this method is
//! served by [`PublishStreamRoute`] instead: it decodes each request on its
//! own ([`LenientDecoder`]) and answers an undecodable one with an
//! INVALID_ARGUMENT error for its index, then goes on. Only what breaks the
//! framing itself (a message over the size limit, a broken HTTP/2 stream)
//! ends the stream, and then with an error status that names the index
//! from which requests were not processed — never with OK while a request
//! is unanswered.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use futures::stream::{FuturesOrdered, Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info_span, warn};

use super::broker::ack_proto;
use crate::broker::{Broker, BrokerError};
use crate::identity::NodeId;
use crate::proto as pb;

/// How many acknowledgements one PublishStream may await at once.
pub(super) const STREAM_PIPELINE: usize = 2048;

const PATH: &str = "/liaison.v1.Broker/PublishStream";

/// One request of a PublishStream: decoded, or why it could not be.
// Requests dominate; boxing them would add an allocation per alert.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Inbound {
    Request(pb::PublishRequest),
    Undecodable(String),
}

/// Decodes each request on its own; a request that is not a valid
/// `PublishRequest` becomes [`Inbound::Undecodable`] instead of an error
/// that would end the stream.
#[derive(Debug, Default)]
pub struct LenientDecoder;

impl Decoder for LenientDecoder {
    type Item = Inbound;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Inbound>, Status> {
        match pb::PublishRequest::decode(&mut *buf) {
            Ok(req) => Ok(Some(Inbound::Request(req))),
            Err(e) => {
                // The rest of this message must not be read as the next one.
                let rest = buf.remaining();
                buf.advance(rest);
                Ok(Some(Inbound::Undecodable(e.to_string())))
            }
        }
    }
}

#[derive(Debug, Default)]
struct LenientCodec;

impl Codec for LenientCodec {
    type Encode = pb::PublishStreamResponse;
    type Decode = Inbound;
    type Encoder = tonic_prost::ProstEncoder<pb::PublishStreamResponse>;
    type Decoder = LenientDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        LenientDecoder
    }
}

/// The `liaison.v1.Broker` service with `PublishStream` served by
/// [`handle`]; every other method goes to the generated server `S`.
#[derive(Clone)]
pub struct PublishStreamRoute<S> {
    inner: S,
    broker: Broker,
    shutdown: CancellationToken,
    max_message: usize,
}

impl<S> PublishStreamRoute<S> {
    pub(super) fn new(
        inner: S,
        broker: Broker,
        shutdown: CancellationToken,
        max_message: usize,
    ) -> Self {
        Self {
            inner,
            broker,
            shutdown,
            max_message,
        }
    }
}

impl<S: NamedService> NamedService for PublishStreamRoute<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for PublishStreamRoute<S>
where
    S: tower_service::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        >,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != PATH {
            return Box::pin(self.inner.call(req));
        }
        let method = Method {
            broker: self.broker.clone(),
            shutdown: self.shutdown.clone(),
        };
        let limit = self.max_message;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(LenientCodec)
                .apply_max_message_size_config(Some(limit), Some(limit))
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                .send_compressed(tonic::codec::CompressionEncoding::Gzip);
            Ok(grpc.streaming(method, req).await)
        })
    }
}

struct Method {
    broker: Broker,
    shutdown: CancellationToken,
}

pub type Answers = ReceiverStream<Result<pb::PublishStreamResponse, Status>>;

impl tonic::server::StreamingService<Inbound> for Method {
    type Response = pb::PublishStreamResponse;
    type ResponseStream = Answers;
    type Future = BoxFuture<Result<Response<Answers>, Status>>;

    fn call(&mut self, req: Request<tonic::Streaming<Inbound>>) -> Self::Future {
        let (broker, shutdown) = (self.broker.clone(), self.shutdown.clone());
        Box::pin(async move {
            let node = super::authenticated(&broker, &req).await?;
            Ok(Response::new(start(
                broker,
                node,
                req.into_inner(),
                shutdown,
            )))
        })
    }
}

/// Starts answering the requests of `inbound`.
pub(super) fn start<S>(
    broker: Broker,
    node: NodeId,
    inbound: S,
    shutdown: CancellationToken,
) -> Answers
where
    S: Stream<Item = Result<Inbound, Status>> + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(STREAM_PIPELINE);
    let span = info_span!("publish_stream", %node);
    tokio::spawn(pump(broker, node, inbound, tx, shutdown).instrument(span));
    ReceiverStream::new(rx)
}

type Pending = Pin<Box<dyn Future<Output = pb::PublishStreamResponse> + Send>>;

/// Reads a PublishStream and answers each request in order. Submissions
/// happen in stream order (so sequences follow it); up to
/// [`STREAM_PIPELINE`] acknowledgements are awaited at once, so a backlog
/// drains at the speed of group commit rather than one flush per alert.
async fn pump<S>(
    broker: Broker,
    node: NodeId,
    mut inbound: S,
    tx: mpsc::Sender<Result<pb::PublishStreamResponse, Status>>,
    shutdown: CancellationToken,
) where
    S: Stream<Item = Result<Inbound, Status>> + Unpin,
{
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut index = 0u64;
    let mut open = true;
    // Why the stream ends without every request answered, if it does.
    let mut cut: Option<Status> = None;
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
                cut = Some(Status::unavailable(format!(
                    "the broker is shutting down; requests from index {index} on were not processed"
                )));
            }
            msg = inbound.next(), if open && pending.len() < STREAM_PIPELINE => match msg {
                Some(Ok(Inbound::Request(req))) => {
                    pending.push_back(submit(&broker, &node, index, req).await);
                    index += 1;
                }
                Some(Ok(Inbound::Undecodable(reason))) => {
                    let status = Status::invalid_argument(format!(
                        "request {index} is not a valid PublishRequest: {reason}"
                    ));
                    pending.push_back(Box::pin(std::future::ready(error(index, "", &status))));
                    index += 1;
                }
                None => open = false,
                Some(Err(status)) => {
                    debug!(%status, index, "publish stream broken");
                    open = false;
                    cut = Some(Status::new(
                        status.code(),
                        format!(
                            "{}; requests from index {index} on were not processed",
                            status.message()
                        ),
                    ));
                }
            },
        }
    }
    if let Some(status) = cut {
        let _ = tx.send(Err(status)).await;
    }
}

/// Validates and submits one streamed alert; the returned future yields its
/// answer (acknowledgement or error) once it is known.
async fn submit(broker: &Broker, node: &NodeId, index: u64, req: pb::PublishRequest) -> Pending {
    let Some(alert) = req.alert else {
        let status = super::status::invalid("alert", "is required");
        return Box::pin(std::future::ready(error(index, "", &status)));
    };
    let id = alert.id.clone();
    match broker.submit(node, alert).await {
        Ok(ack) => Box::pin(async move {
            match ack.await {
                Ok(ack) => pb::PublishStreamResponse {
                    index,
                    result: Some(pb::publish_stream_response::Result::Ack(ack_proto(&ack))),
                },
                Err(e) => refused(index, &id, e),
            }
        }),
        Err(e) => {
            if !matches!(e, BrokerError::Rejected(_)) {
                warn!(error = %e, %id, "streamed publish failed");
            }
            Box::pin(std::future::ready(refused(index, &id, e)))
        }
    }
}

/// The answer for a request the core refused: its status, and for a
/// validation refusal the field and whether it may be accepted later.
fn refused(index: u64, id: &str, e: BrokerError) -> pb::PublishStreamResponse {
    let (field, retry_later) = match &e {
        BrokerError::Rejected(r) => (r.field.clone(), r.retry_later),
        _ => (String::new(), false),
    };
    let mut answer = error(index, id, &Status::from(e));
    if let Some(pb::publish_stream_response::Result::Error(err)) = &mut answer.result {
        err.field = field;
        err.retry_later = retry_later;
    }
    answer
}

fn error(index: u64, id: &str, status: &Status) -> pb::PublishStreamResponse {
    pb::PublishStreamResponse {
        index,
        result: Some(pb::publish_stream_response::Result::Error(
            pb::PublishError {
                code: status.code() as i32,
                message: status.message().to_owned(),
                id: id.to_owned(),
                field: String::new(),
                retry_later: false,
            },
        )),
    }
}
