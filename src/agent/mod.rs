//! `liaison agent`: store-and-forward for a post on an intermittent link.
//!
//! The agent is a small broker of its own (same store, same core, same gRPC
//! `Broker` service on a local listener) plus two link tasks:
//!
//! - the [uplink](uplink) drains the outbox — every local publish is queued
//!   there in the same atomic commit that stores it — to the upstream
//!   broker over `PublishStream`, priority alerts first;
//! - the [downlink](downlink) follows a durable feed upstream and writes
//!   each delivery into the local store (the inbox) before acknowledging it.
//!
//! Local callers are the post's own software: on a loopback listener they
//! need no certificate and act as the agent's identity; any other address
//! requires mutual TLS. Upstream, everything carries the agent's certificate.

mod downlink;
pub(crate) mod link;
mod pacing;
mod uplink;

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use downlink::InboxConfig;
pub use link::{Backoff, Link, LinkConfig, Problem};

use crate::broker::{Broker, BrokerConfig};
use crate::client::{self, ClientError};
use crate::grpc::AgentService;
use crate::identity::{IdentityError, NodeId};
use crate::proto::agent_server::AgentServer;
use crate::store::{OutboxLimits, Store, StoreConfig, StoreError};
use crate::tls::{self, TlsError, TlsFiles};

/// Everything `agent` needs besides the listener.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `https://HOST:PORT` of the upstream broker.
    pub upstream: String,
    /// The agent's own certificate (its identity upstream) and the CA.
    pub tls: TlsFiles,
    pub data_dir: PathBuf,
    pub outbox: OutboxLimits,
    pub inbox: InboxConfig,
    pub link: LinkConfig,
    /// Server certificate for a non-loopback local listener (mutual TLS).
    pub listen_tls: Option<TlsFiles>,
    pub broker: BrokerConfig,
    pub store: StoreConfig,
    pub shutdown_grace: Duration,
}

impl AgentConfig {
    pub fn new(upstream: String, tls: TlsFiles, data_dir: PathBuf) -> Self {
        Self {
            upstream,
            tls,
            data_dir,
            outbox: OutboxLimits::default(),
            inbox: InboxConfig::default(),
            link: LinkConfig::default(),
            listen_tls: None,
            broker: BrokerConfig::default(),
            store: StoreConfig::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("the agent's certificate {path}: {source}")]
    Identity {
        path: PathBuf,
        source: IdentityError,
    },
    #[error("upstream: {0}")]
    Upstream(#[from] ClientError),
    #[error(
        "refusing to serve plaintext on {0}: plaintext is only allowed on loopback; \
         give a server certificate for the local listener (--listen-cert/--listen-key)"
    )]
    PlaintextNotLoopback(std::net::SocketAddr),
    #[error("cannot open the store in {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("the local gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the final flush failed: {0}")]
    Flush(StoreError),
}

/// Reads the identity from the first certificate of a PEM file.
///
/// # Errors
/// When the file cannot be read or carries no valid liaison identity.
pub fn identity_of(cert: &std::path::Path) -> Result<NodeId, AgentError> {
    let certs = tls::load_certs(cert)?;
    let leaf = certs.first().ok_or_else(|| AgentError::Identity {
        path: cert.to_owned(),
        source: IdentityError::NoCertificate,
    })?;
    NodeId::from_certificate(leaf).map_err(|source| AgentError::Identity {
        path: cert.to_owned(),
        source,
    })
}

/// Runs the agent on `listener` until `shutdown` is cancelled. [`open`] and
/// [`Opened::serve`] are its two halves, for a caller that announces
/// readiness in between.
///
/// # Errors
/// When the certificates, the store or the local listener cannot be used.
pub async fn run(
    listener: TcpListener,
    config: AgentConfig,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    open(config, shutdown).await?.serve(listener).await
}

/// An agent whose certificate is read and whose store is open and
/// replayed, not serving yet.
pub struct Opened {
    config: AgentConfig,
    identity: NodeId,
    upstream: tonic::transport::Endpoint,
    store: Store,
    broker: Broker,
    shutdown: CancellationToken,
}

/// Reads the agent's identity, prepares the upstream endpoint and opens
/// the store (which replays its write-ahead log).
///
/// # Errors
/// When the certificate or the store cannot be used.
pub async fn open(
    mut config: AgentConfig,
    shutdown: CancellationToken,
) -> Result<Opened, AgentError> {
    let identity = identity_of(&config.tls.cert)?;
    let upstream = client::endpoint(&config.upstream, Some(&config.tls))?
        .connect_timeout(config.link.connect_timeout)
        .http2_keep_alive_interval(config.link.keepalive_interval)
        .keep_alive_timeout(config.link.keepalive_timeout)
        .keep_alive_while_idle(true);
    config.broker.outbox = Some(config.outbox);
    let store = Store::open(&config.data_dir, config.store.clone()).map_err(|source| {
        AgentError::Store {
            path: config.data_dir.clone(),
            source,
        }
    })?;
    let broker = Broker::new(store.clone(), config.broker.clone(), shutdown.child_token());
    Ok(Opened {
        config,
        identity,
        upstream,
        store,
        broker,
        shutdown,
    })
}

