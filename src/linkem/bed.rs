//! A national broker and a post's agent on either end of an emulated
//! link, as separate `liaison` processes (each in its namespace), with
//! clients that reach each of them from inside its namespace: the test bed
//! of `liaison bench link` and of the link tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use rand::seq::IndexedRandom;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{CENTRE_ADDR, EmulatedLink, LinkError, Side, channel_in};
use crate::alert::timestamp;
use crate::identity::NodeId;
use crate::pki;
use crate::proto as pb;
use crate::proto::agent_client::AgentClient;
use crate::proto::broker_client::BrokerClient;
use crate::tls::TlsFiles;

/// The post's node.
pub const POST: &str = "urn:liaison:TJ:border-guard:ishkashim";
/// A liaison office at the centre, which follows what the post sends.
pub const OFFICE: &str = "urn:liaison:TJ:border-guard:dushanbe";
/// The broker's port in its namespace.
const BROKER_PORT: u16 = 7443;
/// The agent's local API in its namespace.
const AGENT_ADDR: &str = "127.0.0.1:7444";

/// The broker, the agent and the link between them.
pub struct Bed {
    pub link: EmulatedLink,
    /// The PKI and both data directories; removed on drop.
    dir: PathBuf,
    broker: Option<Child>,
    agent: Option<Child>,
}

#[derive(Debug, thiserror::Error)]
pub enum BedError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("test bed: {0}")]
    Setup(String),
}

fn setup(e: impl std::fmt::Display) -> BedError {
    BedError::Setup(e.to_string())
}

