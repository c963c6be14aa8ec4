//! `liaison demo --federated`: the region as it runs for real. Each of the
//! six states runs its own national broker under its own PKI (`certs init
//! --country`) and its own policy: its posts, its liaison office, and an
//! agreement with every other state of the region (every category, up to
//! TLP:RED, exercises, re-sharing). The brokers of neighbouring states
//! ([`gazetteer::NEIGHBOURS`]) are linked, each link through a flaky proxy
//! dialed by one side; each state trusts the CA of every state it has no
//! link with as an `[[origin]]`, so that alerts relayed from there prove
//! their origin. Posts sit behind agents on flaky links to their own
//! state's broker; each office follows a feed at its own.
//!
//! The verdict restates what may cross a border ([`reaches`], from
//! docs/federation.md, not from the broker's code) on top of the markings
//! each office is entitled to.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    DemoConfig, DemoResult, Home, Homes, Office, Post, Sent, Tally, Verdict, catch_up, drain,
    judge, publish_for, start_offices, start_posts,
};
use liaison::client;
use liaison::federation::{OriginConfig, PeerConfig};
use liaison::flaky::{FlakyProxy, Mode};
use liaison::gazetteer::{self, AGENCIES, NEIGHBOURS};
use liaison::identity::{CountryCode, NodeId};
use liaison::pki;
use liaison::proto as pb;
use liaison::server::{self, ServeConfig, ServeError};
use liaison::tls::TlsFiles;

/// The demo's administrator at each broker, for the links' state.
const ADMIN: &str = "demo-admin";

/// One state: its PKI, its broker's listener and data.
struct State {
    cc: &'static str,
    certs: PathBuf,
    data: PathBuf,
    policy: PathBuf,
    listener: Option<TcpListener>,
    addr: std::net::SocketAddr,
}

/// A link between two neighbours' brokers: `dialer` dials `accepter`
/// through `proxy`.
struct Link {
    dialer: &'static str,
    accepter: &'static str,
    proxy: FlakyProxy,
}

/// Runs the federated region; see the module documentation.
///
/// # Errors
/// When the region cannot be set up (ports, certificates, stores).
pub(super) async fn region(
    config: &DemoConfig,
    dir: &Path,
    say: &impl Fn(String),
) -> DemoResult<Verdict> {
    let shutdown = CancellationToken::new();
    let chaos = CancellationToken::new();
    let mut states = Vec::new();
    for (cc, agency) in AGENCIES {
        states.push(state(dir, cc, agency).await?);
    }
    let mut links = Vec::new();
    for (dialer, accepter) in NEIGHBOURS {
        let to = states
            .iter()
            .find(|s| s.cc == accepter)
            .ok_or("a neighbour without a state")?;
        let proxy = FlakyProxy::start(to.addr, Mode::Pass).await?;
        proxy.chaos(
            Duration::from_millis(300),
            Duration::from_millis(2000),
            chaos.clone(),
        );
        links.push(Link {
            dialer,
            accepter,
            proxy,
        });
    }
    let mut brokers = Vec::new();
    for i in 0..states.len() {
        brokers.push(start_broker(&mut states, i, &links, &shutdown)?);
    }
    let homes: Homes = states
        .iter()
        .map(|s| {
            let home = Home {
                addr: s.addr,
                certs: s.certs.clone(),
                data: s.data.clone(),
            };
            (s.cc, home)
        })
        .collect();

    let tally = Arc::new(Mutex::new(Tally::default()));
    let offices = start_offices(&homes, &tally, &shutdown).await?;
    let posts = start_posts(config, dir, &homes, &chaos, &shutdown).await?;
    say(format!(
        "demo --federated: {} national brokers, each with its own PKI and policy; {} links between neighbours; \
         {} posts and every link flaky; {} liaison offices, for {:?}",
        states.len(),
        links.len(),
        posts.len(),
        offices.len(),
        config.duration
    ));
    publish_for(
        config,
        &posts,
        &tally,
        &mut || region_links(&homes, &posts),
        say,
    )
    .await;

    chaos.cancel();
    for p in &posts {
        p.proxy.set(Mode::Pass);
    }
    for l in &links {
        l.proxy.set(Mode::Pass);
    }
    say("demo: publishing stopped; every link restored; draining the posts and the links".into());
    drain(&posts).await;
    let expect =
        |o: &Office, s: &Sent| reaches(s, o.node.country().as_str()) && o.should_receive(s);
    catch_up(&offices, &tally, &expect).await;
    say(region_links(&homes, &posts).await);
    shutdown.cancel();
    for (cc, broker) in brokers {
        if let Ok(Err(e)) = broker.await {
            say(format!("demo: {cc}'s broker stopped with an error: {e}"));
        }
    }
    judge(&homes, &offices, &tally, &expect).await
}

