//! The store-and-forward agent on flaky links: nothing lost, nothing
//! doubled, urgent alerts first, expiry and limits visible.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use liaison::alert::timestamp;
use liaison::flaky::{FlakyProxy, Mode};
use liaison::proto as pb;
use liaison::proto::LinkState;
use liaison_testkit::*;

async fn setup(mode: Mode) -> (TestBroker, FlakyProxy) {
    let broker = TestBroker::start().await;
    let proxy = FlakyProxy::start(broker.addr, mode).await.expect("proxy");
    (broker, proxy)
}

fn numbered(n: usize) -> Vec<pb::Alert> {
    (0..n)
        .map(|i| alert(pb::Category::Migration, &format!("routine {i}")))
        .collect()
}

#[tokio::test]
async fn local_publishes_are_acknowledged_offline_and_forwarded_when_the_link_returns() {
    let (broker, proxy) = setup(Mode::Cut).await;
    let agent = TestAgent::start(&broker, &proxy.url(), TJ_POST, |_| {}).await;
    let mut local = agent.client().await;
    for a in numbered(20) {
        let ack = publish(&mut local, a).await;
        assert!(!ack.duplicate);
    }
    let s = agent
        .wait_until("link down with 20 queued", |s| {
            s.link_state == LinkState::Down as i32
        })
        .await;
    assert_eq!(s.outbox_depth, 20);
    assert!(s.outbox_oldest.is_some());
    let mut officer = broker.client(AF_OFFICE).await;
    assert!(broker_alerts(&mut officer).await.is_empty());

    proxy.set(Mode::Pass);
    let upstream = wait_for_broker_alerts(&mut officer, 20).await;
    let expected: Vec<String> = (0..20).map(|i| format!("routine {i}")).collect();
    assert_eq!(headlines(&upstream), expected, "forwarded in publish order");
    let origin = upstream[0]
        .alert
        .as_ref()
        .and_then(|a| a.origin.as_ref())
        .expect("origin");
    assert_eq!(
        origin.urn, TJ_POST,
        "forwarded alerts carry the post's identity"
    );
    let s = agent
        .wait_until("outbox drained", |s| s.outbox_depth == 0)
        .await;
    assert_eq!(s.forwarded_total, 20);
    assert_eq!(s.link_state, LinkState::Up as i32);
    assert!(s.last_contact.is_some());
}

#[tokio::test]
async fn the_outbox_survives_an_agent_restart() {
    let (broker, proxy) = setup(Mode::Cut).await;
    let mut agent = TestAgent::start(&broker, &proxy.url(), TJ_POST, |_| {}).await;
    let mut local = agent.client().await;
    for a in numbered(10) {
        publish(&mut local, a).await;
    }
    agent.restart().await;
    assert_eq!(agent.status().await.outbox_depth, 10);
    proxy.set(Mode::Pass);
    let mut officer = broker.client(AF_OFFICE).await;
    let upstream = wait_for_broker_alerts(&mut officer, 10).await;
    assert_eq!(upstream.len(), 10);
}

#[tokio::test]
async fn urgent_alerts_go_before_the_routine_backlog_and_updates_follow_what_they_reference() {
    let (broker, proxy) = setup(Mode::Cut).await;
    let agent = TestAgent::start(&broker, &proxy.url(), TJ_POST, |_| {}).await;
    let mut local = agent.client().await;
    let routine = numbered(6);
    for a in routine.clone() {
        publish(&mut local, a).await;
    }
    let mut immediate = alert(pb::Category::Terrorism, "IMMEDIATE: FTF crossing now");
    immediate.urgency = pb::Urgency::Immediate as i32;
    publish(&mut local, immediate).await;
    let mut extreme = alert(pb::Category::Cbrn, "EXTREME: radiation alarm");
    extreme.severity = pb::Severity::Extreme as i32;
    publish(&mut local, extreme).await;
    // An urgent update of routine alert 2: alert 2 must not be overtaken.
    let mut update = alert(pb::Category::Migration, "IMMEDIATE update of routine 2");
    update.msg_type = pb::MsgType::Update as i32;
    update.references = vec![routine[2].id.clone()];
    update.urgency = pb::Urgency::Immediate as i32;
    publish(&mut local, update).await;

    proxy.set(Mode::Pass);
    let mut officer = broker.client(AF_OFFICE).await;
    let upstream = wait_for_broker_alerts(&mut officer, 9).await;
    assert_eq!(
        headlines(&upstream),
        [
            "routine 2",
            "IMMEDIATE: FTF crossing now",
            "EXTREME: radiation alarm",
            "IMMEDIATE update of routine 2",
            "routine 0",
            "routine 1",
            "routine 3",
            "routine 4",
            "routine 5",
        ]
    );
}

