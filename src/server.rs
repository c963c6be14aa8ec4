//! `liaison serve`: wires the store, the broker core, mutual TLS and the gRPC
//! services together and runs them until shutdown.
//!
//! [`run`] takes an already-bound listener, so tests bind `127.0.0.1:0` and
//! start a broker in-process without sleeping.

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::broker::{Broker, BrokerConfig};
use crate::grpc::BrokerService;
use crate::proto::broker_server::BrokerServer;
use crate::store::{Store, StoreConfig, StoreError};
use crate::tls::{self, TlsError, TlsFiles};

/// Everything `serve` needs besides the listener.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub tls: TlsFiles,
    pub data_dir: PathBuf,
    pub broker: BrokerConfig,
    pub store: StoreConfig,
    /// How long open streams may take to close after shutdown begins.
    pub shutdown_grace: Duration,
}

impl ServeConfig {
    pub fn new(tls: TlsFiles, data_dir: PathBuf) -> Self {
        Self {
            tls,
            data_dir,
            broker: BrokerConfig::default(),
            store: StoreConfig::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot open the store in {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the final flush failed: {0}")]
    Flush(StoreError),
}

/// Runs the broker on `listener` until `shutdown` is cancelled, then closes
/// the open streams, waits up to `shutdown_grace` for connections to finish,
/// and flushes the store.
///
/// # Errors
/// When TLS files or the store cannot be opened, or the final flush fails.
pub async fn run(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let tls_config = tls::server_config(&config.tls)?;
    let store = Store::open(&config.data_dir, config.store.clone()).map_err(|source| {
        ServeError::Store {
            path: config.data_dir.clone(),
            source,
        }
    })?;
    let max_message = config.broker.limits.max_alert_bytes * 2 + 64 * 1024;
    let broker = Broker::new(store.clone(), config.broker.clone(), shutdown.child_token());
    let tasks = TaskTracker::new();
    tasks.spawn(broker.clone().run_retention());

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<BrokerServer<BrokerService>>().await;
    let service = BrokerServer::new(BrokerService::new(broker, shutdown.child_token()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);

    let addr = listener.local_addr().ok();
    let incoming = tls::incoming(listener, tls_config, shutdown.child_token());
    info!(?addr, data = %config.data_dir.display(), head_seq = store.head().0, "broker listening");

    let serve = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let token = shutdown.clone();
    tokio::spawn(async move {
        token.cancelled().await;
        health
            .set_not_serving::<BrokerServer<BrokerService>>()
            .await;
    });
    drain(serve, &shutdown, config.shutdown_grace).await?;
    tasks.close();
    let _ = tokio::time::timeout(config.shutdown_grace, tasks.wait()).await;
    store.close().await.map_err(ServeError::Flush)?;
    info!("broker stopped; store flushed");
    Ok(())
}

/// Runs a tonic server future; once `shutdown` is cancelled, gives open
/// connections `grace` to finish, then drops them.
///
/// # Errors
/// When the server fails.
pub(crate) async fn drain(
    serve: impl Future<Output = Result<(), tonic::transport::Error>>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Result<(), tonic::transport::Error> {
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = serve => served?,
        () = deadline => warn!(grace = ?grace, "connections still open after the shutdown grace period; closing them"),
    }
    Ok(())
}