/// A state's PKI (its CA, its broker's certificate with its identity, the
/// demo's administrator), its policy and its broker's listener.
async fn state(dir: &Path, cc: &'static str, agency: &'static str) -> DemoResult<State> {
    let root = dir.join(cc.to_ascii_lowercase());
    let certs = root.join("certs");
    pki::init_for(&certs, &[], Some(CountryCode::parse(cc)?), false)?;
    pki::issue_node(&certs, &NodeId::new(cc, agency, ADMIN)?, ADMIN, 30, false)?;
    let policy = root.join("policy.toml");
    std::fs::write(&policy, policy_of(cc, agency))?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok(State {
        cc,
        certs,
        data: root.join("broker"),
        policy,
        addr: listener.local_addr()?,
        listener: Some(listener),
    })
}

/// A state's sharing policy: its posts, its office, the demo's
/// administrator, and an agreement with every other state of the region.
fn policy_of(cc: &str, agency: &str) -> String {
    let mut policy = format!(
        "[[node]]\nmatch = \"{cc}\"\nrole = \"post\"\n\n\
         [[node]]\nmatch = \"urn:liaison:{cc}:{agency}:liaison-office\"\nrole = \"liaison_office\"\n\n\
         [[node]]\nmatch = \"urn:liaison:{cc}:{agency}:{ADMIN}\"\nrole = \"administrator\"\nsubscribe = false\n"
    );
    for (other, _) in AGENCIES.iter().filter(|(o, _)| *o != cc) {
        policy.push_str(&format!(
            "\n[[agreement]]\nbetween = [\"{cc}\", \"{other}\"]\ncategories = [\"*\"]\n\
             max_tlp = \"red\"\nexercises = true\nreshare = true\n"
        ));
    }
    policy
}

/// Starts state `i`'s broker: a peer for each neighbour (dialed through the
/// link's proxy when this state dials), an origin for every other state.
fn start_broker(
    states: &mut [State],
    i: usize,
    links: &[Link],
    shutdown: &CancellationToken,
) -> DemoResult<(&'static str, JoinHandle<Result<(), ServeError>>)> {
    let cc = states[i].cc;
    let mut serve = ServeConfig::new(
        TlsFiles::in_dir(&states[i].certs, pki::BROKER_NAME),
        states[i].data.clone(),
    );
    serve.policy_file = Some(states[i].policy.clone());
    serve.broker.retention.max_age = None;
    serve.shutdown_grace = Duration::from_secs(2);
    let link = &mut serve.federation.link;
    link.backoff_min = Duration::from_millis(100);
    link.backoff_max = Duration::from_secs(1);
    link.keepalive_interval = Duration::from_secs(1);
    link.keepalive_timeout = Duration::from_secs(1);
    link.ack_timeout = Duration::from_secs(3);
    for other in states.iter().filter(|s| s.cc != cc) {
        let country = CountryCode::parse(other.cc)?;
        let broker = pki::broker_identity(country);
        let ca = other.certs.join(pki::CA_CERT);
        if !gazetteer::neighbours(cc, other.cc) {
            serve.federation.origins.push(OriginConfig {
                country,
                broker,
                ca,
            });
            continue;
        }
        let url = links
            .iter()
            .find(|l| l.dialer == cc && l.accepter == other.cc)
            .map(|l| l.proxy.url());
        serve.federation.peers.push(PeerConfig {
            name: other.cc.to_ascii_lowercase(),
            broker,
            ca,
            crl: None,
            countries: vec![country],
            url,
        });
    }
    let listener = states[i]
        .listener
        .take()
        .ok_or("the broker was started already")?;
    Ok((
        cc,
        tokio::spawn(server::run(listener, serve, shutdown.clone())),
    ))
}

/// Whether the rules let an alert from its origin's state reach a broker
/// of `to`, restated from docs/federation.md: across the first border
/// (a link to a neighbour), TLP:CLEAR and GREEN, AMBER releasable to that
/// state, RED with a recipient there; beyond it (relayed, never back to
/// the origin, never through a state twice), TLP:CLEAR anywhere and
/// TLP:GREEN only into states named in `releasable_to`.
fn reaches(s: &Sent, to: &str) -> bool {
    use pb::Tlp;
    let from = s.origin.country();
    let from = from.as_str();
    if from == to {
        return true;
    }
    let first_border = |c: &str| match s.tlp {
        Tlp::Clear | Tlp::Green => true,
        Tlp::Amber => s
            .releasable_to
            .iter()
            .any(|r| r.split(':').next() == Some(c)),
        Tlp::Red => s.recipients.iter().any(|n| n.country().as_str() == c),
        Tlp::AmberStrict | Tlp::Unspecified => false,
    };
    let onward = |c: &str| match s.tlp {
        Tlp::Clear => true,
        Tlp::Green => s.releasable_to.iter().any(|r| r == c),
        _ => false,
    };
    let countries = AGENCIES.map(|(cc, _)| cc);
    let mut reached: Vec<&str> = countries
        .iter()
        .copied()
        .filter(|c| gazetteer::neighbours(from, c) && first_border(c))
        .collect();
    let mut frontier = reached.clone();
    while let Some(u) = frontier.pop() {
        for v in countries {
            if v != from && gazetteer::neighbours(u, v) && !reached.contains(&v) && onward(v) {
                reached.push(v);
                frontier.push(v);
            }
        }
    }
    reached.contains(&to)
}