#[tokio::test]
async fn an_alert_that_expired_in_the_queue_is_not_sent_but_counted() {
    let (broker, proxy) = setup(Mode::Cut).await;
    let agent = TestAgent::start(&broker, &proxy.url(), TJ_POST, |_| {}).await;
    let mut local = agent.client().await;
    let mut stale = alert(pb::Category::Health, "screening until an hour ago");
    stale.sent = Some(timestamp(SystemTime::now() - Duration::from_secs(7200)));
    stale.expires = Some(timestamp(SystemTime::now() - Duration::from_secs(3600)));
    publish(&mut local, stale).await;
    publish(&mut local, alert(pb::Category::Health, "still relevant")).await;

    proxy.set(Mode::Pass);
    let s = agent
        .wait_until("outbox drained", |s| s.outbox_depth == 0)
        .await;
    assert_eq!((s.expired_total, s.forwarded_total), (1, 1), "{s:?}");
    let mut officer = broker.client(AF_OFFICE).await;
    assert_eq!(
        headlines(&broker_alerts(&mut officer).await),
        ["still relevant"]
    );
    // Still in the agent's own store and history: expired, not deleted.
    assert_eq!(broker_alerts(&mut local).await.len(), 2);
}

#[tokio::test]
async fn a_full_outbox_refuses_new_publishes_and_keeps_the_old_ones() {
    let (broker, proxy) = setup(Mode::Cut).await;
    let agent = TestAgent::start(&broker, &proxy.url(), TJ_POST, |c| c.outbox.max_alerts = 3).await;
    let mut local = agent.client().await;
    for a in numbered(3) {
        publish(&mut local, a).await;
    }
    let refused = local
        .publish(pb::PublishRequest {
            alert: Some(alert(pb::Category::Arms, "one too many")),
        })
        .await
        .expect_err("outbox full");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("outbox is full"),
        "{}",
        refused.message()
    );

    proxy.set(Mode::Pass);
    let mut officer = broker.client(AF_OFFICE).await;
    let upstream = wait_for_broker_alerts(&mut officer, 3).await;
    assert_eq!(
        headlines(&upstream),
        ["routine 0", "routine 1", "routine 2"]
    );
    agent
        .wait_until("outbox drained", |s| s.outbox_depth == 0)
        .await;
    publish(&mut local, alert(pb::Category::Arms, "room again")).await;
}

#[tokio::test]
async fn a_link_cut_in_the_middle_of_a_batch_creates_no_duplicates_upstream() {
    let (broker, proxy) = setup(Mode::Cut).await;
    let agent = TestAgent::start(&broker, &proxy.url(), TJ_POST, |_| {}).await;
    let mut local = agent.client().await;
    let alerts = numbered(300);
    let ids: HashSet<String> = alerts.iter().map(|a| a.id.clone()).collect();
    for a in alerts {
        publish(&mut local, a).await;
    }
    // Let part of the backlog (~90 KB in all, with TLS and HTTP/2 framing)
    // through, then drop the link: acknowledgements in flight are lost.
    proxy.cut_after(30_000);
    proxy.set(Mode::Pass);
    proxy.wait_for(Mode::Cut).await;
    let mut officer = broker.client(AF_OFFICE).await;
    let partial = broker_alerts(&mut officer).await.len();
    assert!(partial < 300, "the cut came before the end of the batch");
    eprintln!("broker held {partial} of 300 alerts when the link was cut");

    proxy.set(Mode::Pass);
    let s = agent
        .wait_until("outbox drained", |s| s.outbox_depth == 0)
        .await;
    assert_eq!(s.forwarded_total, 300);
    let upstream = broker_alerts(&mut officer).await;
    assert_eq!(
        upstream.len(),
        300,
        "no duplicates, nothing lost (cut after {partial})"
    );
    let got: HashSet<String> = upstream
        .iter()
        .map(|r| r.alert.as_ref().expect("alert").id.clone())
        .collect();
    assert_eq!(got, ids);
}

#[tokio::test]
async fn a_stalled_link_is_detected_and_the_agent_reconnects() {
    let (broker, proxy) = setup(Mode::Pass).await;
    let agent = TestAgent::start(&broker, &proxy.url(), TJ_POST, |_| {}).await;
    let mut local = agent.client().await;
    publish(&mut local, alert(pb::Category::Drugs, "before the stall")).await;
    agent
        .wait_until("first alert forwarded", |s| s.forwarded_total == 1)
        .await;

    // Bytes stop flowing but the sockets stay open.
    proxy.set(Mode::Stall);
    publish(&mut local, alert(pb::Category::Drugs, "during the stall")).await;
    agent
        .wait_until("stall detected", |s| s.link_state == LinkState::Down as i32)
        .await;

    proxy.set(Mode::Pass);
    let s = agent
        .wait_until("forwarded after the stall", |s| s.forwarded_total == 2)
        .await;
    assert!(s.reconnects >= 1);
    let mut officer = broker.client(AF_OFFICE).await;
    assert_eq!(
        headlines(&broker_alerts(&mut officer).await),
        ["before the stall", "during the stall"]
    );
}

