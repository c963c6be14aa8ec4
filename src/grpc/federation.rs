//! `liaison.v1.Federation`: the accepting side of a federation link. Only
//! a connection whose certificate is a configured peer broker's, issued by
//! that peer's CA, may open it; the session itself is the core's
//! ([`crate::federation::session`]).

use std::pin::Pin;

use futures::Stream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::federation::{Federation, session};
use crate::proto::LinkFrame;
use crate::proto::federation_server;
use crate::tls::Peer;

pub struct FederationService {
    federation: Federation,
    shutdown: CancellationToken,
}

impl FederationService {
    pub fn new(federation: Federation, shutdown: CancellationToken) -> Self {
        Self {
            federation,
            shutdown,
        }
    }
}

type Frames = Pin<Box<dyn Stream<Item = Result<LinkFrame, Status>> + Send>>;

#[tonic::async_trait]
impl federation_server::Federation for FederationService {
    type LinkStream = Frames;

    async fn link(&self, req: Request<Streaming<LinkFrame>>) -> Result<Response<Frames>, Status> {
        let (name, node) = match req.extensions().get::<Peer>() {
            Some(Peer {
                identity: Ok(node),
                link: Some(name),
                ..
            }) => (name.clone(), node.clone()),
            _ => {
                return Err(Status::unauthenticated(
                    "a federation link needs a configured peer broker's certificate, issued by that peer's CA",
                ));
            }
        };
        let peer = self
            .federation
            .peer(&name)
            .filter(|p| p.config.broker == node)
            .ok_or_else(|| {
                Status::unauthenticated(format!("{node} is not a configured peer broker"))
            })?;
        // A link the peer dialed before is replaced; one this side dialed
        // is not.
        let accepted = peer.accept_session(&self.shutdown).await.ok_or_else(|| {
            Status::already_exists(format!(
                "a link with peer {name} is up already (dialed from here)"
            ))
        })?;
        let inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let federation = self.federation.clone();
        tokio::spawn(async move {
            let token = accepted.token.clone();
            if let Err(problem) = session::run(&federation, &peer, inbound, tx, token).await {
                peer.link.failed(&problem);
            }
            drop(accepted);
        });
        let frames = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(frames)))
    }
}