impl Opened {
    /// Serves the post on `listener` and runs the link until shutdown.
    ///
    /// # Errors
    /// When the local listener cannot be used or the server fails.
    pub async fn serve(self, listener: TcpListener) -> Result<(), AgentError> {
        let Opened {
            config,
            identity,
            upstream,
            store,
            broker,
            shutdown,
        } = self;
        let local = listener
            .local_addr()
            .map_err(|e| AgentError::Tls(TlsError::Config(e.to_string())))?;
        let listen_tls = match &config.listen_tls {
            Some(files) => Some(tls::server_config(files, &[])?),
            None if local.ip().is_loopback() => None,
            None => return Err(AgentError::PlaintextNotLoopback(local)),
        };
        let link = link::Link::new(&config.upstream);
        let tasks = TaskTracker::new();
        start_links(&tasks, &broker, &store, upstream, &link, &config, &shutdown);
        let mut services = crate::grpc::serve::services(&broker, &shutdown.child_token())
            .await
            .map_err(|e| AgentError::Tls(TlsError::Config(format!("gRPC reflection: {e}"))))?;
        services.router = services
            .router
            .add_service(AgentServer::new(AgentService::new(
                broker.clone(),
                link,
                identity.clone(),
                config.upstream.clone(),
            )));
        info!(%local, %identity, upstream = %config.upstream, data = %config.data_dir.display(), "agent listening");
        let grace = config.shutdown_grace;
        match listen_tls {
            Some(tls_config) => {
                let incoming = tls::incoming(
                    listener,
                    tokio::sync::watch::channel(tls_config).1,
                    shutdown.child_token(),
                    tls::Hooks::default(),
                );
                crate::grpc::serve::serve(services, incoming, &shutdown, grace).await?;
            }
            None => {
                let incoming = tls::incoming_plain(listener, identity, shutdown.child_token());
                crate::grpc::serve::serve(services, incoming, &shutdown, grace).await?;
            }
        }
        tasks.close();
        let _ = tokio::time::timeout(grace, tasks.wait()).await;
        store.close().await.map_err(AgentError::Flush)?;
        info!("agent stopped; store flushed");
        Ok(())
    }
}

/// The agent's background tasks: retention, the uplink, the downlink and
/// the metrics export.
fn start_links(
    tasks: &TaskTracker,
    broker: &Broker,
    store: &Store,
    upstream: tonic::transport::Endpoint,
    link: &link::Link,
    config: &AgentConfig,
    shutdown: &CancellationToken,
) {
    tasks.spawn(broker.clone().run_retention());
    tasks.spawn(uplink::run(
        store.clone(),
        upstream.clone(),
        link.clone(),
        config.link.clone(),
        shutdown.child_token(),
    ));
    tasks.spawn(downlink::run(
        broker.clone(),
        upstream,
        link.clone(),
        config.link.clone(),
        config.inbox.clone(),
        shutdown.child_token(),
    ));
    tasks.spawn(export_metrics(
        store.clone(),
        link.clone(),
        shutdown.child_token(),
    ));
}

/// Publishes the agent's link and queue figures as metrics, once a second.
async fn export_metrics(store: Store, link: link::Link, shutdown: CancellationToken) {
    use crate::metrics as m;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = link.status();
        let state = match status.state {
            crate::proto::LinkState::Up => 1.0,
            crate::proto::LinkState::Down => 2.0,
            crate::proto::LinkState::Refused => 3.0,
            _ => 0.0,
        };
        metrics::gauge!(m::AGENT_LINK_STATE).set(state);
        metrics::counter!(m::AGENT_RECONNECTS).absolute(status.reconnects);
        let Ok(stats) = store.outbox_stats() else {
            continue;
        };
        metrics::gauge!(m::AGENT_OUTBOX_DEPTH).set(stats.depth as f64);
        let age = stats
            .oldest
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(m::AGENT_OUTBOX_OLDEST_SECONDS).set(age);
        metrics::counter!(m::AGENT_FORWARDED).absolute(stats.forwarded);
        metrics::counter!(m::AGENT_EXPIRED).absolute(stats.expired);
        metrics::counter!(m::AGENT_REJECTED).absolute(stats.rejected);
        metrics::counter!(m::AGENT_INBOX).absolute(stats.inbox);
    }
}
