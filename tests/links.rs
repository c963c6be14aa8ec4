//! Posts on real links: a broker and a post's agent in two network
//! namespaces joined by an emulated link ([`liaison::linkem`]) at packet
//! level — satellite, 3G, radio. Needs root (CI runs as root); elsewhere
//! each test says SKIPPED, unless the tools are required (tools/test).
//! Small on purpose (a hundred 1 KiB alerts are about ten seconds of a
//! satellite link); the large backlogs are `liaison bench link`'s.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use liaison::linkem::bed::{Bed, words_alert};
use liaison::linkem::{self, EmulatedLink, Side};
use liaison::proto as pb;
use tokio::sync::mpsc;

/// The link, or `None` (with a note) where it cannot be made.
fn link(name: &str) -> Option<EmulatedLink> {
    make(linkem::profile(name).expect("profile"))
}

fn make(profile: linkem::Profile) -> Option<EmulatedLink> {
    match EmulatedLink::create(profile) {
        Ok(l) => Some(l),
        Err(linkem::LinkError::NotRoot)
            if std::env::var("LIAISON_TEST_TOOLS").as_deref() != Ok("required") =>
        {
            eprintln!("SKIPPED: the emulated link needs root");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// A broker and an agent over `link`, the link down, and `count` alerts of
/// 1 KiB queued at the post; the office's feed at the broker, and the ids.
async fn backlog(
    link: EmulatedLink,
    count: usize,
) -> (Bed, mpsc::Receiver<(String, Instant)>, Vec<String>) {
    link.set_up(false);
    let exe = Path::new(env!("CARGO_BIN_EXE_liaison"));
    let mut bed = Bed::start(link, exe).expect("broker");
    bed.start_agent(exe, &["--include-test"]).expect("agent");
    let feed = bed.follow("links").await.expect("office feed");
    let mut rng = rand::rng();
    let alerts: Vec<pb::Alert> = (0..count)
        .map(|_| words_alert(1024, false, &mut rng))
        .collect();
    let ids = alerts.iter().map(|a| a.id.clone()).collect();
    let mut agent = bed.agent_client().expect("agent client");
    for a in alerts {
        agent
            .publish(pb::PublishRequest { alert: Some(a) })
            .await
            .expect("queued at the post");
    }
    (bed, feed, ids)
}

/// The next arrival, or a failure naming what was awaited.
async fn next(
    feed: &mut mpsc::Receiver<(String, Instant)>,
    until: Instant,
    what: &str,
) -> (String, Instant) {
    let left = until.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, feed.recv()).await {
        Ok(Some(arrival)) => arrival,
        Ok(None) => panic!("the office's feed ended while waiting for {what}"),
        Err(_) => panic!("{what}: nothing arrived in time"),
    }
}

/// After a drain: one more alert published at the post is the very next
/// thing the office gets — nothing was left over or delivered twice.
async fn nothing_more_than(bed: &Bed, feed: &mut mpsc::Receiver<(String, Instant)>) {
    let sentinel = words_alert(200, false, &mut rand::rng());
    let id = sentinel.id.clone();
    let mut agent = bed.agent_client().expect("agent client");
    agent
        .publish(pb::PublishRequest {
            alert: Some(sentinel),
        })
        .await
        .expect("queued at the post");
    let (next_id, _) = next(
        feed,
        Instant::now() + Duration::from_secs(60),
        "the last alert",
    )
    .await;
    assert_eq!(
        next_id, id,
        "an alert arrived after the backlog had drained: a double"
    );
}

#[test]
fn the_emulated_link_delays_by_its_round_trip() {
    let Some(link) = link("satellite") else {
        return;
    };
    let t = Instant::now();
    let out = link
        .command(Side::Post, "ping")
        .args(["-c", "3", "-i", "0.2", "-W", "3", linkem::CENTRE_ADDR])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(t.elapsed() < Duration::from_secs(20));
    let rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split(' ').next()?.parse().ok())
        .collect();
    assert!(!rtts.is_empty(), "some pings answered (5 % loss): {text}");
    for rtt in rtts {
        assert!((600.0..900.0).contains(&rtt), "round trip {rtt} ms: {text}");
    }
}

/// Sixty alerts queued while the satellite link is down drain when it comes
/// up, each once; an IMMEDIATE alert published when ten have arrived
/// overtakes the rest of the backlog (the agent keeps about two round
/// trips of the link in flight, not a fixed 1,024 alerts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_over_satellite_once_each_and_an_urgent_alert_overtakes_it() {
    let Some(link) = link("satellite") else {
        return;
    };
    const COUNT: usize = 60;
    let (bed, mut feed, ids) = backlog(link, COUNT).await;
    bed.link.set_up(true);
    // 60 KiB at 64 kbit/s is 8 s; four times that and the reconnection.
    let until = Instant::now() + Duration::from_secs(60);
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut urgent: Option<String> = None;
    let mut backlog_before_urgent = None;
    while seen.len() < COUNT + usize::from(urgent.is_some()) {
        let (id, _) = next(&mut feed, until, "the backlog").await;
        *seen.entry(id.clone()).or_default() += 1;
        if urgent.as_ref() == Some(&id) {
            backlog_before_urgent = Some(seen.len() - 1);
        }
        if urgent.is_none() && seen.len() == 10 {
            let a = words_alert(1024, true, &mut rand::rng());
            urgent = Some(a.id.clone());
            bed.agent_client()
                .expect("agent client")
                .publish(pb::PublishRequest { alert: Some(a) })
                .await
                .expect("queued at the post");
        }
    }
    let doubles: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubles.is_empty(), "delivered more than once: {doubles:?}");
    let missing: Vec<_> = ids.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(missing.is_empty(), "never arrived: {missing:?}");
    let before = backlog_before_urgent.expect("the urgent alert arrived");
    assert!(
        before <= COUNT - 20,
        "the urgent alert arrived after {before} of the {COUNT} backlog alerts: it waited behind them"
    );
    nothing_more_than(&bed, &mut feed).await;
}

