//! Test support for Liaison's integration tests (and anyone testing
//! software against a broker): a broker or an agent in-process on
//! `127.0.0.1:0` with a temporary data directory and certificates generated
//! at test time, or as a `liaison` child process; alert builders; a feed
//! subscriber; [`eventually`], the one bounded polling loop; and [`Cli`], the
//! `--broker --certs --name` a command line repeats.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use liaison::alert::timestamp;
use liaison::broker::Retention;
use liaison::client;
use liaison::identity::NodeId;
use liaison::pki::{self, Ca, LeafSpec};
use liaison::proto as pb;
use liaison::proto::broker_client::BrokerClient;
use liaison::server::{self, ServeConfig, ServeError};
use liaison::tls::TlsFiles;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

mod agent;
pub mod console;
pub mod federation;
mod process;
pub use agent::{TestAgent, agent_status};
pub use process::{AgentProcess, ServeProcess, run_to_exit};

/// Upper bound for anything a test waits for; reaching it is a failure, not
/// a timing assumption.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The `liaison` binary of the build the running test belongs to (cargo
/// builds it before a package's integration tests; they run from
/// `target/<profile>/deps`).
pub fn liaison_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("deps directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("liaison")
}

/// Polls `check` until it yields `Ok`, at most for [`PATIENCE`]; the test
/// fails naming `what` and the last `Err` (what was seen instead)
/// otherwise. Readiness by observation, not by sleeping a guessed time.
pub async fn eventually<T, E, F, Fut>(what: &str, mut check: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened within {PATIENCE:?}: {what}; last seen: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `liaison` command line run in a directory, optionally as a node of
/// a broker (the `--broker URL --certs D --name N` every client command
/// repeats).
#[derive(Debug, Clone)]
pub struct Cli {
    dir: PathBuf,
    conn: Vec<String>,
}

impl Cli {
    /// Commands run in `dir`.
    pub fn new(dir: &Path) -> Cli {
        Cli {
            dir: dir.to_owned(),
            conn: Vec::new(),
        }
    }

    /// The same, as node `name` (certificate `certs/name.*`) of `broker`.
    pub fn node(&self, broker: &str, certs: &str, name: &str) -> Cli {
        Cli {
            dir: self.dir.clone(),
            conn: ["--broker", broker, "--certs", certs, "--name", name]
                .map(String::from)
                .to_vec(),
        }
    }

    /// Runs `liaison ARGS` (plus the node's flags).
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(liaison_bin())
            .args(args)
            .args(&self.conn)
            .current_dir(&self.dir)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run liaison")
    }

    /// Runs it and returns its standard output; fails the test (with both
    /// outputs) when the command fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "liaison {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }
}

pub type Client = BrokerClient<Channel>;

/// A development PKI in a temporary directory.
pub struct Pki {
    pub dir: TempDir,
    pub ca: Ca,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        pki::init(dir.path(), &[], false).expect("pki init");
        let ca = Ca::load(dir.path()).expect("load ca");
        Pki { dir, ca }
    }

    /// A state's national PKI: its broker's certificate carries
    /// `urn:liaison:<CC>:liaison:broker`.
    pub fn national(country: &str) -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let cc = liaison::identity::CountryCode::parse(country).expect("country");
        pki::init_for(dir.path(), &[], Some(cc), false).expect("pki init");
        let ca = Ca::load(dir.path()).expect("load ca");
        Pki { dir, ca }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.path().join(pki::CA_CERT)
    }

    /// Issues (once) a certificate for `urn` and returns its files.
    pub fn node(&self, urn: &str) -> TlsFiles {
        let name = urn.replace(':', "_");
        let files = TlsFiles::in_dir(self.path(), &name);
        if !files.cert.exists() {
            let node: NodeId = urn.parse().expect("valid urn");
            pki::issue_node(self.path(), &node, &name, 30, false).expect("issue");
        }
        files
    }

    /// Writes a certificate made from `spec` (signed by `ca`, or by this PKI's CA).
    pub fn custom(&self, name: &str, spec: &LeafSpec, ca: Option<&Ca>) -> TlsFiles {
        let leaf = ca.unwrap_or(&self.ca).issue(spec).expect("issue custom");
        pki::write_leaf(self.path(), name, &leaf).expect("write");
        TlsFiles::in_dir(self.path(), name)
    }

    pub fn broker_files(&self) -> TlsFiles {
        TlsFiles::in_dir(self.path(), pki::BROKER_NAME)
    }
}

