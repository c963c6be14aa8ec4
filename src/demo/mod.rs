//! `liaison demo`: a simulated region in one process, to train staff and to
//! check a build. A broker; the six countries of the region with posts at
//! real border crossings ([`liaison::gazetteer`]), each post behind an agent on a
//! link that drops and stalls at random ([`liaison::flaky`]); a liaison
//! office per country following a feed with its own filter; realistic
//! alerts across categories and markings ([`alerts`]). With `--federated`
//! ([`federated`]) each country runs its own broker under its own PKI, and
//! the brokers of neighbouring states are linked, over flaky links too.
//!
//! At the end every link is restored, every outbox drained and every feed
//! caught up, and the demo checks, independently of the broker's own code:
//! - **lost**: an alert acknowledged to a post that is not in its broker's
//!   store, or that a feed should have received and did not;
//! - **leaked**: an alert delivered to a feed whose identity the markings
//!   (and, across borders, the re-sharing rules) exclude;
//! - and that no broker stores an alert twice.

mod alerts;
mod federated;
mod judge;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use rand::seq::IndexedRandom;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use alerts::make_alert;
use judge::judge;
use liaison::agent::{self, AgentConfig};
use liaison::client;
use liaison::flaky::{FlakyProxy, Mode};
use liaison::gazetteer::{self, AGENCIES, Crossing};
use liaison::identity::NodeId;
use liaison::pki;
use liaison::proto as pb;
use liaison::server::{self, ServeConfig};
use liaison::tls::TlsFiles;

type DemoResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub duration: Duration,
    pub posts_per_country: usize,
    /// Alerts per second across the region.
    pub rate: f64,
    /// How often the live summary is printed.
    pub summary_every: Duration,
    /// One broker per country, linked along the region's borders.
    pub federated: bool,
}

/// The closing figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub published: u64,
    pub delivered: u64,
    pub lost: u64,
    pub leaked: u64,
    /// Alerts some broker stored more than once (never, if dedupe holds).
    pub stored_twice: u64,
    /// Brokers whose stores were checked.
    pub brokers: usize,
}

impl Verdict {
    /// Nothing lost, leaked or stored twice.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.leaked == 0 && self.stored_twice == 0
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "verdict: published {}, delivered {}, lost {}, leaked {}",
            self.published, self.delivered, self.lost, self.leaked
        )
    }
}

/// What the demo remembers of an acknowledged alert, to judge deliveries.
#[derive(Debug, Clone)]
struct Sent {
    origin: NodeId,
    category: pb::Category,
    tlp: pb::Tlp,
    exercise: bool,
    releasable_to: Vec<String>,
    recipients: Vec<NodeId>,
}

impl Sent {
    fn from_stored(a: &liaison::alert::Alert) -> Sent {
        Sent {
            origin: a.origin.clone(),
            category: a.category,
            tlp: a.marking.tlp,
            exercise: a.status == pb::Status::Exercise,
            releasable_to: a
                .body
                .marking
                .as_ref()
                .map(|m| m.releasable_to.clone())
                .unwrap_or_default(),
            recipients: a.marking.recipients.clone(),
        }
    }
}

/// Where one country's nodes connect: its broker, the PKI that certifies
/// them and the broker's data directory (one broker: the same for all).
#[derive(Debug, Clone)]
struct Home {
    addr: std::net::SocketAddr,
    certs: PathBuf,
    data: PathBuf,
}

type Homes = HashMap<&'static str, Home>;

/// What an office should receive of an alert: the rules, restated.
type Expect<'a> = &'a (dyn Fn(&Office, &Sent) -> bool + Sync);

/// A liaison office and what its feed wants.
struct Office {
    node: NodeId,
    categories: Vec<pb::Category>,
    include_exercise: bool,
}