/// The links between brokers as their dialing side sees them, and the
/// posts' links: `links up 9/10 (KZ-KG down) | posts up 16/18, queued 12`.
async fn region_links(homes: &Homes, posts: &[Post]) -> String {
    let mut up = 0;
    let mut down = Vec::new();
    for (cc, home) in homes {
        for link in links_of(home).await.iter().filter(|l| l.dials) {
            if pb::LinkState::try_from(link.state) == Ok(pb::LinkState::Up) {
                up += 1;
            } else {
                down.push(format!("{cc}-{}", link.peer.to_ascii_uppercase()));
            }
        }
    }
    down.sort();
    let (mut posts_up, mut queued) = (0, 0);
    for p in posts {
        if let Some(s) = super::status(&p.url).await {
            posts_up += usize::from(pb::LinkState::try_from(s.link_state) == Ok(pb::LinkState::Up));
            queued += s.outbox_depth;
        }
    }
    let down = if down.is_empty() {
        String::new()
    } else {
        format!(" ({} down)", down.join(" "))
    };
    format!(
        "links up {up}/{}{down} | posts up {posts_up}/{}, queued {queued}",
        NEIGHBOURS.len(),
        posts.len()
    )
}

/// One broker's links, asked as the demo's administrator there.
async fn links_of(home: &Home) -> Vec<pb::LinkView> {
    let files = TlsFiles::in_dir(&home.certs, ADMIN);
    let Ok(endpoint) = client::endpoint(&format!("https://{}", home.addr), Some(&files)) else {
        return Vec::new();
    };
    let Ok(channel) = endpoint.connect().await else {
        return Vec::new();
    };
    pb::admin_client::AdminClient::new(channel)
        .links(pb::AdminLinksRequest {})
        .await
        .map(|r| r.into_inner().links)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(origin: &str, tlp: pb::Tlp, releasable_to: &[&str], recipients: &[&str]) -> Sent {
        Sent {
            origin: origin.parse().expect("urn"),
            category: pb::Category::Drugs,
            tlp,
            exercise: false,
            releasable_to: releasable_to.iter().map(|s| (*s).to_owned()).collect(),
            recipients: recipients.iter().map(|s| s.parse().expect("urn")).collect(),
        }
    }

    const TJ: &str = "urn:liaison:TJ:border-guard:ishkashim";

    #[test]
    fn what_reaches_which_state_follows_the_borders_and_the_markings() {
        let clear = sent(TJ, pb::Tlp::Clear, &[], &[]);
        assert!(
            ["KZ", "KG", "TM", "UZ", "AF"]
                .iter()
                .all(|c| reaches(&clear, c))
        );
        // GREEN: every neighbour; beyond, only into states it names.
        let green = sent(TJ, pb::Tlp::Green, &["KZ"], &[]);
        assert!(reaches(&green, "AF") && reaches(&green, "UZ") && reaches(&green, "KG"));
        assert!(reaches(&green, "KZ"), "via KG or UZ");
        assert!(!reaches(&green, "TM"), "TM is not named");
        // Naming a far state whose way in is not named does not help.
        let far = sent(
            "urn:liaison:AF:border-police:hairatan",
            pb::Tlp::Green,
            &["KG"],
            &[],
        );
        assert!(reaches(&far, "KG"), "AF-TJ-KG and AF-UZ-KG: KG named");
        assert!(!reaches(&far, "KZ"));
        // AMBER and RED: the first border only.
        let amber = sent(TJ, pb::Tlp::Amber, &["AF", "KZ"], &[]);
        assert!(reaches(&amber, "AF") && !reaches(&amber, "KZ") && !reaches(&amber, "UZ"));
        let red = sent(
            TJ,
            pb::Tlp::Red,
            &[],
            &["urn:liaison:AF:border-police:liaison-office"],
        );
        assert!(reaches(&red, "AF") && !reaches(&red, "UZ"));
        let strict = sent(TJ, pb::Tlp::AmberStrict, &[], &[]);
        assert!(reaches(&strict, "TJ") && !reaches(&strict, "AF"));
    }

    #[test]
    fn every_state_has_a_policy_the_broker_accepts() {
        for (cc, agency) in AGENCIES {
            let text = policy_of(cc, agency);
            liaison::policy::parse(&text).expect(cc);
        }
    }
}
