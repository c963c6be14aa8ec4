//! Federation: one national broker per state, alerts crossing a border
//! only broker to broker, under the bilateral agreement
//! (docs/federation.md).
//!
//! Each configured peer (a neighbouring state's broker) has one link that
//! carries both directions; either side may dial it ([`dial`]), and the
//! other accepts it on its ordinary port (the `Federation` gRPC service).
//! On the link, each side runs the same [`session`]: it exports, from a
//! durable cursor over its own log, exactly the alerts its policy releases
//! to the peer's state ([`crate::policy::Policy::may_export`]), each
//! signed by the origin broker ([`attest`]); and it imports what the peer
//! offers — verified, checked against its own policy, stored with its
//! original origin and provenance, deduplicated by id — answering each
//! offer in order.
//!
//! | module | owns |
//! |---|---|
//! | [`attest`] | signing exported alerts, verifying attestations against the origin state's CA |
//! | [`session`] | the symmetric protocol of one link, over its four parts: |
//! | `export` | the durable export cursor, offers in flight, the peer's answers |
//! | `import` | verifying, checking and storing offers, answered in order |
//! | `receipts` | receipts of imported alerts back to the originator, and the peer's receipts here |
//! | [`dial`] | the side that dials: connect, reconnect with backoff |

pub mod attest;
pub mod dial;
mod export;
mod import;
mod receipts;
pub mod session;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::server::danger::ClientCertVerifier;

use crate::agent::{Link, LinkConfig};
use crate::broker::Broker;
use crate::identity::{CountryCode, NodeId};
use crate::tls::{PeerTrust, TlsError, TlsFiles};
use attest::{Origin, Signer};

/// One neighbouring state's broker, as the configuration names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// A short name for logs, metrics and `admin links` (`[a-z0-9-]`).
    pub name: String,
    /// The identity the peer broker's certificate carries.
    pub broker: NodeId,
    /// The peer state's CA certificate: trusted for this link only.
    pub ca: PathBuf,
    /// The peer state's revocation list, if it provides one.
    pub crl: Option<PathBuf>,
    /// The countries whose alerts the peer may hand over as their origin
    /// broker (normally its own).
    pub countries: Vec<CountryCode>,
    /// Where to dial the peer (`https://host:port`); without it, this side
    /// waits for the peer to dial.
    pub url: Option<String>,
}

impl PeerConfig {
    /// What TLS trusts the peer's CA for: the peer broker's certificate.
    pub fn trust(&self) -> PeerTrust {
        PeerTrust {
            name: self.name.clone(),
            broker: self.broker.clone(),
            ca: self.ca.clone(),
            crl: self.crl.clone(),
        }
    }
}

/// A third state's broker whose signatures this broker accepts on alerts
/// relayed by a peer (re-sharing), without a link to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginConfig {
    pub country: CountryCode,
    pub broker: NodeId,
    pub ca: PathBuf,
}

/// Everything federation needs besides the broker.
#[derive(Debug, Clone, Default)]
pub struct FederationConfig {
    pub peers: Vec<PeerConfig>,
    pub origins: Vec<OriginConfig>,
    /// Backoff, keepalive, stall detection and window of every link.
    pub link: LinkConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("federation peer `{peer}`: {reason}")]
    Peer { peer: String, reason: String },
    #[error(
        "federation needs a sharing policy (--policy): its agreements say what crosses a border"
    )]
    NoPolicy,
}

/// The state of one peer's link, shared by its sessions and the admin view.
pub struct PeerLink {
    pub config: PeerConfig,
    /// Up, down, last contact and last error (the agent's link machinery).
    pub link: Link,
    /// Held by the session in progress: one link per peer at a time.
    session: Arc<tokio::sync::Mutex<()>>,
    /// Cancels the session in progress when the peer dialed it (a session
    /// this side dialed has none): a peer that dials again replaces it. A
    /// std mutex: held to swap the token.
    accepted: Mutex<Option<tokio_util::sync::CancellationToken>>,
    /// Counters of the session in progress (the durable ones are in the
    /// store). A std mutex: held for a field update.
    live: Mutex<Live>,
}

/// What a link's session measures as it goes.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// The newest local sequence the export cursor has passed.
    pub exported_through: u64,
}

/// One peer's link for `admin links`.
#[derive(Debug, Clone)]
pub struct LinkReport {
    pub name: String,
    pub broker: NodeId,
    pub dials: bool,
    pub state: crate::proto::LinkState,
    pub last_contact: Option<SystemTime>,
    pub last_error: String,
    /// Alerts in the local log past the export cursor (an upper bound of
    /// what is still to be sent: not all of them are for this peer).
    pub backlog_out: u64,
    pub stored: crate::store::StoredLink,
}

/// The federation of one broker: its peers, its signer, the origins it
/// trusts. A cheap-clone handle.
#[derive(Clone)]
pub struct Federation {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    signer: Signer,
    origins: Vec<Origin>,
    peers: Vec<Arc<PeerLink>>,
    link: LinkConfig,
    /// This broker's certificate and key, for dialing.
    tls: TlsFiles,
}

