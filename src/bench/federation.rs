//! `liaison bench federation`: two national brokers on loopback, each with
//! its own PKI and policy, linked as the README's walkthrough links them.
//!
//! 1. Backlog: `count` alerts are published to Tajikistan's broker while
//!    Afghanistan's is down; Afghanistan's then starts, and the figure is
//!    the rate from its first delivery to an Afghan feed to its last (and
//!    the time from its start to the first).
//! 2. Latency: with the link up, `rate` alerts a second for `secs` go to
//!    Tajikistan's broker; an Afghan feed measures publish → delivery,
//!    across both brokers and the link.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::workloads::{open_request, publish_at_rate, receive};
use super::{BenchResult, Report, alert};
use liaison::client;
use liaison::federation::PeerConfig;
use liaison::identity::{CountryCode, NodeId};
use liaison::pki;
use liaison::proto as pb;
use liaison::server::{self, ServeConfig, ServeError};
use liaison::tls::TlsFiles;

const POLICY: &str = r#"
[[node]]
match = "TJ"
role = "post"

[[node]]
match = "AF"
role = "liaison_office"

[[agreement]]
between = ["TJ", "AF"]
categories = ["*"]
max_tlp = "amber"
exercises = true
"#;

/// One state's broker of the bench.
struct State {
    dir: PathBuf,
    country: &'static str,
    config: ServeConfig,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), ServeError>>>,
}

impl State {
    fn new(root: &Path, country: &'static str) -> BenchResult<State> {
        let dir = root.join(country.to_ascii_lowercase());
        let certs = dir.join("certs");
        pki::init_for(&certs, &[], Some(CountryCode::parse(country)?), false)?;
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, POLICY)?;
        let mut config =
            ServeConfig::new(TlsFiles::in_dir(&certs, pki::BROKER_NAME), dir.join("data"));
        config.policy_file = Some(policy);
        config.broker.retention.max_age = None;
        config.shutdown_grace = Duration::from_secs(2);
        config.federation.link.backoff_min = Duration::from_millis(20);
        config.federation.link.backoff_max = Duration::from_millis(100);
        Ok(State {
            dir,
            country,
            config,
            shutdown: CancellationToken::new(),
            handle: None,
        })
    }

    fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    fn peer(&self, name: &str, url: Option<String>) -> BenchResult<PeerConfig> {
        let broker = pki::broker_identity(CountryCode::parse(self.country)?);
        Ok(PeerConfig {
            name: name.into(),
            countries: vec![broker.country()],
            broker,
            ca: self.certs().join(pki::CA_CERT),
            crl: None,
            url,
        })
    }

    async fn start(&mut self, addr: SocketAddr) -> BenchResult<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        self.shutdown = CancellationToken::new();
        self.handle = Some(tokio::spawn(server::run(
            listener,
            self.config.clone(),
            self.shutdown.clone(),
        )));
        Ok(addr)
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }

    async fn client(
        &self,
        addr: SocketAddr,
        name: &str,
    ) -> BenchResult<pb::broker_client::BrokerClient<tonic::transport::Channel>> {
        let files = TlsFiles::in_dir(&self.certs(), name);
        if !files.cert.exists() {
            let node = NodeId::new(self.country, "bench", name)?;
            pki::issue_node(&self.certs(), &node, name, 1, false)?;
        }
        Ok(client::connect(&format!("https://{addr}"), Some(&files)).await?)
    }
}

