//! What `liaison serve` and `liaison agent` run on their listeners alike:
//! the message-size limit, the Broker service (with its `PublishStream`
//! route), gRPC health and reflection (v1 and v1alpha), and serving until
//! shutdown with a grace period for open connections.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::warn;

use super::broker::BrokerService;
use super::limits::MessageLimit;
use super::publish::PublishStreamRoute;
use crate::broker::Broker;
use crate::proto::broker_server::BrokerServer;
use crate::store::Writes;

/// The layers every service of a listener sits behind.
pub type Layers = tower_layer::Stack<MessageLimit, tower_layer::Identity>;

/// The health-check name of the Broker service.
pub const BROKER_SERVICE: &str = <BrokerServer<BrokerService> as NamedService>::NAME;

/// The largest gRPC message accepted or sent: two alerts of the largest
/// size (a record carries one, plus its envelope) and room for the rest.
pub fn max_message_bytes(max_alert_bytes: usize) -> usize {
    max_alert_bytes.saturating_mul(2).saturating_add(64 * 1024)
}

/// A listener's services before they are served.
pub struct Services {
    pub router: Router<Layers>,
    pub health: HealthReporter,
    /// Whether the store accepts alerts: the Broker service's health.
    broker: Broker,
}

/// The Broker service of `broker`, health and reflection, behind the
/// message-size limit; add the listener's own services to `router`.
///
/// # Errors
/// When the reflection descriptors do not load (a build defect).
pub async fn services(
    broker: &Broker,
    shutdown: &CancellationToken,
) -> Result<Services, tonic_reflection::server::Error> {
    let max_alert_bytes = broker.config().limits.max_alert_bytes;
    let max_message = max_message_bytes(max_alert_bytes);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(BROKER_SERVICE, ServingStatus::Serving)
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Older tools (grpcurl before 1.8, Python's grpcio-reflection) only
    // speak v1alpha.
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    // gzip both ways where the client says it takes it (posts on slow
    // links: docs/links.md); clients that do not are answered as before.
    let broker_service = BrokerServer::new(BrokerService::new(broker.clone(), shutdown.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(MessageLimit {
            max_bytes: max_message,
            max_alert_bytes,
        })
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(PublishStreamRoute::new(
            broker_service,
            broker.clone(),
            shutdown.clone(),
            max_message,
        ));
    Ok(Services {
        router,
        health,
        broker: broker.clone(),
    })
}

/// Serves `router` on `incoming` until `shutdown` is cancelled; then health
/// says NOT_SERVING, and open connections get `grace` to finish before
/// they are dropped. Health also says NOT_SERVING for the Broker service
/// while the store refuses new alerts (the reason is in `Admin.Stats`).
///
/// # Errors
/// When the server fails.
pub async fn serve<I, IO, IE>(
    services: Services,
    incoming: I,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Result<(), tonic::transport::Error>
where
    I: futures::Stream<Item = Result<IO, IE>> + Send,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Services {
        router,
        health,
        broker,
    } = services;
    let serve = router.serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = serve => served?,
        () = deadline => warn!(grace = ?grace, "connections still open after the shutdown grace period; closing them"),
        () = report_health(&health, &broker, shutdown) => {}
    }
    Ok(())
}

/// Keeps the Broker service's health in step with the store and the
/// shutdown; never returns. While alerts are refused for want of space,
/// free space is measured every second, so that the refusal lifts (and
/// health says SERVING again) without waiting for the next publish.
async fn report_health(health: &HealthReporter, broker: &Broker, shutdown: &CancellationToken) {
    let mut writes = broker.watch_writes();
    loop {
        let (status, recheck) = match *writes.borrow_and_update() {
            Writes::Accepting => (ServingStatus::Serving, false),
            Writes::Refused(_) => (ServingStatus::NotServing, true),
            Writes::Stopped(_) => (ServingStatus::NotServing, false),
        };
        health.set_service_status(BROKER_SERVICE, status).await;
        tokio::select! {
            changed = writes.changed() => if changed.is_ok() { continue },
            () = tokio::time::sleep(Duration::from_secs(1)), if recheck => {
                broker.refresh_writes();
                continue;
            }
            () = shutdown.cancelled() => {}
        }
        health
            .set_service_status(BROKER_SERVICE, ServingStatus::NotServing)
            .await;
        std::future::pending::<()>().await;
    }
}