impl Federation {
    /// Sets up the links of `config`; nothing connects yet.
    ///
    /// # Errors
    /// When the broker's certificate carries no identity, a peer's CA
    /// cannot be read, or no policy is in force.
    pub fn new(
        broker: Broker,
        config: FederationConfig,
        tls: TlsFiles,
    ) -> Result<Federation, FederationError> {
        if broker.policy().is_open() {
            return Err(FederationError::NoPolicy);
        }
        let signer = Signer::load(&tls)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut origins = Vec::new();
        for peer in &config.peers {
            let verifier = crate::tls::ca_verifier(&peer.ca, peer.crl.as_deref(), &provider)?;
            for country in &peer.countries {
                origins.push(Origin::new(*country, peer.broker.clone(), verifier.clone()));
            }
        }
        for o in &config.origins {
            let verifier: Arc<dyn ClientCertVerifier> =
                crate::tls::ca_verifier(&o.ca, None, &provider)?;
            origins.push(Origin::new(o.country, o.broker.clone(), verifier));
        }
        let peers = config
            .peers
            .into_iter()
            .map(|config| {
                Arc::new(PeerLink {
                    link: Link::new(config.url.as_deref().unwrap_or(&config.name)),
                    config,
                    session: Arc::new(tokio::sync::Mutex::new(())),
                    accepted: Mutex::new(None),
                    live: Mutex::new(Live::default()),
                })
            })
            .collect();
        Ok(Federation {
            inner: Arc::new(Inner {
                broker,
                signer,
                origins,
                peers,
                link: config.link,
                tls,
            }),
        })
    }

    /// This broker's identity on links.
    pub fn broker_id(&self) -> &NodeId {
        self.inner.signer.broker()
    }

    /// The peer configured under `name`.
    pub fn peer(&self, name: &str) -> Option<Arc<PeerLink>> {
        self.inner
            .peers
            .iter()
            .find(|p| p.config.name == name)
            .cloned()
    }

    /// Every peer's link, for `admin links`.
    ///
    /// # Errors
    /// On a storage failure.
    pub fn reports(&self) -> Result<Vec<LinkReport>, crate::broker::BrokerError> {
        let head = self.inner.broker.head().0;
        let mut out = Vec::new();
        for p in &self.inner.peers {
            let stored = self.inner.broker.load_link(&p.config.name)?;
            let status = p.link.status();
            let live = p.live();
            let through = stored.exported_through.max(live.exported_through);
            out.push(LinkReport {
                name: p.config.name.clone(),
                broker: p.config.broker.clone(),
                dials: p.config.url.is_some(),
                state: status.state,
                last_contact: status.last_contact,
                last_error: status.last_error,
                backlog_out: head.saturating_sub(through),
                stored,
            });
        }
        Ok(out)
    }

    /// Starts a dialer for every peer this side dials.
    pub fn spawn_dialers(
        &self,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: &tokio_util::sync::CancellationToken,
    ) {
        for peer in self.inner.peers.iter().filter(|p| p.config.url.is_some()) {
            tasks.spawn(dial::run(
                self.clone(),
                peer.clone(),
                shutdown.child_token(),
            ));
        }
    }
}

/// A session the peer dialed: holds the peer's link until dropped.
pub struct Accepted {
    peer: Arc<PeerLink>,
    /// Ends the session (shutdown, or the peer dialing again).
    pub token: tokio_util::sync::CancellationToken,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Accepted {
    fn drop(&mut self) {
        // Before the guard is released: the next session registers after.
        *self.peer.accepted() = None;
    }
}

/// How long a session the peer replaces may take to end.
const TAKE_OVER: std::time::Duration = std::time::Duration::from_secs(5);

impl PeerLink {
    /// The right to run this peer's session, unless one runs already.
    pub fn try_session(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.session.clone().try_lock_owned().ok()
    }

    /// The right to run a session the peer dialed, with the token that
    /// ends it. A session the peer dialed before is ended first: a peer
    /// only dials again when its side of the old link is gone (a link cut
    /// without a word, or stalled), while this side may not notice for a
    /// keepalive timeout. A session this side dialed is kept (`None`): the
    /// peer's dialer waits, so two brokers that both dial do not keep
    /// replacing each other's links.
    pub async fn accept_session(
        self: &Arc<Self>,
        parent: &tokio_util::sync::CancellationToken,
    ) -> Option<Accepted> {
        let guard = match self.try_session() {
            Some(guard) => guard,
            None => {
                let old = self.accepted().clone()?;
                old.cancel();
                tokio::time::timeout(TAKE_OVER, self.session.clone().lock_owned())
                    .await
                    .ok()?
            }
        };
        let token = parent.child_token();
        *self.accepted() = Some(token.clone());
        Some(Accepted {
            peer: self.clone(),
            token,
            _guard: guard,
        })
    }

    fn accepted(&self) -> std::sync::MutexGuard<'_, Option<tokio_util::sync::CancellationToken>> {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> Live {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_live(&self, f: impl FnOnce(&mut Live)) {
        f(&mut self.live.lock().unwrap_or_else(|p| p.into_inner()));
    }
}