/// Runs both phases; see the module documentation.
///
/// # Errors
/// When a broker cannot be started or reached.
pub async fn federation(count: u64, rate: u64, secs: u64, size: usize) -> BenchResult<Report> {
    let root = std::env::temp_dir().join(format!(
        "liaison-bench-federation-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let result = run(&root, count, rate, secs, size).await;
    let _ = std::fs::remove_dir_all(&root);
    result
}

async fn run(root: &Path, count: u64, rate: u64, secs: u64, size: usize) -> BenchResult<Report> {
    let mut report = Report::new(
        "federation",
        json!({"count": count, "rate": rate, "secs": secs, "size": size}),
    );
    let (mut tj, mut af) = (State::new(root, "TJ")?, State::new(root, "AF")?);
    tj.config.federation.peers = vec![af.peer("af", None)?];
    af.config.federation.peers = vec![tj.peer("tj", None)?];
    // Afghanistan's address first, so that Tajikistan knows where to dial.
    let af_addr = af.start(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    af.stop().await;
    tj.config.federation.peers[0].url = Some(format!("https://{af_addr}"));
    let tj_addr = tj.start(SocketAddr::from(([127, 0, 0, 1], 0))).await?;

    // 1. The backlog, published while Afghanistan is down.
    let mut publisher = tj.client(tj_addr, "publisher").await?;
    let batch: Vec<pb::PublishRequest> = (0..count)
        .map(|_| pb::PublishRequest {
            alert: Some(alert(size)),
        })
        .collect();
    let mut answers = publisher
        .publish_stream(tokio_stream::iter(batch))
        .await?
        .into_inner();
    while answers.message().await?.is_some() {}
    let started = Instant::now();
    af.start(af_addr).await?;
    let mut office = af.client(af_addr, "office").await?;
    let (ack_tx, ack_rx) = tokio::sync::mpsc::channel(1024);
    ack_tx
        .send(open_request("", 1024, true))
        .await
        .map_err(|_| "subscriber closed")?;
    let mut deliveries = office
        .subscribe(ReceiverStream::new(ack_rx))
        .await?
        .into_inner();
    deliveries.message().await?; // opened
    let (first, last, got) = drain(&mut deliveries, &ack_tx, count).await?;
    let first_after = first.map_or(Duration::ZERO, |f| f.duration_since(started));
    let span = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f),
        _ => Duration::ZERO,
    };
    report.count = got;
    report.elapsed = span;
    report.extra.insert(
        "backlog_first_delivery_ms".into(),
        json!(first_after.as_millis()),
    );
    report.extra.insert(
        "backlog_total_ms".into(),
        json!((first_after + span).as_millis()),
    );

    // 2. Latency at `rate`, the link up.
    let total = rate.max(1) * secs;
    let receiver = tokio::spawn(receive(
        deliveries,
        ack_tx,
        total,
        1,
        Duration::from_secs(30),
    ));
    let acks = publish_at_rate(&mut publisher, rate, total, size).await?;
    let (got, hist) = receiver.await??;
    report.latency = hist;
    report.extra.insert("latency_deliveries".into(), json!(got));
    report.extra.insert(
        "publish_ack_p99_us".into(),
        json!(acks.value_at_quantile(0.99)),
    );
    tj.stop().await;
    af.stop().await;
    Ok(report)
}

/// Takes `count` deliveries, acknowledging in batches; when the first and
/// the last came, and how many.
async fn drain(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
    acks: &tokio::sync::mpsc::Sender<pb::SubscribeRequest>,
    count: u64,
) -> BenchResult<(Option<Instant>, Option<Instant>, u64)> {
    let (mut first, mut last, mut got) = (None, None, 0u64);
    let mut pending = Vec::new();
    while got < count {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(60), stream.message()).await?
        else {
            break;
        };
        let Some(pb::subscribe_response::Event::Delivery(d)) = msg.event else {
            continue;
        };
        let Some(record) = d.record else { continue };
        let now = Instant::now();
        first.get_or_insert(now);
        last = Some(now);
        got += 1;
        pending.push(record.seq);
        if pending.len() >= 256 || got == count {
            let seqs = std::mem::take(&mut pending);
            let ack = pb::SubscribeRequest {
                request: Some(pb::subscribe_request::Request::Ack(pb::Ack { seqs })),
            };
            if acks.send(ack).await.is_err() {
                break;
            }
        }
    }
    Ok((first, last, got))
}