impl Office {
    /// The markings and the filter, restated (agreements cover every
    /// category and level: one broker runs without a policy file, and the
    /// federated region's brokers agree on everything).
    fn should_receive(&self, s: &Sent) -> bool {
        let v = &self.node;
        let same_agency = s.origin.country() == v.country() && s.origin.agency() == v.agency();
        let marking = match s.tlp {
            pb::Tlp::Clear | pb::Tlp::Green => true,
            pb::Tlp::Amber => {
                same_agency
                    || s.releasable_to.iter().any(|r| {
                        *r == v.country().as_str()
                            || *r == format!("{}:{}", v.country(), v.agency())
                    })
            }
            pb::Tlp::AmberStrict => same_agency,
            pb::Tlp::Red => s.origin == *v || s.recipients.contains(v),
            pb::Tlp::Unspecified => false,
        };
        marking && self.categories.contains(&s.category) && (!s.exercise || self.include_exercise)
    }
}

struct Post {
    crossing: &'static Crossing,
    node: NodeId,
    url: String,
    proxy: FlakyProxy,
}

/// Shared tallies; a std mutex, held for an insert.
#[derive(Default)]
struct Tally {
    sent: HashMap<String, Sent>,
    received: HashMap<usize, HashSet<String>>,
}

fn lock(t: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the simulated region; `say` receives the live summary lines.
///
/// # Errors
/// When the region cannot be set up (ports, certificates, the store).
pub async fn run(config: DemoConfig, say: impl Fn(String)) -> DemoResult<Verdict> {
    let dir = std::env::temp_dir().join(format!(
        "liaison-demo-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let result = if config.federated {
        federated::region(&config, &dir, &say).await
    } else {
        region(&config, &dir, &say).await
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn region(config: &DemoConfig, dir: &Path, say: &impl Fn(String)) -> DemoResult<Verdict> {
    let certs = dir.join("certs");
    pki::init(&certs, &[], false)?;
    let shutdown = CancellationToken::new();

    // The national broker (one for the region, running open: markings apply).
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let home = Home {
        addr: listener.local_addr()?,
        certs: certs.clone(),
        data: dir.join("broker"),
    };
    let broker_url = format!("https://{}", home.addr);
    let homes: Homes = AGENCIES.iter().map(|(cc, _)| (*cc, home.clone())).collect();
    let mut serve = ServeConfig::new(
        TlsFiles::in_dir(&certs, pki::BROKER_NAME),
        home.data.clone(),
    );
    serve.broker.retention.max_age = None;
    serve.shutdown_grace = Duration::from_secs(2);
    let broker = tokio::spawn(server::run(listener, serve, shutdown.clone()));

    let tally = Arc::new(Mutex::new(Tally::default()));
    let offices = start_offices(&homes, &tally, &shutdown).await?;
    let chaos = CancellationToken::new();
    let posts = start_posts(config, dir, &homes, &chaos, &shutdown).await?;
    say(format!(
        "demo: broker {broker_url}, {} posts behind flaky links, {} liaison offices, for {:?}",
        posts.len(),
        offices.len(),
        config.duration
    ));

    publish_for(config, &posts, &tally, &mut || post_links(&posts), say).await;

    // Restore every link, drain every outbox, let every feed catch up.
    chaos.cancel();
    for p in &posts {
        p.proxy.set(Mode::Pass);
    }
    say("demo: publishing stopped; links restored; draining the posts' outboxes".into());
    drain(&posts).await;
    let expect = |o: &Office, s: &Sent| o.should_receive(s);
    catch_up(&offices, &tally, &expect).await;
    shutdown.cancel();
    if let Ok(Err(e)) = broker.await {
        say(format!("demo: the broker stopped with an error: {e}"));
    }
    judge(&homes, &offices, &tally, &expect).await
}

async fn start_offices(
    homes: &Homes,
    tally: &Arc<Mutex<Tally>>,
    shutdown: &CancellationToken,
) -> DemoResult<Vec<Office>> {
    const ALL: [pb::Category; 9] = [
        pb::Category::Drugs,
        pb::Category::Arms,
        pb::Category::Cbrn,
        pb::Category::Terrorism,
        pb::Category::HumanSmuggling,
        pb::Category::Migration,
        pb::Category::DocumentFraud,
        pb::Category::Health,
        pb::Category::Other,
    ];
    let mut offices = Vec::new();
    for (i, (cc, agency)) in AGENCIES.iter().enumerate() {
        let home = &homes[cc];
        let (certs, broker_url) = (&home.certs, format!("https://{}", home.addr));
        let node = NodeId::new(cc, agency, "liaison-office")?;
        let name = format!("office-{}", cc.to_ascii_lowercase());
        pki::issue_node(certs, &node, &name, 30, false)?;
        let (categories, include_exercise) = {
            let mut rng = rand::rng();
            let n = rng.random_range(3..=6);
            (
                ALL.choose_multiple(&mut rng, n)
                    .copied()
                    .collect::<Vec<_>>(),
                rng.random_bool(0.5),
            )
        };
        let mut client =
            client::connect(&broker_url, Some(&TlsFiles::in_dir(certs, &name))).await?;
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::SubscribeRequest {
            request: Some(pb::subscribe_request::Request::Open(pb::OpenFeed {
                feed: "demo".into(),
                filter: Some(pb::Filter {
                    categories: categories.iter().map(|c| *c as i32).collect(),
                    include_exercise,
                    ..Default::default()
                }),
                start: Some(pb::StartPosition {
                    position: Some(pb::start_position::Position::All(true)),
                }),
                max_in_flight: 256,
                ack_wait: None,
            })),
        })
        .await?;
        let mut stream = client
            .subscribe(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let (tally, shutdown) = (tally.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    () = shutdown.cancelled() => return,
                    m = stream.message() => m,
                };
                let Ok(Some(msg)) = msg else { return };
                if let Some(pb::subscribe_response::Event::Delivery(d)) = msg.event {
                    let Some(record) = d.record else { continue };
                    if let Some(alert) = record.alert {
                        lock(&tally).received.entry(i).or_default().insert(alert.id);
                    }
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
        });
        offices.push(Office {
            node,
            categories,
            include_exercise,
        });
    }
    Ok(offices)
}

async fn start_posts(
    config: &DemoConfig,
    dir: &Path,
    homes: &Homes,
    chaos: &CancellationToken,
    shutdown: &CancellationToken,
) -> DemoResult<Vec<Post>> {
    let mut posts = Vec::new();
    for (cc, agency) in AGENCIES {
        let Home {
            addr: broker_addr,
            certs,
            ..
        } = &homes[cc];
        let crossings: Vec<&Crossing> = gazetteer::of(cc).collect();
        for n in 0..config.posts_per_country {
            let crossing = crossings[n % crossings.len()];
            let node_name = match n / crossings.len() {
                0 => crossing.node.to_owned(),
                k => format!("{}-{k}", crossing.node),
            };
            let node = NodeId::new(cc, agency, &node_name)?;
            let file = format!("post-{}-{node_name}", cc.to_ascii_lowercase());
            pki::issue_node(certs, &node, &file, 30, false)?;
            let proxy = FlakyProxy::start(*broker_addr, Mode::Pass).await?;
            proxy.chaos(
                Duration::from_millis(200),
                Duration::from_millis(1500),
                chaos.clone(),
            );
            let mut agent_config = AgentConfig::new(
                format!("https://{}", proxy.addr),
                TlsFiles::in_dir(certs, &file),
                dir.join("agents").join(&file),
            );
            agent_config.link.backoff_min = Duration::from_millis(100);
            agent_config.link.backoff_max = Duration::from_secs(1);
            agent_config.link.keepalive_interval = Duration::from_secs(1);
            agent_config.link.keepalive_timeout = Duration::from_secs(1);
            agent_config.link.ack_timeout = Duration::from_secs(3);
            agent_config.broker.retention.max_age = None;
            agent_config.shutdown_grace = Duration::from_secs(1);
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", listener.local_addr()?);
            tokio::spawn(agent::run(listener, agent_config, shutdown.clone()));
            posts.push(Post {
                crossing,
                node,
                url,
                proxy,
            });
        }
    }
    Ok(posts)
}

/// Publishes at the configured rate from random posts; every
/// `summary_every`, says how far it got and how the links are (`links`).
async fn publish_for<F: Future<Output = String>>(
    config: &DemoConfig,
    posts: &[Post],
    tally: &Arc<Mutex<Tally>>,
    links: &mut impl FnMut() -> F,
    say: &impl Fn(String),
) {
    let mut clients = Vec::new();
    for p in posts {
        clients.push(client::connect(&p.url, None).await.ok());
    }
    let started = Instant::now();
    let mut next_summary = started + config.summary_every;
    let pause = Duration::from_secs_f64(1.0 / config.rate.max(0.1));
    while started.elapsed() < config.duration {
        let (i, alert, sent) = {
            let mut rng = rand::rng();
            let i = rng.random_range(0..posts.len());
            let (alert, sent) = make_alert(&posts[i], &mut rng);
            (i, alert, sent)
        };
        if let Some(Some(client)) = clients.get_mut(i)
            && let Ok(ack) = client
                .publish(pb::PublishRequest { alert: Some(alert) })
                .await
        {
            lock(tally).sent.insert(ack.into_inner().id, sent);
        }
        if Instant::now() >= next_summary {
            next_summary += config.summary_every;
            say(summary(tally, started, links().await));
        }
        tokio::time::sleep(pause).await;
    }
}

fn summary(tally: &Arc<Mutex<Tally>>, started: Instant, links: String) -> String {
    let (published, delivered) = {
        let t = lock(tally);
        (
            t.sent.len(),
            t.received.values().map(HashSet::len).sum::<usize>(),
        )
    };
    format!(
        "[{:>5.1}s] published {published}, delivered {delivered} | {links}",
        started.elapsed().as_secs_f64(),
    )
}

/// Each post's link and outbox: `post:link/backlog …`.
async fn post_links(posts: &[Post]) -> String {
    let mut links = Vec::new();
    for p in posts {
        let s = status(&p.url).await;
        let state = s
            .as_ref()
            .map_or("?", |s| match pb::LinkState::try_from(s.link_state) {
                Ok(pb::LinkState::Up) => "up",
                Ok(pb::LinkState::Down) => "DOWN",
                Ok(pb::LinkState::Refused) => "REFUSED",
                _ => "…",
            });
        let backlog = s.map_or(0, |s| s.outbox_depth);
        links.push(format!("{}:{state}/{backlog}", p.node.node()));
    }
    format!("post:link/backlog {}", links.join(" "))
}

async fn status(url: &str) -> Option<pb::AgentStatusResponse> {
    let channel = client::endpoint(url, None).ok()?.connect().await.ok()?;
    pb::agent_client::AgentClient::new(channel)
        .status(pb::AgentStatusRequest {})
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

/// Waits (bounded) until every post's outbox is empty.
async fn drain(posts: &[Post]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in posts {
        while Instant::now() < deadline {
            if status(&p.url).await.is_some_and(|s| s.outbox_depth == 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits (bounded) until every office received what it should.
async fn catch_up(offices: &[Office], tally: &Arc<Mutex<Tally>>, expect: Expect<'_>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let done = {
            let t = lock(tally);
            offices.iter().enumerate().all(|(i, o)| {
                let got = t.received.get(&i);
                t.sent
                    .iter()
                    .filter(|(_, s)| expect(o, s))
                    .all(|(id, _)| got.is_some_and(|g| g.contains(id)))
            })
        };
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
