//! `liaison serve`: wires the store, the broker core, mutual TLS and the gRPC
//! services together and runs them until shutdown.
//!
//! [`run`] takes an already-bound listener, so tests bind `127.0.0.1:0` and
//! start a broker in-process without sleeping.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::broker::{Broker, BrokerConfig, BrokerError};
use crate::federation::{Federation, FederationConfig, FederationError};
use crate::grpc::federation::FederationService;
use crate::grpc::{self, AdminService};
use crate::proto::admin_server::AdminServer;
use crate::proto::federation_server::FederationServer;
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
    /// How long a new connection may take to finish its TLS handshake and
    /// to send its HTTP/2 preface.
    pub connection_timeouts: tls::Timeouts,
    /// The sharing policy file; `None` runs open (development). Reloaded
    /// on SIGHUP and `Admin.ReloadPolicy`.
    pub policy_file: Option<PathBuf>,
    /// How often the TLS files (CA, certificate, key, and `ca.crl` beside
    /// the CA) are checked for changes (SIGHUP reloads at once).
    pub tls_poll: Duration,
    /// Links to other states' brokers (none: a broker on its own).
    pub federation: FederationConfig,
}

impl ServeConfig {
    pub fn new(tls: TlsFiles, data_dir: PathBuf) -> Self {
        Self {
            tls,
            data_dir,
            broker: BrokerConfig::default(),
            store: StoreConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            connection_timeouts: tls::Timeouts::default(),
            policy_file: None,
            tls_poll: Duration::from_secs(2),
            federation: FederationConfig::default(),
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
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error("the policy file {path} is not valid:\n{errors}")]
    Policy { path: PathBuf, errors: String },
    #[error("cannot read the policy file {path}: {source}")]
    PolicyRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("federation: {0}")]
    Federation(#[from] FederationError),
}

/// Runs the broker on `listener` until `shutdown` is cancelled, then closes
/// the open streams, waits up to `shutdown_grace` for connections to finish,
/// and flushes the store. [`open`] and [`Opened::serve`] are its two halves,
/// for a caller that announces readiness in between.
///
/// # Errors
/// When TLS files or the store cannot be opened, or the final flush fails.
pub async fn run(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    open(config, shutdown).await?.serve(listener).await
}

/// A broker whose store is open and replayed, not serving yet.
pub struct Opened {
    config: ServeConfig,
    tls: Arc<rustls::ServerConfig>,
    /// The policy file's text as loaded (`None` without a policy file).
    policy_text: Option<String>,
    store: Store,
    broker: Broker,
    /// The links to other states' brokers, when peers are configured.
    federation: Option<Federation>,
    shutdown: CancellationToken,
}

/// What TLS trusts each federation peer's CA for.
fn peer_trust(config: &ServeConfig) -> Vec<tls::PeerTrust> {
    config
        .federation
        .peers
        .iter()
        .map(crate::federation::PeerConfig::trust)
        .collect()
}

/// Opens everything the broker needs before it can serve: its TLS files,
/// the sharing policy and the store (which replays its write-ahead log).
///
/// # Errors
/// When one of them cannot be read or is not valid.
pub async fn open(config: ServeConfig, shutdown: CancellationToken) -> Result<Opened, ServeError> {
    let tls = tls::server_config(&config.tls, &peer_trust(&config))?;
    let (policy, policy_text) = load_policy(config.policy_file.as_deref())?;
    let store = Store::open(&config.data_dir, config.store.clone()).map_err(|source| {
        ServeError::Store {
            path: config.data_dir.clone(),
            source,
        }
    })?;
    let mut broker_config = config.broker.clone();
    broker_config.policy = Arc::new(policy);
    broker_config.policy_file.clone_from(&config.policy_file);
    let broker = Broker::new(store.clone(), broker_config, shutdown.child_token());
    let federation = if config.federation.peers.is_empty() {
        None
    } else {
        Some(Federation::new(
            broker.clone(),
            config.federation.clone(),
            config.tls.clone(),
        )?)
    };
    Ok(Opened {
        federation,
        config,
        tls,
        policy_text,
        store,
        broker,
        shutdown,
    })
}

/// The policy in the file, with its text; the open policy without a file.
fn load_policy(
    path: Option<&std::path::Path>,
) -> Result<(crate::policy::Policy, Option<String>), ServeError> {
    let Some(path) = path else {
        warn!(
            "no sharing policy (--policy): running OPEN — every node may publish and subscribe every category, and every pair of countries shares everything the markings allow"
        );
        return Ok((crate::policy::Policy::open(), None));
    };
    let text = std::fs::read_to_string(path).map_err(|source| ServeError::PolicyRead {
        path: path.to_owned(),
        source,
    })?;
    let policy = crate::policy::parse(&text).map_err(|errors| ServeError::Policy {
        path: path.to_owned(),
        errors: errors
            .iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n"),
    })?;
    Ok((policy, Some(text)))
}

impl Opened {
    /// The newest sequence in the store.
    pub fn head(&self) -> crate::alert::Seq {
        self.broker.head()
    }

