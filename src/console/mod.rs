//! `liaison console`: the liaison officer's web page, served on loopback by
//! a small HTTP server that acts as the officer's node — its certificate,
//! a durable feed of its own — against a broker (`https://…`) or a post's
//! agent (`http://127.0.0.1:7444`). docs/console.md describes it.
//!
//! | module | owns |
//! |---|---|
//! | `http` | the router, the one-time login token and the session cookie, CSRF, the security headers, static assets |
//! | `api` | the JSON API the page calls: alerts, detail, acknowledge, compose, search, status, live events |
//! | `follow` | the durable feed followed upstream, and the live buffer the page's event stream reads |
//! | `view` | what the page is sent of an alert |
//! | `atom` | the feed as CAP-over-Atom for other systems |
//!
//! Everything an alert contains is another agency's input: the page only
//! ever puts it in the DOM as text (no `innerHTML`), under a strict
//! Content-Security-Policy with no inline script and nothing from outside.

mod api;
mod atom;
mod follow;
mod http;
mod view;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::client::{self, ClientError};
use crate::proto::agent_client::AgentClient;
use crate::proto::broker_client::BrokerClient;
use crate::tls::TlsFiles;

/// What the console serves and where it connects.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// The broker (`https://HOST:PORT`) or the post's agent
    /// (`http://127.0.0.1:7444`).
    pub upstream: String,
    /// The officer's certificate, key and CA (none for an agent on
    /// loopback, which takes no certificate).
    pub tls: Option<TlsFiles>,
    /// The durable feed the console follows (its cursor lives upstream).
    pub feed: String,
    /// The one-time token that opens a session ([`login_token`]).
    pub token: String,
    /// The key other systems give to read the CAP-over-Atom feed.
    pub feed_key: String,
}

/// A fresh secret for [`ConsoleConfig::token`] or `feed_key`: 128 random
/// bits, URL-safe.
pub fn login_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("console: {0}")]
    Io(#[from] std::io::Error),
}

/// The console's shared state; a cheap-clone handle.
#[derive(Clone)]
pub(crate) struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    config: ConsoleConfig,
    /// Upstream, connected lazily (a broker that is down shows in status).
    broker: BrokerClient<Channel>,
    /// Set when upstream is an agent.
    agent: Option<AgentClient<Channel>>,
    channel: Channel,
    /// The address the console serves, for the Host and Origin checks.
    addr: SocketAddr,
    /// The login token, until it is used. A std mutex: held for a swap.
    token: Mutex<Option<String>>,
    /// Open sessions: cookie value → CSRF token. A std mutex: held for a
    /// lookup or an insert.
    sessions: Mutex<std::collections::HashMap<String, String>>,
    follow: follow::Follow,
    /// Ends the event streams, so that a shutdown does not wait for pages.
    shutdown: CancellationToken,
}

impl Console {
    fn config(&self) -> &ConsoleConfig {
        &self.inner.config
    }

    fn broker(&self) -> BrokerClient<Channel> {
        self.inner.broker.clone()
    }

    fn is_agent(&self) -> bool {
        self.inner.agent.is_some()
    }
}

/// Serves the console on `listener` until `shutdown`, following the feed
/// upstream meanwhile.
///
/// # Errors
/// When the upstream address or certificate files are unusable, or the
/// listener fails.
pub async fn run(
    listener: TcpListener,
    config: ConsoleConfig,
    shutdown: CancellationToken,
) -> Result<(), ConsoleError> {
    let addr = listener.local_addr()?;
    let channel = client::endpoint(&config.upstream, config.tls.as_ref())?.connect_lazy();
    let broker =
        BrokerClient::new(channel.clone()).max_decoding_message_size(client::MAX_RESPONSE_BYTES);
    let agent = config
        .upstream
        .starts_with("http://")
        .then(|| AgentClient::new(channel.clone()));
    let console = Console {
        inner: Arc::new(Inner {
            token: Mutex::new(Some(config.token.clone())),
            config,
            broker,
            agent,
            channel,
            addr,
            sessions: Mutex::default(),
            follow: follow::Follow::default(),
            shutdown: shutdown.clone(),
        }),
    };
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(follow::run(console.clone(), shutdown.child_token()));
    let app = http::router(console);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(served?)
}

/// A std mutex, poison-tolerant (every critical section here is a field
/// update or a lookup).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
