//! The peer in `liaison bench link --jetstream PATH`: NATS JetStream
//! carrying the same alerts over the same emulated link, in the same
//! sitting, the way NATS recommends for a post with an intermittent link —
//! a leaf node at the post with its own JetStream domain and a stream the
//! post publishes into, and at the centre a hub whose stream *sources*
//! the post's stream across the leaf-node connection (mutual TLS with the
//! bench's PKI, S2 compression as nats-server chooses it for the link).
//!
//! The figures mirror ours: with the link down the backlog is published at
//! the post and acknowledged by the leaf's stream (stored at the post);
//! the link comes up; the hub's stream is polled from inside the centre's
//! namespace (so the polling never crosses the link) until it holds every
//! alert. Three urgent alerts go in at a quarter, half and three quarters
//! (JetStream has no priority: they take their turn). Bytes are counted at
//! the link, as for ours.
//!
//! The client is the NATS text protocol over TCP, the few verbs a bench
//! needs (CONNECT, SUB, PUB with a reply subject, MSG, PING/PONG); the
//! servers are the `nats-server` binary given.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex, mpsc};

use super::BenchResult;
use liaison::linkem::bed::words_alert;
use liaison::linkem::{self, CENTRE_ADDR, EmulatedLink, Side};
use liaison::pki;

const CLIENT_PORT: u16 = 14222;
const LEAF_PORT: u16 = 17422;

