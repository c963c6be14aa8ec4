//! Soak: a whole state's posts on one broker for minutes. `nodes` mutual-TLS
//! nodes (one connection each) each publish `rate` alerts a second, and
//! `feeds` durable feeds (one node and connection each) follow them, each
//! filtering one category (so each receives about a ninth of the traffic,
//! as a liaison office does). The broker runs as a child process, so that
//! its resident memory is measured alone. Every `sample` the report notes
//! the broker's resident memory, publish and delivery p99 over the
//! interval, errors and connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{BenchResult, Report, alert, histogram, micros};
use liaison::alert::system_time;
use liaison::identity::NodeId;
use liaison::pki;
use liaison::proto as pb;
use liaison::tls::TlsFiles;

/// What the soak runs.
#[derive(Debug, Clone, Copy)]
pub struct Soak {
    pub nodes: usize,
    pub feeds: usize,
    /// Alerts per second per node.
    pub rate: f64,
    pub secs: u64,
    /// How often a sample is taken.
    pub sample: Duration,
    pub size: usize,
}

/// Counters the workers share with the sampler.
#[derive(Default)]
struct Tally {
    publishes: AtomicU64,
    deliveries: AtomicU64,
    errors: AtomicU64,
    /// Latencies of the current interval (swapped out by the sampler).
    publish: std::sync::Mutex<Option<Histogram<u64>>>,
    delivery: std::sync::Mutex<Option<Histogram<u64>>>,
}

impl Tally {
    fn record(slot: &std::sync::Mutex<Option<Histogram<u64>>>, us: u64) {
        let mut h = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = h.get_or_insert_with(histogram).record(us);
    }

    fn take(slot: &std::sync::Mutex<Option<Histogram<u64>>>) -> Histogram<u64> {
        slot.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .unwrap_or_else(histogram)
    }
}

/// A `liaison serve` child process with a development PKI.
struct Child {
    process: std::process::Child,
    url: String,
    certs: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Child {
    fn start() -> BenchResult<Child> {
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(format!("liaison-soak-{}", std::process::id()));
        let certs = dir.join("certs");
        pki::init(&certs, &[], false)?;
        let mut process = std::process::Command::new(std::env::current_exe()?)
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics", "off"])
            .args(["--retain", "0"])
            .arg("--certs")
            .arg(&certs)
            .arg("--data")
            .arg(dir.join("data"))
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let stdout = process.stdout.take().ok_or("no stdout")?;
        let mut lines = std::io::BufReader::new(stdout);
        let mut line = String::new();
        lines.read_line(&mut line)?;
        std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
        let url = line
            .trim()
            .strip_prefix("liaison: listening on ")
            .ok_or_else(|| format!("the broker did not start: {line:?}"))?
            .to_owned();
        Ok(Child {
            process,
            url,
            certs,
            dir,
        })
    }

    fn node(&self, name: &str) -> BenchResult<TlsFiles> {
        let node = NodeId::new("TJ", "bench", name)?;
        pki::issue_node(&self.certs, &node, name, 1, false)?;
        Ok(TlsFiles::in_dir(&self.certs, name))
    }

    fn resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id())).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The category a node publishes, and a feed follows (1..=9).
fn category(i: usize) -> i32 {
    (i % 9) as i32 + 1
}