    /// Serves on `listener` until shutdown; see [`run`].
    ///
    /// # Errors
    /// When the server fails, or the final flush does.
    pub async fn serve(self, listener: TcpListener) -> Result<(), ServeError> {
        let Opened {
            config,
            tls,
            policy_text,
            store,
            broker,
            federation,
            shutdown,
        } = self;
        let tasks = TaskTracker::new();
        tasks.spawn(broker.clone().run_retention());
        start_policy(&broker, &config, policy_text, &tasks, &shutdown).await;
        let connections = tls::Connections::default();
        let (tls_tx, tls_rx) = tokio::sync::watch::channel(tls);
        tasks.spawn(watch_tls_files(
            config.tls.clone(),
            peer_trust(&config),
            tls_tx,
            connections.clone(),
            broker.clone(),
            config.tls_poll,
            shutdown.child_token(),
        ));
        let addr = listener.local_addr().ok();
        let incoming = tls::incoming(
            listener,
            tls_rx,
            shutdown.child_token(),
            handshake_hooks(&broker, &connections, config.connection_timeouts, &tasks),
        );
        let mut services = grpc::serve::services(&broker, &shutdown.child_token())
            .await
            .map_err(|e| ServeError::Reflection(e.to_string()))?;
        services.router = services.router.add_service(
            AdminServer::new(
                AdminService::new(broker.clone(), connections)
                    .with_federation(federation.clone())
                    .with_bundles(config.tls.clone()),
            )
            .max_decoding_message_size(crate::bundle::MAX_FILE_BYTES + 4096)
            .max_encoding_message_size(crate::bundle::MAX_FILE_BYTES + 4096),
        );
        if let Some(federation) = &federation {
            services.router = services.router.add_service(
                FederationServer::new(FederationService::new(
                    federation.clone(),
                    shutdown.child_token(),
                ))
                .max_decoding_message_size(crate::federation::dial::MAX_FRAME_BYTES)
                .max_encoding_message_size(crate::federation::dial::MAX_FRAME_BYTES),
            );
            federation.spawn_dialers(&tasks, &shutdown);
        }
        info!(?addr, data = %config.data_dir.display(), head_seq = store.head().0, "broker listening");
        grpc::serve::serve(services, incoming, &shutdown, config.shutdown_grace).await?;
        tasks.close();
        let _ = tokio::time::timeout(config.shutdown_grace, tasks.wait()).await;
        store.close().await.map_err(ServeError::Flush)?;
        info!("broker stopped; store flushed");
        Ok(())
    }
}

/// Records the policy in force and reloads it on SIGHUP (also harmless
/// without a policy file).
async fn start_policy(
    broker: &Broker,
    config: &ServeConfig,
    text: Option<String>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    if let (Some(path), Some(text)) = (&config.policy_file, text) {
        broker
            .policy_at_start(&path.display().to_string(), &text)
            .await;
    }
    tasks.spawn(reload_on_hangup(broker.clone(), shutdown.child_token()));
}

/// What the accept loop reports: refused handshakes go to the audit trail
/// (a task each, tracked, so shutdown waits for their records), open
/// connections to the registry (admin view, revocation).
fn handshake_hooks(
    broker: &Broker,
    connections: &tls::Connections,
    timeouts: tls::Timeouts,
    tasks: &TaskTracker,
) -> tls::Hooks {
    let audit = broker.clone();
    let tasks = tasks.clone();
    let on_refused: tls::RefusalHook = Arc::new(move |remote, reason| {
        let audit = audit.clone();
        tasks.spawn(async move { audit.auth_failure(&remote.to_string(), &reason).await });
    });
    tls::Hooks {
        on_refused: Some(on_refused),
        connections: Some(connections.clone()),
        timeouts,
    }
}

/// Reloads the policy file at every SIGHUP (the TLS files are re-read
/// then too, by their own watcher). Never because the file changed: an
/// editor's half-saved file must not become the policy.
async fn reload_on_hangup(broker: Broker, shutdown: CancellationToken) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = hangup.recv() => {}
        }
        match broker.reload_policy().await {
            // Logged and audited by the core.
            Ok(_) | Err(BrokerError::PolicyRefused { .. }) => {}
            Err(e) => info!("SIGHUP: {e}"),
        }
    }
}

