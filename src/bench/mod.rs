//! `liaison bench`: load generators for the broker and the agent, measured
//! end to end through the public API (mutual TLS, durable acknowledgements).
//!
//! By default a workload starts its own broker (and agent) in a temporary
//! directory on loopback; `publish`, `e2e` and `fanout` can instead target a
//! deployment (`--broker URL` with a node certificate). Latencies go into an
//! HDR histogram; every workload ends with a [`Report`].

mod federation;
mod link;
mod link_jetstream;
mod soak;
mod workloads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use federation::federation;
pub use link::link;
pub use soak::{Soak, soak};
pub use workloads::{drain, e2e, fanout, idle, publish, restart};

use liaison::alert::timestamp;
use liaison::client;
use liaison::identity::NodeId;
use liaison::pki;
use liaison::proto as pb;
use liaison::proto::broker_client::BrokerClient;
use liaison::server::{self, ServeConfig, ServeError};
use liaison::tls::TlsFiles;

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The outcome of a workload.
pub struct Report {
    pub workload: &'static str,
    pub params: Map<String, Value>,
    /// Operations measured (publishes, deliveries, alerts drained).
    pub count: u64,
    pub elapsed: Duration,
    /// Latencies in microseconds (empty for workloads without).
    pub latency: Histogram<u64>,
    /// Workload-specific figures.
    pub extra: Map<String, Value>,
    /// Lines printed after the figures (a timeline), in the text report.
    pub lines: Vec<String>,
}

impl Report {
    pub fn new(workload: &'static str, params: Value) -> Report {
        Report {
            workload,
            params: params.as_object().cloned().unwrap_or_default(),
            count: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            extra: Map::new(),
            lines: Vec::new(),
        }
    }

    pub fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn json(&self) -> Value {
        let q = |p: f64| self.latency.value_at_quantile(p);
        let mut v = json!({
            "workload": self.workload,
            "count": self.count,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "msgs_per_s": self.rate().round(),
            "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999), "max_us": self.latency.max(),
        });
        if let Some(map) = v.as_object_mut() {
            map.extend(self.params.clone());
            map.extend(self.extra.clone());
        }
        v
    }

    pub fn text(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut out = format!(
            "{} ({}): {} in {:.2} s = {:.0}/s",
            self.workload,
            params.join(" "),
            self.count,
            self.elapsed.as_secs_f64(),
            self.rate()
        );
        if !self.latency.is_empty() {
            let q = |p: f64| self.latency.value_at_quantile(p);
            out.push_str(&format!(
                "\nlatency µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                self.latency.max()
            ));
        }
        for (k, v) in &self.extra {
            if self.lines.is_empty() || !v.is_array() {
                out.push_str(&format!("\n{k}: {v}"));
            }
        }
        for line in &self.lines {
            out.push('\n');
            out.push_str(line);
        }
        out
    }
}

/// A histogram of microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .expect("constant bounds are valid for an HDR histogram")
}