/// A post's own alerts are in its store already; carrying them back down
/// the link would double the traffic on the scarcest link.
#[tokio::test]
async fn a_posts_own_alerts_do_not_come_back_down_its_inbox() {
    let (broker, proxy) = setup(Mode::Pass).await;
    let agent = TestAgent::start(&broker, &proxy.url(), TJ_POST, |_| {}).await;
    agent
        .wait_until("link up", |s| s.link_state == LinkState::Up as i32)
        .await;
    let own: Vec<pb::Alert> = (0..200)
        .map(|i| {
            let mut a = alert(pb::Category::Migration, &format!("own {i}"));
            // Random letters: gzip on the link cannot make them small.
            a.description = rand::Rng::sample_iter(rand::rng(), rand::distr::Alphanumeric)
                .take(16 * 1024)
                .map(char::from)
                .collect();
            a
        })
        .collect();
    publish_many(&mut agent.client().await, own).await;
    agent
        .wait_until("forwarded", |s| s.forwarded_total == 200)
        .await;
    // A neighbour's alert comes down after them: once it is in the inbox,
    // everything the feed had before it has been delivered too.
    let mut neighbour = broker.client(AF_OFFICE).await;
    publish(&mut neighbour, alert(pb::Category::Migration, "theirs")).await;
    let s = agent
        .wait_until("inbox received", |s| s.inbox_total >= 1)
        .await;
    assert_eq!(s.inbox_total, 1, "own alerts came back down: {s:?}");
    let (up, down) = proxy.bytes();
    assert!(up > 200 * 8 * 1024, "up {up}");
    assert!(down < up / 10, "{down} bytes down for {up} up");
}

#[tokio::test]
async fn the_inbox_serves_local_subscribers_while_the_link_is_down() {
    let (broker, proxy) = setup(Mode::Pass).await;
    let agent = TestAgent::start(&broker, &proxy.url(), TJ_POST, |c| {
        c.inbox.filter.categories = vec![pb::Category::Drugs as i32];
    })
    .await;
    agent
        .wait_until("link up", |s| s.link_state == LinkState::Up as i32)
        .await;
    let mut neighbour = broker.client(AF_OFFICE).await;
    publish(
        &mut neighbour,
        alert(pb::Category::Arms, "not for the inbox filter"),
    )
    .await;
    publish(
        &mut neighbour,
        alert(pb::Category::Drugs, "caravan heading to the river"),
    )
    .await;
    agent
        .wait_until("inbox received", |s| s.inbox_total == 1)
        .await;

    proxy.set(Mode::Cut);
    agent
        .wait_until("link down", |s| s.link_state == LinkState::Down as i32)
        .await;
    let mut officer_at_post = agent.client().await;
    let mut sub = Subscriber::open(
        &mut officer_at_post,
        pb::OpenFeed {
            start: start_all(),
            ..open("post-officer", pb::Filter::default())
        },
    )
    .await;
    let d = sub.next().await;
    assert_eq!(
        headlines(&[d.record.clone().expect("record")]),
        ["caravan heading to the river"]
    );
    let origin = d
        .record
        .and_then(|r| r.alert)
        .and_then(|a| a.origin)
        .expect("origin");
    assert_eq!(origin.urn, AF_OFFICE, "inbox alerts keep their origin");
    // The agent's own publishes are not echoed back into its outbox.
    assert_eq!(agent.status().await.outbox_depth, 0);
}

#[tokio::test]
async fn a_refused_certificate_is_reported_apart_from_a_network_failure() {
    let broker = TestBroker::start().await;
    let rogue = liaison::pki::Ca::generate("rogue").expect("ca");
    let files = broker.pki.custom(
        "rogue-post",
        &liaison::pki::LeafSpec::node(&TJ_POST.parse().expect("urn"), 1),
        Some(&rogue),
    );
    // The agent trusts the real CA (to verify the broker) but carries a
    // certificate the broker does not trust.
    let agent = TestAgent::start(&broker, &broker.url(), TJ_POST, |c| {
        c.tls.cert = files.cert.clone();
        c.tls.key = files.key.clone();
    })
    .await;
    let mut local = agent.client().await;
    publish(&mut local, alert(pb::Category::Drugs, "queued, never sent")).await;
    let s = agent
        .wait_until("refused", |s| s.link_state == LinkState::Refused as i32)
        .await;
    assert!(s.last_error.contains("UnknownCA"), "{}", s.last_error);
    assert_eq!(s.outbox_depth, 1);
}

#[tokio::test]
async fn plaintext_is_refused_on_a_non_loopback_listener() {
    let broker = TestBroker::start().await;
    let data = tempfile::tempdir().expect("tmp");
    let config = liaison::agent::AgentConfig::new(
        broker.url(),
        broker.pki.node(TJ_POST),
        data.path().to_owned(),
    );
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let err = liaison::agent::run(listener, config, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("refused");
    assert!(
        matches!(err, liaison::agent::AgentError::PlaintextNotLoopback(_)),
        "{err}"
    );
}