/// Runs the JetStream side over a new link of `profile`; the figures'
/// names are those of the link bench.
///
/// # Errors
/// When the servers do not start, or the alerts do not all arrive.
pub async fn jetstream(
    nats_server: &Path,
    write_deadline: Option<Duration>,
    profile: &linkem::Profile,
    count: u64,
    size: usize,
    budget: Duration,
) -> BenchResult<serde_json::Map<String, Value>> {
    // nats-server's write deadline (10 s unless set): a connection whose
    // pending writes do not drain within it is closed as a slow consumer.
    let deadline_conf = write_deadline
        .map(|d| format!("write_deadline: \"{}s\"\n", d.as_secs()))
        .unwrap_or_default();
    let link = EmulatedLink::create(profile.clone())?;
    let dir = TempDir::new()?;
    let certs = dir.path().join("certs");
    pki::init(&certs, &[CENTRE_ADDR.to_owned()], false)?;
    pki::issue_node(
        &certs,
        &"urn:liaison:TJ:post:bench".parse()?,
        "post",
        30,
        false,
    )?;
    let file = |n: &str| certs.join(n).display().to_string();
    let ca = file(pki::CA_CERT);

    let hub_conf = dir.path().join("hub.conf");
    std::fs::write(
        &hub_conf,
        format!(
            r#"{deadline_conf}server_name: hub
listen: 127.0.0.1:{CLIENT_PORT}
jetstream {{ store_dir: "{store}", domain: hub }}
leafnodes {{
  listen: "{CENTRE_ADDR}:{LEAF_PORT}"
  compression: s2_auto
  tls {{ cert_file: "{cert}", key_file: "{key}", ca_file: "{ca}", verify: true, timeout: 10 }}
}}
"#,
            store = dir.path().join("hub").display(),
            cert = file("broker.crt"),
            key = file("broker.key"),
        ),
    )?;
    let leaf_conf = dir.path().join("leaf.conf");
    std::fs::write(
        &leaf_conf,
        format!(
            r#"{deadline_conf}server_name: post
listen: 127.0.0.1:{CLIENT_PORT}
jetstream {{ store_dir: "{store}", domain: post }}
leafnodes {{
  reconnect: 1s
  remotes: [ {{
    url: "tls://{CENTRE_ADDR}:{LEAF_PORT}"
    compression: s2_auto
    tls {{ cert_file: "{cert}", key_file: "{key}", ca_file: "{ca}", timeout: 10 }}
  }} ]
}}
"#,
            store = dir.path().join("leaf").display(),
            cert = file("post.crt"),
            key = file("post.key"),
        ),
    )?;
    let _hub = Server::start(&link, Side::Centre, nats_server, &hub_conf)?;
    let _leaf = Server::start(&link, Side::Post, nats_server, &leaf_conf)?;
    let client = SocketAddr::from(([127, 0, 0, 1], CLIENT_PORT));
    let mut post = Nats::connect(link.namespace(Side::Post), client).await?;
    let mut centre = Nats::connect(link.namespace(Side::Centre), client).await?;

    post.api(
        "$JS.post.API.STREAM.CREATE.ALERTS",
        &json!({"name": "ALERTS", "subjects": ["alerts.>"], "storage": "file"}),
    )
    .await?;
    centre
        .api(
            "$JS.hub.API.STREAM.CREATE.ALERTS",
            &json!({"name": "ALERTS", "storage": "file",
                    "sources": [{"name": "ALERTS", "external": {"api": "$JS.post.API"}}]}),
        )
        .await?;

    // The link as after an outage, not as never seen: the leaf connected,
    // the hub's source consumer running (one alert through). (With the
    // link down from the start, the hub retries setting the source up
    // with a growing backoff: tens of seconds after the link comes up.)
    let mut rng = rand::rng();
    let warm = prost::Message::encode_to_vec(&words_alert(size, false, &mut rng));
    let r = post.publish("alerts.warmup", &warm).await?;
    post.answer(&r).await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let info = centre
            .api("$JS.hub.API.STREAM.INFO.ALERTS", &json!({}))
            .await?;
        if info["state"]["messages"].as_u64() >= Some(1) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "JetStream: the hub's source did not start within 180 s; the servers said:\n{}\n{}",
                log_tail(&hub_conf.with_extension("log")),
                log_tail(&leaf_conf.with_extension("log")),
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    link.set_up(false);

    // The backlog, stored at the post while the link is down.
    let backlog: Vec<Vec<u8>> = (0..count)
        .map(|_| prost::Message::encode_to_vec(&words_alert(size, false, &mut rng)))
        .collect();
    let payload: usize = backlog.iter().map(Vec::len).sum();
    let mut acks = Vec::with_capacity(backlog.len());
    for a in &backlog {
        acks.push(post.publish("alerts.backlog", a).await?);
    }
    for r in &acks {
        post.answer(r).await?;
    }

    let counters = link.counters();
    let (up0, down0) = (
        counters.up_bytes.load(Ordering::Relaxed),
        counters.down_bytes.load(Ordering::Relaxed),
    );
    let t_up = Instant::now();
    link.set_up(true);
    let urgent_at = [count / 4, count / 2, count * 3 / 4];
    // (subject, published, arrived)
    let mut urgent: Vec<(String, Instant, Option<Instant>)> = Vec::new();
    let mut first = None;
    // The warm-up alert, the backlog, the urgent ones.
    let total = 1 + count + urgent_at.len() as u64;
    let mut arrived = 0;
    let last = loop {
        if t_up.elapsed() > budget {
            // Not all there: reported as such, with what did arrive.
            break None;
        }
        let info = centre
            .api("$JS.hub.API.STREAM.INFO.ALERTS", &json!({}))
            .await?;
        let n = info["state"]["messages"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(1);
        arrived = n;
        let now = Instant::now();
        if n > 0 {
            first.get_or_insert(now);
        }
        for (subject, _, arrived) in urgent.iter_mut().filter(|u| u.2.is_none()) {
            let got = centre
                .api(
                    "$JS.hub.API.STREAM.MSG.GET.ALERTS",
                    &json!({"last_by_subj": subject}),
                )
                .await;
            if got.is_ok() {
                *arrived = Some(now);
            }
        }
        if urgent_at.get(urgent.len()).is_some_and(|&k| n >= k.max(1)) {
            let subject = format!("alerts.urgent.{}", urgent.len());
            let a = prost::Message::encode_to_vec(&words_alert(size, true, &mut rng));
            let r = post.publish(&subject, &a).await?;
            post.answer(&r).await?;
            urgent.push((subject, Instant::now(), None));
        }
        if n + 1 >= total && urgent.iter().all(|u| u.2.is_some()) {
            break Some(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let completed = last.is_some();
    let drain = last.unwrap_or_else(Instant::now).duration_since(t_up);
    let up = counters.up_bytes.load(Ordering::Relaxed) - up0;
    let down = counters.down_bytes.load(Ordering::Relaxed) - down0;
    let capacity = profile.rate_bps as f64;
    let mut m = serde_json::Map::new();
    let mut x = |k: &str, v: Value| {
        m.insert(format!("jetstream_{k}"), v);
    };
    x("version", json!(post.version));
    x(
        "write_deadline_s",
        json!(write_deadline.map_or(10, |d| d.as_secs())),
    );
    x("completed", json!(completed));
    x("arrived", json!(arrived.min(count + urgent.len() as u64)));
    x("seconds", json!(drain.as_secs_f64()));
    let leaf_log = std::fs::read_to_string(leaf_conf.with_extension("log")).unwrap_or_default();
    x(
        "leaf_connections_closed",
        json!(leaf_log.matches("Leafnode connection closed").count()),
    );
    x(
        "slow_consumer_closes",
        json!(
            leaf_log.matches("Slow Consumer (Write Deadline)").count()
                + std::fs::read_to_string(hub_conf.with_extension("log"))
                    .unwrap_or_default()
                    .matches("Slow Consumer (Write Deadline)")
                    .count()
        ),
    );
    x(
        "alerts_per_s",
        json!(arrived.min(count) as f64 / drain.as_secs_f64()),
    );
    x("wire_bytes_up", json!(up));
    x("wire_bytes_down", json!(down));
    x("wire_bytes_per_alert", json!((up + down) / count.max(1)));
    x(
        "goodput_pct",
        json!(
            payload as f64 * arrived.min(count) as f64 / count.max(1) as f64 * 8.0
                / drain.as_secs_f64()
                / capacity
                * 100.0
        ),
    );
    x(
        "first_alert_after_link_up_ms",
        json!(first.map(|f| f.duration_since(t_up).as_millis())),
    );
    let mut waits: Vec<u128> = urgent
        .iter()
        .filter_map(|(_, at, got)| got.map(|g| g.duration_since(*at).as_millis()))
        .collect();
    waits.sort_unstable();
    x("urgent_mid_drain_ms", json!(waits.get(waits.len() / 2)));
    x("urgent_mid_drain_max_ms", json!(waits.last()));
    Ok(m)
}

/// A directory of its own, removed when dropped (after the servers, which
/// are declared after it).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let p = std::env::temp_dir().join(format!("liaison-jetstream-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last lines of a server's log, for an error.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A nats-server in one end's namespace, stopped when dropped.
struct Server(Child);

impl Server {
    fn start(link: &EmulatedLink, side: Side, bin: &Path, conf: &Path) -> BenchResult<Server> {
        let child = link
            .command(side, bin)
            .arg("-c")
            .arg(conf)
            .arg("-l")
            .arg(conf.with_extension("log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        Ok(Server(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the read loop hands on: a message's subject and its body (or the
/// status of a message without one, such as no responders).
type Answer = (String, Result<Vec<u8>, String>);

/// A NATS connection: each request has a reply subject of its own.
struct Nats {
    write: Arc<Mutex<OwnedWriteHalf>>,
    answers: mpsc::UnboundedReceiver<Answer>,
    /// Answers read while waiting for another.
    early: HashMap<String, Result<Vec<u8>, String>>,
    /// This connection's reply subjects are `<inbox>.<n>`: its own, or the
    /// answers to one end's requests would cross the leaf connection to
    /// the other end's client too (both subscribe their inbox).
    inbox: String,
    next: u64,
    version: String,
}

impl Nats {
    /// Connects from inside `ns`, retrying while the server starts (10 s).
    async fn connect(ns: &str, addr: SocketAddr) -> BenchResult<Nats> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match linkem::connect_in(ns, addr).await {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("nats-server in {ns} did not listen: {e}").into());
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let (read, write) = stream.into_split();
        let write = Arc::new(Mutex::new(write));
        let mut read = BufReader::new(read);
        let mut info = String::new();
        read.read_line(&mut info).await?;
        let version = info
            .strip_prefix("INFO ")
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned))
            .ok_or_else(|| format!("nats-server in {ns} did not say INFO: {info:?}"))?;
        let inbox = format!("_INBOX.bench{}", uuid::Uuid::new_v4().simple());
        let hello = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true}}\r\nSUB {inbox}.* 1\r\nPING\r\n"
        );
        write.lock().await.write_all(hello.as_bytes()).await?;
        let (tx, answers) = mpsc::unbounded_channel();
        let (pong_tx, pong) = tokio::sync::oneshot::channel();
        tokio::spawn(read_loop(read, write.clone(), tx, pong_tx));
        pong.await
            .map_err(|_| "nats-server closed the connection")?;
        Ok(Nats {
            write,
            answers,
            early: HashMap::new(),
            inbox,
            next: 0,
            version,
        })
    }

    /// Publishes with a new reply subject, which it returns.
    async fn publish(&mut self, subject: &str, payload: &[u8]) -> BenchResult<String> {
        self.next += 1;
        let reply = format!("{}.{}", self.inbox, self.next);
        let mut frame = format!("PUB {subject} {reply} {}\r\n", payload.len()).into_bytes();
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.write.lock().await.write_all(&frame).await?;
        Ok(reply)
    }

    /// The answer to `reply`; a JetStream error is an error.
    async fn answer(&mut self, reply: &str) -> BenchResult<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let got = loop {
            if let Some(got) = self.early.remove(reply) {
                break got;
            }
            let (subject, got) = tokio::time::timeout_at(deadline, self.answers.recv())
                .await
                .map_err(|_| "nats-server did not answer within 30 s")?
                .ok_or("nats-server closed the connection")?;
            if subject == reply {
                break got;
            }
            self.early.insert(subject, got);
        }?;
        let v: Value = serde_json::from_slice(&got)?;
        if let Some(e) = v.get("error") {
            return Err(format!("JetStream: {e}").into());
        }
        Ok(v)
    }

    /// A JetStream API request and its answer.
    async fn api(&mut self, subject: &str, body: &Value) -> BenchResult<Value> {
        let reply = self.publish(subject, body.to_string().as_bytes()).await?;
        self.answer(&reply)
            .await
            .map_err(|e| format!("{subject}: {e}").into())
    }
}

/// Reads MSG/HMSG frames into `tx` (a status without a body, such as no
/// responders, as an error), answers the server's PINGs, and tells `pong`
/// of the first PONG.
async fn read_loop(
    mut read: BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: Arc<Mutex<OwnedWriteHalf>>,
    tx: mpsc::UnboundedSender<Answer>,
    pong: tokio::sync::oneshot::Sender<()>,
) {
    let mut pong = Some(pong);
    let mut line = String::new();
    loop {
        line.clear();
        match read.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("PING") => {
                let answered = write.lock().await.write_all(b"PONG\r\n").await;
                if answered.is_err() {
                    return;
                }
            }
            Some("PONG") => {
                if let Some(p) = pong.take() {
                    let _ = p.send(());
                }
            }
            Some("MSG") => {
                let Some(Ok(len)) = words.last().map(|l| l.parse::<usize>()) else {
                    return;
                };
                let mut body = vec![0; len + 2];
                if read.read_exact(&mut body).await.is_err() {
                    return;
                }
                body.truncate(len);
                let _ = tx.send((words[1].to_owned(), Ok(body)));
            }
            Some("HMSG") => {
                // HMSG subject sid [reply] header_len total_len
                let n = words.len();
                let (Some(Ok(hlen)), Some(Ok(total))) = (
                    words.get(n - 2).map(|l| l.parse::<usize>()),
                    words.get(n - 1).map(|l| l.parse::<usize>()),
                ) else {
                    return;
                };
                let mut body = vec![0; total + 2];
                if read.read_exact(&mut body).await.is_err() {
                    return;
                }
                let headers = String::from_utf8_lossy(&body[..hlen]).into_owned();
                let status = headers.lines().next().unwrap_or("").trim().to_owned();
                let subject = words[1].to_owned();
                if total == hlen {
                    let _ = tx.send((subject, Err(format!("status {status}"))));
                } else {
                    body.truncate(total);
                    let _ = tx.send((subject, Ok(body[hlen..].to_vec())));
                }
            }
            Some("-ERR") => {
                // A protocol error: the server closes the connection.
                tracing::warn!(error = line.trim(), "nats-server");
                return;
            }
            _ => {}
        }
    }
}