/// Microseconds of a duration, at least 1.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The alert the workloads publish: TEST status (so operational feeds never
/// see it), TLP:GREEN, padded to about `size` encoded bytes.
pub fn alert(size: usize) -> pb::Alert {
    let mut a = pb::Alert {
        id: uuid::Uuid::now_v7().to_string(),
        sent: Some(timestamp(SystemTime::now())),
        status: pb::Status::Test as i32,
        msg_type: pb::MsgType::Alert as i32,
        category: pb::Category::Other as i32,
        urgency: pb::Urgency::Unknown as i32,
        severity: pb::Severity::Minor as i32,
        certainty: pb::Certainty::Unknown as i32,
        headline: "liaison bench".into(),
        marking: Some(pb::Marking {
            tlp: pb::Tlp::Green as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let base = prost::Message::encoded_len(&a);
    a.description = "x".repeat(size.saturating_sub(base + 3));
    a
}

/// Where the load goes: a broker started here, or a deployment.
pub struct Target {
    pub url: String,
    tls: Option<TlsFiles>,
    local: Option<Local>,
}

/// A broker the bench started (and owns).
pub struct Local {
    pub dir: PathBuf,
    pub certs: PathBuf,
    pub addr: std::net::SocketAddr,
    /// Whether its store (and a drain's agent's) is encrypted at rest,
    /// with key files in `dir/keys`.
    pub encrypt: bool,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), ServeError>>>,
}

impl Target {
    /// A deployment, reached with one node certificate.
    pub fn remote(url: String, tls: Option<TlsFiles>) -> Target {
        Target {
            url,
            tls,
            local: None,
        }
    }

    /// Starts a broker with a development PKI in a temporary directory.
    ///
    /// # Errors
    /// When the PKI, the port or the store cannot be set up.
    pub async fn local(encrypt: bool) -> BenchResult<Target> {
        let dir = std::env::temp_dir().join(format!(
            "liaison-bench-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let certs = dir.join("certs");
        pki::init(&certs, &[], false)?;
        let mut local = Local {
            dir,
            certs,
            addr: "127.0.0.1:0".parse()?,
            encrypt,
            shutdown: CancellationToken::new(),
            handle: None,
        };
        local.start().await?;
        Ok(Target {
            url: format!("https://{}", local.addr),
            tls: None,
            local: Some(local),
        })
    }

    pub fn local_broker(&mut self) -> Option<&mut Local> {
        self.local.as_mut()
    }

    /// A client; against a local broker, one with its own certificate for
    /// `node` (a node name such as "bench-1").
    ///
    /// # Errors
    /// When the certificate cannot be issued or the broker reached.
    pub async fn client(&self, node: &str) -> BenchResult<BrokerClient<Channel>> {
        let files = match &self.local {
            Some(local) => Some(local.node(node)?),
            None => self.tls.clone(),
        };
        Ok(client::connect(&self.url, files.as_ref()).await?)
    }

    /// Stops a local broker and removes its directory.
    pub async fn finish(mut self) {
        if let Some(mut local) = self.local.take() {
            local.stop().await;
            let _ = std::fs::remove_dir_all(&local.dir);
        }
    }
}

impl Local {
    /// The files of node `name` (issued on first use).
    ///
    /// # Errors
    /// When the name is not a valid node label or issuing fails.
    pub fn node(&self, name: &str) -> BenchResult<TlsFiles> {
        let files = TlsFiles::in_dir(&self.certs, name);
        if !files.cert.exists() {
            let node = NodeId::new("TJ", "bench", name)?;
            pki::issue_node(&self.certs, &node, name, 1, false)?;
        }
        Ok(files)
    }

    /// The key of `whose` store when the bench encrypts.
    pub fn key(&self, whose: &str) -> Option<liaison::store::KeySource> {
        self.encrypt.then(|| {
            liaison::store::KeySource::File(self.dir.join("keys").join(format!("{whose}.key")))
        })
    }

    /// (Re)starts the broker on the same data directory and a new port.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start(&mut self) -> BenchResult<()> {
        self.start_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// (Re)starts the broker on the same data directory, listening on
    /// `addr` (port 0: a new one).
    ///
    /// # Errors
    /// When `addr` cannot be bound.
    pub async fn start_at(&mut self, addr: SocketAddr) -> BenchResult<()> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        self.addr = listener.local_addr()?;
        let mut config = ServeConfig::new(
            TlsFiles::in_dir(&self.certs, pki::BROKER_NAME),
            self.dir.join("data"),
        );
        config.broker.retention.max_age = None;
        config.shutdown_grace = Duration::from_secs(2);
        config.store.key = self.key("broker");
        self.shutdown = CancellationToken::new();
        self.handle = Some(tokio::spawn(server::run(
            listener,
            config,
            self.shutdown.clone(),
        )));
        Ok(())
    }

    /// Stops the broker and waits until its store is closed.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}