/// 320 alerts queued; a satellite link (without its losses) up for 12 s
/// and down for 10 s, three times: in every up window the post's outbox
/// shrinks — the broker acknowledges alerts — (a connection that TCP left
/// retransmitting at doubling intervals while the link was down is given
/// up for a new one, and a new one is tried at least every 1.5 s); then
/// everything has arrived at the office, once.
///
/// Acknowledgements, not new arrivals, are what a window must show: the
/// alerts in flight when the link went down may have arrived (the link's
/// queue still delivered them) or not, and the new connection sends them
/// again to find out; the broker stores them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_up_only_in_short_windows_moves_alerts_in_every_window() {
    // Without random loss, so that the windows test the agent's way with a
    // flapping link and not the luck of its SYNs (a lost SYN costs a
    // second): losses are the other tests' and the bench's.
    let satellite = linkem::Profile {
        loss: 0.0,
        ..linkem::profile("satellite").expect("profile")
    };
    let Some(link) = make(satellite) else { return };
    const COUNT: usize = 320;
    const UP: Duration = Duration::from_secs(12);
    const DOWN: Duration = Duration::from_secs(10);
    let (bed, mut feed, ids) = backlog(link, COUNT).await;
    let mut status = bed.agent_status_client().expect("agent status");
    let mut outbox = async || {
        status
            .status(pb::AgentStatusRequest {})
            .await
            .expect("agent status")
            .into_inner()
            .outbox_depth
    };
    let mut seen: HashSet<String> = HashSet::new();
    let arrive = |seen: &mut HashSet<String>, id: String| {
        assert!(seen.insert(id.clone()), "{id} delivered twice");
    };
    let mut acknowledged = Vec::new();
    for _ in 0..3 {
        let before = outbox().await;
        assert!(
            before > 0,
            "the backlog did not outlast the windows: {acknowledged:?}"
        );
        bed.link.set_up(true);
        let end = Instant::now() + UP;
        while let Ok(Some((id, _))) =
            tokio::time::timeout(end.saturating_duration_since(Instant::now()), feed.recv()).await
        {
            arrive(&mut seen, id);
        }
        bed.link.set_up(false);
        // Answers already on their way when the link went down still count.
        let after = outbox().await;
        acknowledged.push(before - after);
        let down_until = Instant::now() + DOWN;
        while let Ok(Some((id, _))) = tokio::time::timeout(
            down_until.saturating_duration_since(Instant::now()),
            feed.recv(),
        )
        .await
        {
            arrive(&mut seen, id);
        }
    }
    assert!(
        acknowledged.iter().all(|&n| n > 0),
        "alerts acknowledged per 12 s window: {acknowledged:?}"
    );
    bed.link.set_up(true);
    let until = Instant::now() + Duration::from_secs(90);
    while seen.len() < COUNT {
        let (id, _) = next(&mut feed, until, "the rest of the backlog").await;
        arrive(&mut seen, id);
    }
    let missing: Vec<_> = ids.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(missing.is_empty(), "never arrived: {missing:?}");
    nothing_more_than(&bed, &mut feed).await;
    eprintln!("alerts acknowledged per 12 s up-window: {acknowledged:?}");
}