/// A broker running in this process.
pub struct TestBroker {
    pub pki: Pki,
    pub data: TempDir,
    pub addr: SocketAddr,
    config: ServeConfig,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut ServeConfig)) -> TestBroker {
        Self::start_in(Pki::new(), tune).await
    }

    /// A broker using an existing PKI directory.
    pub async fn start_in(pki: Pki, tune: impl FnOnce(&mut ServeConfig)) -> TestBroker {
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = ServeConfig::new(pki.broker_files(), data.path().join("store"));
        config.shutdown_grace = Duration::from_secs(5);
        config.broker.retention = Retention {
            max_age: None,
            ..Retention::default()
        };
        tune(&mut config);
        let mut broker = TestBroker {
            pki,
            data,
            addr: "127.0.0.1:0".parse().expect("addr"),
            config,
            shutdown: CancellationToken::new(),
            handle: None,
        };
        broker.launch().await;
        broker
    }

    /// Starts the broker, on the port it had before when it can (a peer
    /// broker dials that address).
    async fn launch(&mut self) {
        let listener = match TcpListener::bind(self.addr).await {
            Ok(l) => l,
            Err(_) => TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        };
        self.addr = listener.local_addr().expect("addr");
        self.shutdown = CancellationToken::new();
        let config = self.config.clone();
        let token = self.shutdown.clone();
        self.handle = Some(tokio::spawn(server::run(listener, config, token)));
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// A connected client for the node `urn` (certificate issued on demand).
    pub async fn client(&self, urn: &str) -> Client {
        client::connect(&self.url(), Some(&self.pki.node(urn)))
            .await
            .expect("connect")
    }

    /// Shuts the broker down and waits until it has flushed and released
    /// its store.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(PATIENCE, h)
                .await
                .expect("broker stops in time")
                .expect("broker task")
                .expect("broker ran cleanly");
        }
    }

    /// Stops the broker and starts it again on the same data and certificates
    /// (on the same port when it is still free).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    /// Changes the configuration the next `restart` uses.
    pub fn reconfigure(&mut self, tune: impl FnOnce(&mut ServeConfig)) {
        tune(&mut self.config);
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn take_handle(&mut self) -> Option<JoinHandle<Result<(), ServeError>>> {
        self.handle.take()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub const TJ_POST: &str = "urn:liaison:TJ:border-guard:ishkashim";
pub const TJ_POST_2: &str = "urn:liaison:TJ:border-guard:khorog";
pub const TJ_CUSTOMS: &str = "urn:liaison:TJ:customs:dushanbe";
pub const AF_OFFICE: &str = "urn:liaison:AF:border-police:sher-khan";
pub const UZ_OFFICE: &str = "urn:liaison:UZ:border-troops:termez";
pub const KG_CENTRE: &str = "urn:liaison:KG:border-service:bishkek";

/// The identity of a state's national broker (`urn:liaison:<CC>:liaison:broker`).
pub fn broker_of(country: &str) -> NodeId {
    pki::broker_identity(liaison::identity::CountryCode::parse(country).expect("country"))
}

/// Logs of the code under test, with `RUST_LOG`, through the test harness.
pub fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A valid ACTUAL, TLP:GREEN alert with a fresh id.
pub fn alert(category: pb::Category, headline: &str) -> pb::Alert {
    pb::Alert {
        id: uuid::Uuid::now_v7().to_string(),
        sent: Some(timestamp(SystemTime::now())),
        status: pb::Status::Actual as i32,
        msg_type: pb::MsgType::Alert as i32,
        category: category as i32,
        urgency: pb::Urgency::Expected as i32,
        severity: pb::Severity::Severe as i32,
        certainty: pb::Certainty::Likely as i32,
        headline: headline.to_owned(),
        marking: Some(pb::Marking {
            tlp: pb::Tlp::Green as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub async fn publish(client: &mut Client, alert: pb::Alert) -> pb::PublishResponse {
    client
        .publish(pb::PublishRequest { alert: Some(alert) })
        .await
        .expect("publish accepted")
        .into_inner()
}

pub fn open(feed: &str, filter: pb::Filter) -> pb::OpenFeed {
    pb::OpenFeed {
        feed: feed.to_owned(),
        filter: Some(filter),
        start: None,
        max_in_flight: 0,
        ack_wait: None,
    }
}

pub fn start_all() -> Option<pb::StartPosition> {
    Some(pb::StartPosition {
        position: Some(pb::start_position::Position::All(true)),
    })
}

/// One open Subscribe stream.
pub struct Subscriber {
    tx: Option<mpsc::Sender<pb::SubscribeRequest>>,
    stream: tonic::Streaming<pb::SubscribeResponse>,
    pub opened: pb::FeedOpened,
}

impl Subscriber {
    pub async fn open(client: &mut Client, open: pb::OpenFeed) -> Subscriber {
        Self::try_open(client, open).await.expect("feed opens")
    }

    pub async fn try_open(
        client: &mut Client,
        open: pb::OpenFeed,
    ) -> Result<Subscriber, tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::SubscribeRequest {
            request: Some(pb::subscribe_request::Request::Open(open)),
        })
        .await
        .expect("send open");
        let mut stream = client
            .subscribe(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = stream.message().await?.expect("opened event");
        let Some(pb::subscribe_response::Event::Opened(opened)) = first.event else {
            panic!("first event is not `opened`: {first:?}");
        };
        Ok(Subscriber {
            tx: Some(tx),
            stream,
            opened,
        })
    }

    /// The next delivery (fails the test if none comes within [`PATIENCE`]).
    pub async fn next(&mut self) -> pb::Delivery {
        match tokio::time::timeout(PATIENCE, self.stream.message()).await {
            Ok(Ok(Some(pb::SubscribeResponse {
                event: Some(pb::subscribe_response::Event::Delivery(d)),
            }))) => d,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    /// The next event, or the status that ended the stream.
    pub async fn next_event(&mut self) -> Result<Option<pb::SubscribeResponse>, tonic::Status> {
        tokio::time::timeout(PATIENCE, self.stream.message())
            .await
            .expect("an event within the patience bound")
    }

    pub async fn ack(&mut self, seqs: &[u64]) {
        let tx = self.tx.as_ref().expect("stream still open");
        tx.send(pb::SubscribeRequest {
            request: Some(pb::subscribe_request::Request::Ack(pb::Ack {
                seqs: seqs.to_vec(),
            })),
        })
        .await
        .expect("send ack");
    }

    /// Half-closes and waits for the broker to end the stream, so that every
    /// ack sent before has been processed.
    pub async fn close(mut self) {
        self.tx = None;
        while let Ok(Some(_)) = self.next_event().await {}
    }
}

pub fn seq_of(d: &pb::Delivery) -> u64 {
    d.record.as_ref().expect("record").seq
}

pub fn headline_of(d: &pb::Delivery) -> String {
    d.record
        .as_ref()
        .and_then(|r| r.alert.as_ref())
        .map(|a| a.headline.clone())
        .expect("alert")
}

/// The receipts of alert `id` as `client` may list them now.
///
/// # Errors
/// The broker's refusal, as text (for [`eventually`]).
pub async fn receipts(client: &mut Client, id: &str) -> Result<Vec<pb::Receipt>, String> {
    use tokio_stream::StreamExt;
    client
        .receipts(pb::ReceiptsRequest {
            id: id.to_owned(),
            follow: false,
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .map_err(|e| e.to_string())
}

/// Every alert the broker holds that `viewer` may see, oldest first.
pub async fn broker_alerts(client: &mut Client) -> Vec<pb::AlertRecord> {
    let mut out = Vec::new();
    let mut req = pb::ListAlertsRequest {
        page_size: 1000,
        ..Default::default()
    };
    loop {
        let page = client
            .list_alerts(req.clone())
            .await
            .expect("list")
            .into_inner();
        out.extend(page.alerts);
        if page.next_page_token.is_empty() {
            return out;
        }
        req.page_token = page.next_page_token;
    }
}

/// Waits (bounded) until the broker holds `n` alerts visible to `client`.
pub async fn wait_for_broker_alerts(client: &mut Client, n: usize) -> Vec<pb::AlertRecord> {
    let client = client.clone();
    eventually(&format!("the broker holds {n} alerts"), || {
        let mut client = client.clone();
        async move {
            let alerts = broker_alerts(&mut client).await;
            if alerts.len() >= n {
                Ok(alerts)
            } else {
                Err(format!("{} alerts", alerts.len()))
            }
        }
    })
    .await
}

pub fn headlines(records: &[pb::AlertRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.alert.as_ref().expect("alert").headline.clone())
        .collect()
}

/// Publishes many alerts over one PublishStream; every one must be acknowledged.
pub async fn publish_many(client: &mut Client, alerts: Vec<pb::Alert>) -> Vec<pb::PublishResponse> {
    use tokio_stream::StreamExt;
    let n = alerts.len();
    let requests = tokio_stream::iter(
        alerts
            .into_iter()
            .map(|a| pb::PublishRequest { alert: Some(a) }),
    );
    let mut answers = client
        .publish_stream(requests)
        .await
        .expect("stream")
        .into_inner();
    let mut acks = Vec::with_capacity(n);
    while let Some(answer) = answers.next().await {
        match answer.expect("answer").result {
            Some(pb::publish_stream_response::Result::Ack(ack)) => acks.push(ack),
            other => panic!("alert refused: {other:?}"),
        }
    }
    assert_eq!(acks.len(), n);
    acks
}

/// The file name `Pki::node` gives a node's certificate.
pub fn cert_name(urn: &str) -> String {
    urn.replace(':', "_")
}
