//! The tonic adapter: every gRPC service and the setup they share. The core
//! ([`crate::broker`]) never sees tonic; here requests become core calls
//! and core results (and errors) become responses and statuses.
//!
//! | module | owns |
//! |---|---|
//! | [`broker`] | `liaison.v1.Broker`: publish, history, receipts, WhoAmI |
//! | [`publish`] | `PublishStream`: one answer per request, even an undecodable one |
//! | [`subscribe`] | `Subscribe`: a feed of the core as a stream |
//! | [`admin`] | `liaison.v1.Admin`: feeds, nodes, totals, audit trail |
//! | [`agent`] | `liaison.v1.Agent`: an agent's link and queues |
//! | [`federation`] | `liaison.v1.Federation`: the accepting side of a link with a peer broker |
//! | [`status`] | core errors as gRPC statuses, in one place |
//! | [`limits`] | the message-size limit, answered with RESOURCE_EXHAUSTED |
//! | [`serve`] | what `serve` and `agent` both run: limits, health, reflection, serving until shutdown |

pub mod admin;
pub mod agent;
pub mod broker;
pub mod federation;
pub mod limits;
pub mod publish;
pub mod serve;
mod status;
mod subscribe;

use tonic::{Request, Status};

pub use admin::AdminService;
pub use agent::AgentService;
pub use broker::BrokerService;

use crate::broker::Broker;
use crate::identity::NodeId;
use crate::tls::Peer;

/// The caller's identity, from the certificate of its connection.
///
/// # Errors
/// `UNAUTHENTICATED` naming what is wrong with the certificate.
pub fn caller<T>(req: &Request<T>) -> Result<NodeId, Status> {
    match req.extensions().get::<Peer>() {
        Some(Peer {
            link: Some(peer), ..
        }) => Err(Status::unauthenticated(format!(
            "this certificate was issued by the CA of federation peer {peer}: it is valid for that peer's federation link only, never as a node"
        ))),
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