/// Runs the soak.
///
/// # Errors
/// When the broker cannot be started or a node cannot connect.
pub async fn soak(s: Soak) -> BenchResult<Report> {
    let mut report = Report::new(
        "soak",
        json!({"nodes": s.nodes, "feeds": s.feeds, "rate": s.rate, "secs": s.secs, "size": s.size}),
    );
    let child = Child::start()?;
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for f in 0..s.feeds {
        let files = child.node(&format!("soak-feed-{f}"))?;
        let client = liaison::client::connect(&child.url, Some(&files)).await?;
        tasks.push(tokio::spawn(follow(
            client,
            category(f),
            tally.clone(),
            stop.clone(),
        )));
    }
    let mut publishers = Vec::new();
    for n in 0..s.nodes {
        let files = child.node(&format!("soak-{n}"))?;
        publishers.push(liaison::client::connect(&child.url, Some(&files)).await?);
    }
    let admin = liaison::client::endpoint(&child.url, Some(&child.node("soak-admin")?))?
        .connect()
        .await?;
    let mut admin = pb::admin_client::AdminClient::new(admin);
    let period = Duration::from_secs_f64(1.0 / s.rate.max(0.001));
    for (n, client) in publishers.into_iter().enumerate() {
        // Spread the nodes over the period, as independent posts would be.
        let offset = period.mul_f64(n as f64 / s.nodes.max(1) as f64);
        tasks.push(tokio::spawn(publish(
            client,
            category(n),
            period,
            offset,
            s.size,
            tally.clone(),
            stop.clone(),
        )));
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(s.sample);
    tick.tick().await;
    let (mut all_publish, mut all_delivery) = (histogram(), histogram());
    while started.elapsed() < Duration::from_secs(s.secs) {
        tick.tick().await;
        let publish = Tally::take(&tally.publish);
        let delivery = Tally::take(&tally.delivery);
        all_publish.add(&publish)?;
        all_delivery.add(&delivery)?;
        let connections = admin
            .stats(pb::AdminStatsRequest {})
            .await
            .map(|r| r.into_inner().connections)
            .unwrap_or(0);
        samples.push(json!({
            "t_s": started.elapsed().as_secs(),
            "rss_mib": child.resident_bytes().unwrap_or(0) as f64 / (1 << 20) as f64,
            "publishes": tally.publishes.load(Ordering::Relaxed),
            "deliveries": tally.deliveries.load(Ordering::Relaxed),
            "publish_p99_us": publish.value_at_quantile(0.99),
            "delivery_p99_us": delivery.value_at_quantile(0.99),
            "errors": tally.errors.load(Ordering::Relaxed),
            "connections": connections,
        }));
    }
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    report.count = tally.publishes.load(Ordering::Relaxed);
    report.elapsed = started.elapsed();
    report.latency = all_publish;
    summarise(&mut report, &samples, &all_delivery, &tally, s);
    Ok(report)
}

fn summarise(
    report: &mut Report,
    samples: &[serde_json::Value],
    delivery: &Histogram<u64>,
    tally: &Tally,
    s: Soak,
) {
    let rss: Vec<f64> = samples
        .iter()
        .filter_map(|v| v["rss_mib"].as_f64())
        .collect();
    let first = rss.first().copied().unwrap_or(0.0);
    let last = rss.last().copied().unwrap_or(0.0);
    let max = rss.iter().copied().fold(0.0, f64::max);
    let connections = samples
        .iter()
        .filter_map(|v| v["connections"].as_u64())
        .max()
        .unwrap_or(0);
    let e = &mut report.extra;
    e.insert(
        "deliveries".into(),
        json!(tally.deliveries.load(Ordering::Relaxed)),
    );
    e.insert(
        "delivery_p99_us".into(),
        json!(delivery.value_at_quantile(0.99)),
    );
    e.insert("errors".into(), json!(tally.errors.load(Ordering::Relaxed)));
    e.insert("rss_first_mib".into(), json!((first * 10.0).round() / 10.0));
    e.insert("rss_last_mib".into(), json!((last * 10.0).round() / 10.0));
    e.insert("rss_max_mib".into(), json!((max * 10.0).round() / 10.0));
    e.insert(
        "connections_per_node".into(),
        json!(connections as f64 / (s.nodes + s.feeds + 1) as f64),
    );
    e.insert("samples".into(), json!(samples));
    report.lines.push(format!(
        "{:>6} {:>9} {:>10} {:>11} {:>12} {:>13} {:>6} {:>6}",
        "t_s",
        "rss_mib",
        "publishes",
        "deliveries",
        "publish_p99",
        "delivery_p99",
        "errors",
        "conns"
    ));
    for v in samples {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        report.lines.push(format!(
            "{:>6} {:>9.1} {:>10} {:>11} {:>10}µs {:>11}µs {:>6} {:>6}",
            n("t_s"),
            v["rss_mib"].as_f64().unwrap_or(0.0),
            n("publishes"),
            n("deliveries"),
            n("publish_p99_us"),
            n("delivery_p99_us"),
            n("errors"),
            n("connections")
        ));
    }
}

/// One post: publishes every `period`, starting after `offset`.
async fn publish(
    mut client: liaison::proto::broker_client::BrokerClient<tonic::transport::Channel>,
    category: i32,
    period: Duration,
    offset: Duration,
    size: usize,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    tokio::select! {
        () = tokio::time::sleep(offset) => {}
        () = stop.cancelled() => return,
    }
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let mut a = alert(size);
        a.category = category;
        let sent = Instant::now();
        match client.publish(pb::PublishRequest { alert: Some(a) }).await {
            Ok(_) => {
                tally.publishes.fetch_add(1, Ordering::Relaxed);
                Tally::record(&tally.publish, micros(sent.elapsed()));
            }
            Err(_) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One liaison office: a durable feed of one category, each delivery
/// acknowledged as it comes.
async fn follow(
    mut client: liaison::proto::broker_client::BrokerClient<tonic::transport::Channel>,
    category: i32,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let (tx, rx) = mpsc::channel(256);
    let open = pb::SubscribeRequest {
        request: Some(pb::subscribe_request::Request::Open(pb::OpenFeed {
            feed: "soak".into(),
            filter: Some(pb::Filter {
                categories: vec![category],
                include_test: true,
                ..Default::default()
            }),
            start: None,
            max_in_flight: 256,
            ack_wait: None,
        })),
    };
    if tx.send(open).await.is_err() {
        return;
    }
    let Ok(response) = client.subscribe(ReceiverStream::new(rx)).await else {
        tally.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut stream = response.into_inner();
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            () = stop.cancelled() => return,
        };
        let record = match msg {
            Ok(Some(pb::SubscribeResponse {
                event: Some(pb::subscribe_response::Event::Delivery(d)),
            })) => d.record,
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => {
                if !stop.is_cancelled() {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        };
        let Some(record) = record else { continue };
        if let Some(sent) = record
            .alert
            .as_ref()
            .and_then(|a| a.sent.as_ref())
            .and_then(system_time)
            && let Ok(latency) = SystemTime::now().duration_since(sent)
        {
            Tally::record(&tally.delivery, micros(latency));
        }
        tally.deliveries.fetch_add(1, Ordering::Relaxed);
        let ack = pb::SubscribeRequest {
            request: Some(pb::subscribe_request::Request::Ack(pb::Ack {
                seqs: vec![record.seq],
            })),
        };
        if tx.send(ack).await.is_err() {
            return;
        }
    }
}