/// Re-reads the TLS files — the CA, the broker's certificate and key, and
/// `ca.crl` beside the CA — every `poll` and at SIGHUP. A changed set is put
/// in force for new handshakes (certificate rotation without a restart), and
/// the open connections of every certificate the list revokes are closed
/// (logged and audited). A set that does not load (a key that does not match
/// its certificate half-way through a rotation, a list that does not parse)
/// is refused and the previous one stays, until the files change again.
async fn watch_tls_files(
    files: TlsFiles,
    peers: Vec<tls::PeerTrust>,
    configs: tokio::sync::watch::Sender<Arc<rustls::ServerConfig>>,
    connections: tls::Connections,
    broker: Broker,
    poll: Duration,
    shutdown: CancellationToken,
) {
    let path = tls::crl_path(&files);
    let watched: Vec<PathBuf> = [&files.ca, &files.cert, &files.key, &path]
        .into_iter()
        .cloned()
        .chain(
            peers
                .iter()
                .flat_map(|p| std::iter::once(p.ca.clone()).chain(p.crl.clone())),
        )
        .collect();
    let read_all =
        || -> Vec<Option<Vec<u8>>> { watched.iter().map(|p| std::fs::read(p).ok()).collect() };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    // The set in force, and a changed set that was refused (not retried,
    // nor logged again, until the files change once more).
    let mut applied = read_all();
    let mut refused = None;
    match revoked_serials(&path) {
        Ok(revoked) => drop(connections.close_revoked(revoked)),
        Err(e) => warn!(error = %e, "cannot list the revoked serial numbers"),
    }
    let mut tick = tokio::time::interval(poll);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {}
        }
        let now = read_all();
        if now == applied || refused.as_ref() == Some(&now) {
            continue;
        }
        let loaded = tls::server_config(&files, &peers)
            .map_err(|e| e.to_string())
            .and_then(|config| Ok((config, revoked_serials(&path).map_err(|e| e.to_string())?)));
        let (config, revoked) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                error!(error = %e, "changed TLS files refused; the previous certificates and revocation list stay in force");
                refused = Some(now);
                continue;
            }
        };
        applied = now;
        refused = None;
        configs.send_replace(config);
        info!(ca = %files.ca.display(), cert = %files.cert.display(), revoked = revoked.len(), "TLS files and revocation list reloaded; new connections use them");
        for conn in connections.close_revoked(revoked) {
            let node = conn
                .node
                .as_ref()
                .map_or_else(|| "(no identity)".to_owned(), ToString::to_string);
            warn!(%node, remote = %conn.remote, "certificate revoked: connection closed");
            broker
                .auth_failure(
                    &conn.remote.to_string(),
                    &format!(
                        "certificate {} of {node} revoked: connection closed",
                        crate::pki::hex(&conn.serial)
                    ),
                )
                .await;
        }
    }
}

/// The serial numbers `ca.crl` revokes (none without the file).
fn revoked_serials(
    path: &std::path::Path,
) -> Result<std::collections::HashSet<Vec<u8>>, crate::pki::PkiError> {
    if !path.exists() {
        return Ok(std::collections::HashSet::new());
    }
    let (entries, _) = crate::pki::read_crl(path)?;
    Ok(entries.into_iter().map(|(serial, _)| serial).collect())
}