impl Bed {
    /// Makes the PKI (the broker's certificate valid for the link address),
    /// starts the broker in the centre's namespace and waits until it
    /// listens. The agent starts with [`Bed::start_agent`].
    ///
    /// # Errors
    /// When the link, the files or the broker cannot be made.
    pub fn start(link: EmulatedLink, bin: &Path) -> Result<Bed, BedError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "liaison-bed-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let certs = dir.join("certs");
        pki::init(&certs, &[CENTRE_ADDR.to_owned()], false).map_err(setup)?;
        for (urn, name) in [(POST, "post"), (OFFICE, "office")] {
            let node: NodeId = urn.parse().map_err(setup)?;
            pki::issue_node(&certs, &node, name, 30, false).map_err(setup)?;
        }
        let mut bed = Bed {
            link,
            dir,
            broker: None,
            agent: None,
        };
        let mut broker = bed.link.command(Side::Centre, bin);
        broker
            .args(["serve", "--listen", &format!("0.0.0.0:{BROKER_PORT}")])
            .arg("--data")
            .arg(bed.dir.join("broker"))
            .arg("--certs")
            .arg(&certs)
            .args(["--metrics", "off"]);
        bed.broker = Some(spawn_ready(broker, "liaison: listening on")?);
        Ok(bed)
    }

    /// Starts the post's agent, its upstream the broker across the link;
    /// `extra` are more `liaison agent` flags.
    ///
    /// # Errors
    /// When it does not start listening.
    pub fn start_agent(&mut self, bin: &Path, extra: &[&str]) -> Result<(), BedError> {
        let mut agent = self.link.command(Side::Post, bin);
        agent
            .args([
                "agent",
                "--upstream",
                &format!("https://{CENTRE_ADDR}:{BROKER_PORT}"),
            ])
            .arg("--certs")
            .arg(self.certs())
            .args(["--name", "post", "--listen", AGENT_ADDR])
            .arg("--data")
            .arg(self.dir.join("agent"))
            .args(["--metrics", "off", "--inbox-feed", "inbox"])
            .args(extra);
        self.agent = Some(spawn_ready(agent, "liaison agent: listening on")?);
        Ok(())
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// A client of the broker as `name` (`office` or `post`), from inside
    /// the centre's namespace (not across the link).
    ///
    /// # Errors
    /// When the certificate files are unusable.
    pub fn broker_client(&self, name: &str) -> Result<BrokerClient<Channel>, BedError> {
        let addr = SocketAddr::from(([10, 77, 0, 1], BROKER_PORT));
        let files = TlsFiles::in_dir(&self.certs(), name);
        let channel = channel_in(
            self.link.namespace(Side::Centre),
            &format!("https://{CENTRE_ADDR}:{BROKER_PORT}"),
            addr,
            Some(&files),
        )
        .map_err(setup)?;
        Ok(BrokerClient::new(channel).max_decoding_message_size(crate::client::MAX_RESPONSE_BYTES))
    }

    /// The agent's local API, from inside the post's namespace.
    ///
    /// # Errors
    /// Never in practice (the address is fixed).
    pub fn agent_channel(&self) -> Result<Channel, BedError> {
        let addr: SocketAddr = AGENT_ADDR.parse().map_err(setup)?;
        channel_in(
            self.link.namespace(Side::Post),
            &format!("http://{AGENT_ADDR}"),
            addr,
            None,
        )
        .map_err(setup)
    }

    pub fn agent_client(&self) -> Result<BrokerClient<Channel>, BedError> {
        Ok(BrokerClient::new(self.agent_channel()?))
    }

    pub fn agent_status_client(&self) -> Result<AgentClient<Channel>, BedError> {
        Ok(AgentClient::new(self.agent_channel()?))
    }

    /// The office's durable feed `feed` at the broker, from its start:
    /// (id, arrival) of each alert delivered, acknowledged as it comes.
    ///
    /// # Errors
    /// When the feed cannot be opened.
    pub async fn follow(&self, feed: &str) -> Result<mpsc::Receiver<(String, Instant)>, BedError> {
        let mut office = self.broker_client("office")?;
        let (tx, rx) = mpsc::channel(1024);
        let open = pb::OpenFeed {
            feed: feed.into(),
            filter: Some(pb::Filter {
                include_test: true,
                ..Default::default()
            }),
            start: Some(pb::StartPosition {
                position: Some(pb::start_position::Position::All(true)),
            }),
            max_in_flight: 1024,
            ack_wait: None,
        };
        tx.send(pb::SubscribeRequest {
            request: Some(pb::subscribe_request::Request::Open(open)),
        })
        .await
        .map_err(setup)?;
        let mut stream = office
            .subscribe(ReceiverStream::new(rx))
            .await
            .map_err(setup)?
            .into_inner();
        let (out, arrivals) = mpsc::channel(65_536);
        tokio::spawn(async move {
            while let Ok(Some(msg)) = stream.message().await {
                if let Some(pb::subscribe_response::Event::Delivery(d)) = msg.event
                    && let Some(r) = d.record
                {
                    let now = Instant::now();
                    let id = r.alert.map(|a| a.id).unwrap_or_default();
                    let ack = pb::SubscribeRequest {
                        request: Some(pb::subscribe_request::Request::Ack(pb::Ack {
                            seqs: vec![r.seq],
                        })),
                    };
                    if tx.send(ack).await.is_err() || out.send((id, now)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(arrivals)
    }
}

const WORDS: &[&str] = &[
    "lorry",
    "border",
    "crossing",
    "heroin",
    "kg",
    "seized",
    "driver",
    "passport",
    "Afghan",
    "Tajik",
    "bridge",
    "night",
    "patrol",
    "river",
    "Pyanj",
    "convoy",
    "vehicle",
    "plate",
    "hidden",
    "compartment",
    "cargo",
    "apricots",
    "cotton",
    "documents",
    "forged",
    "suspect",
    "group",
    "travelling",
    "north",
    "south",
    "checkpoint",
    "Ishkashim",
    "Panji",
    "Poyon",
    "customs",
    "officers",
    "report",
    "observed",
    "at",
    "the",
    "of",
    "and",
    "with",
    "near",
    "from",
    "to",
    "in",
    "a",
    "three",
    "men",
    "two",
    "women",
    "children",
    "weapons",
    "rifles",
    "ammunition",
];

/// A test alert of about `size` encoded bytes whose text reads like
/// words (so that compression does what it would on real alerts).
pub fn words_alert(size: usize, urgent: bool, rng: &mut impl Rng) -> pb::Alert {
    let mut a = pb::Alert {
        id: uuid::Uuid::now_v7().to_string(),
        sent: Some(timestamp(SystemTime::now())),
        status: pb::Status::Test as i32,
        msg_type: pb::MsgType::Alert as i32,
        category: pb::Category::Drugs as i32,
        urgency: if urgent {
            pb::Urgency::Immediate
        } else {
            pb::Urgency::Expected
        } as i32,
        severity: pb::Severity::Severe as i32,
        certainty: pb::Certainty::Observed as i32,
        headline: "Heroin found in a lorry at the Ishkashim crossing".into(),
        marking: Some(pb::Marking {
            tlp: pb::Tlp::Green as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let base = prost::Message::encoded_len(&a) + 3;
    let mut text = String::new();
    while text.len() + base < size {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(WORDS.choose(rng).unwrap_or(&"x"));
    }
    a.description = text;
    a
}

impl Drop for Bed {
    fn drop(&mut self) {
        for child in [self.agent.take(), self.broker.take()]
            .into_iter()
            .flatten()
        {
            stop(child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGTERM, then SIGKILL if it does not exit within five seconds.
fn stop(mut child: Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signalling a child this process started and still owns.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    for _ in 0..100 {
        if child.try_wait().is_ok_and(|s| s.is_some()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts `command` and waits (bounded) for the line starting with `ready`
/// on its standard output; its standard error is inherited.
fn spawn_ready(mut command: std::process::Command, ready: &str) -> Result<Child, BedError> {
    let mut child = command
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(setup)?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| setup("no standard output"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let ready = ready.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with(&ready) {
                let _ = tx.send(());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => Ok(child),
        Err(_) => {
            stop(child);
            Err(setup(format!("{command:?} did not start")))
        }
    }
}
