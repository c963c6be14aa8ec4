//! An agent in this process, in front of a [`TestBroker`](super::TestBroker),
//! with fast link timings, and what its status endpoint says.

use std::net::SocketAddr;
use std::time::Duration;

use liaison::client;
use liaison::proto as pb;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Client, PATIENCE, TestBroker, eventually};

/// An agent running in this process, in front of a [`TestBroker`].
pub struct TestAgent {
    pub addr: SocketAddr,
    pub config: liaison::agent::AgentConfig,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), liaison::agent::AgentError>>>,
    _data: TempDir,
}

impl TestAgent {
    /// Starts an agent for node `urn` whose upstream is `upstream` (the
    /// broker itself or a proxy in front of it), with fast link timings.
    pub async fn start(
        broker: &TestBroker,
        upstream: &str,
        urn: &str,
        tune: impl FnOnce(&mut liaison::agent::AgentConfig),
    ) -> TestAgent {
        let data = tempfile::tempdir().expect("tmp");
        let mut config = liaison::agent::AgentConfig::new(
            upstream.to_owned(),
            broker.pki.node(urn),
            data.path().join("agent"),
        );
        config.link.backoff_min = Duration::from_millis(50);
        config.link.backoff_max = Duration::from_millis(400);
        config.link.keepalive_interval = Duration::from_millis(500);
        config.link.keepalive_timeout = Duration::from_millis(500);
        config.link.ack_timeout = Duration::from_secs(2);
        config.shutdown_grace = Duration::from_secs(2);
        config.broker.retention.max_age = None;
        tune(&mut config);
        let mut agent = TestAgent {
            addr: "127.0.0.1:0".parse().expect("addr"),
            config,
            shutdown: CancellationToken::new(),
            handle: None,
            _data: data,
        };
        agent.launch().await;
        agent
    }

    async fn launch(&mut self) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        self.addr = listener.local_addr().expect("addr");
        self.shutdown = CancellationToken::new();
        self.handle = Some(tokio::spawn(liaison::agent::run(
            listener,
            self.config.clone(),
            self.shutdown.clone(),
        )));
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A plaintext client of the agent's local listener (no certificate).
    pub async fn client(&self) -> Client {
        client::connect(&self.url(), None)
            .await
            .expect("connect to agent")
    }

    pub async fn status(&self) -> pb::AgentStatusResponse {
        agent_status(&self.url()).await
    }
}

/// The status of the agent listening at `url`.
pub async fn agent_status(url: &str) -> pb::AgentStatusResponse {
    let channel = client::endpoint(url, None)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    pb::agent_client::AgentClient::new(channel)
        .status(pb::AgentStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

impl TestAgent {
    /// Polls the status until `pred` holds (bounded by [`PATIENCE`]).
    pub async fn wait_until(
        &self,
        what: &str,
        pred: impl Fn(&pb::AgentStatusResponse) -> bool,
    ) -> pb::AgentStatusResponse {
        eventually(&format!("the agent reaches: {what}"), || async {
            let s = self.status().await;
            if pred(&s) { Ok(s) } else { Err(s) }
        })
        .await
    }

    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(PATIENCE, h)
                .await
                .expect("agent stops in time")
                .expect("agent task")
                .expect("agent ran cleanly");
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
