//! The agent on links that misbehave for longer: flapping, black holes,
//! SIGKILL and broker restarts mid-drain, a long routine backlog, and a
//! simulated region of agencies behind flaky links.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use liaison::flaky::{FlakyProxy, Mode};
use liaison::proto as pb;
use liaison::proto::LinkState;
use liaison_testkit::*;
use rand::Rng;
use tokio_util::sync::CancellationToken;

fn numbered(n: usize, prefix: &str) -> Vec<pb::Alert> {
    (0..n)
        .map(|i| alert(pb::Category::Migration, &format!("{prefix} {i}")))
        .collect()
}

/// Asserts that the broker holds exactly `expected` (by id), each once, in
/// the order given.
fn assert_exactly_once_in_order(upstream: &[pb::AlertRecord], expected: &[String]) {
    let got: Vec<String> = upstream
        .iter()
        .map(|r| r.alert.as_ref().expect("alert").id.clone())
        .collect();
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "an alert is stored twice upstream");
    assert_eq!(got.len(), expected.len(), "alerts missing upstream");
    assert!(got == expected, "upstream order differs from publish order");
}

#[tokio::test]
async fn a_thousand_alerts_published_while_the_link_is_down_arrive_once_in_order() {
    let broker = TestBroker::start().await;
    let proxy = FlakyProxy::start(broker.addr, Mode::Cut)
        .await
        .expect("proxy");
    let agent = TestAgent::start(&broker, &proxy.url(), TJ_POST, |_| {}).await;
    let alerts = numbered(1000, "offline");
    let ids: Vec<String> = alerts.iter().map(|a| a.id.clone()).collect();
    publish_many(&mut agent.client().await, alerts).await;
    assert_eq!(agent.status().await.outbox_depth, 1000);

    proxy.set(Mode::Pass);
    agent.wait_until("drained", |s| s.outbox_depth == 0).await;
    let mut officer = broker.client(AF_OFFICE).await;
    assert_exactly_once_in_order(&broker_alerts(&mut officer).await, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_flapping_during_the_drain_stores_every_alert_once_in_order() {
    let broker = TestBroker::start().await;
    let proxy = FlakyProxy::start(broker.addr, Mode::Cut)
        .await
        .expect("proxy");
    let agent = TestAgent::start(&broker, &proxy.url(), TJ_POST, |_| {}).await;
    let alerts = numbered(3000, "flap");
    let ids: Vec<String> = alerts.iter().map(|a| a.id.clone()).collect();
    publish_many(&mut agent.client().await, alerts).await;

    // Each connection is cut after 48 KiB — a handshake and a few rounds of
    // alerts — however fast or loaded the machine is: the drain must make
    // progress on every one of them, and finish.
    proxy.cut_each_connection_after(Some(48 * 1024));
    proxy.set(Mode::Pass);
    let s = agent.wait_until("drained", |s| s.outbox_depth == 0).await;
    assert_eq!(s.forwarded_total, 3000);
    assert!(
        s.reconnects >= 2,
        "the drain was cut only {} times",
        s.reconnects
    );
    let mut officer = broker.client(AF_OFFICE).await;
    assert_exactly_once_in_order(&broker_alerts(&mut officer).await, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_drain_loses_nothing_and_doubles_nothing() {
    let broker = TestBroker::start().await;
    let proxy = FlakyProxy::start(broker.addr, Mode::Cut)
        .await
        .expect("proxy");
    let data = tempfile::tempdir().expect("tmp");
    broker.pki.node(TJ_POST);
    let name = cert_name(TJ_POST);
    let agent = AgentProcess::start(&proxy.url(), broker.pki.path(), &name, data.path());
    let alerts = numbered(2000, "kill");
    let ids: Vec<String> = alerts.iter().map(|a| a.id.clone()).collect();
    let mut local = liaison::client::connect(&agent.url, None)
        .await
        .expect("connect");
    publish_many(&mut local, alerts).await;

    // Let part of the backlog through, then SIGKILL the agent mid-drain.
    proxy.set(Mode::Pass);
    let mut officer = broker.client(AF_OFFICE).await;
    wait_for_broker_alerts(&mut officer, 1).await;
    agent.kill9();
    let before_restart = broker_alerts(&mut officer).await.len();

    let agent = AgentProcess::start(&proxy.url(), broker.pki.path(), &name, data.path());
    eventually("the restarted agent drains", || async {
        (agent_status(&agent.url).await.outbox_depth == 0)
            .then_some(())
            .ok_or(())
    })
    .await;
    eprintln!("the broker held {before_restart} of 2000 when the agent was killed");
    assert_exactly_once_in_order(&broker_alerts(&mut officer).await, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_in_the_middle_of_a_drain_loses_nothing() {
    let mut broker = TestBroker::start().await;
    let proxy = FlakyProxy::start(broker.addr, Mode::Cut)
        .await
        .expect("proxy");
    let agent = TestAgent::start(&broker, &proxy.url(), TJ_POST, |_| {}).await;
    let alerts = numbered(3000, "restart");
    let ids: Vec<String> = alerts.iter().map(|a| a.id.clone()).collect();
    publish_many(&mut agent.client().await, alerts).await;

    proxy.set(Mode::Pass);
    agent
        .wait_until("drain under way", |s| s.forwarded_total > 0)
        .await;
    broker.restart().await;
    proxy.retarget(broker.addr);
    let s = agent
        .wait_until("drained after the restart", |s| s.outbox_depth == 0)
        .await;
    assert_eq!(s.forwarded_total, 3000);
    let mut officer = broker.client(AF_OFFICE).await;
    assert_exactly_once_in_order(&broker_alerts(&mut officer).await, &ids);
}

#[tokio::test]
async fn a_black_holed_link_is_detected_and_the_agent_reconnects() {
    let broker = TestBroker::start().await;
    let proxy = FlakyProxy::start(broker.addr, Mode::Pass)
        .await
        .expect("proxy");
    let agent = TestAgent::start(&broker, &proxy.url(), TJ_POST, |_| {}).await;
    let mut local = agent.client().await;
    agent
        .wait_until("link up", |s| s.link_state == LinkState::Up as i32)
        .await;

    // Bytes vanish without an error; sockets stay open.
    proxy.set(Mode::BlackHole);
    publish(&mut local, alert(pb::Category::Arms, "into the void")).await;
    agent
        .wait_until("black hole detected", |s| {
            s.link_state == LinkState::Down as i32
        })
        .await;
    proxy.set(Mode::Pass);
    agent
        .wait_until("forwarded", |s| s.forwarded_total == 1)
        .await;
    let mut officer = broker.client(AF_OFFICE).await;
    assert_eq!(
        headlines(&broker_alerts(&mut officer).await),
        ["into the void"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_alert_behind_ten_thousand_routine_ones_reaches_the_broker_first() {
    let broker = TestBroker::start().await;
    let proxy = FlakyProxy::start(broker.addr, Mode::Cut)
        .await
        .expect("proxy");
    let agent = TestAgent::start(&broker, &proxy.url(), TJ_POST, |_| {}).await;
    let mut local = agent.client().await;
    publish_many(&mut local, numbered(10_000, "routine")).await;
    let mut urgent = alert(
        pb::Category::Cbrn,
        "IMMEDIATE: radioactive source at the crossing",
    );
    urgent.urgency = pb::Urgency::Immediate as i32;
    publish(&mut local, urgent).await;

    proxy.set(Mode::Pass);
    let mut officer = broker.client(AF_OFFICE).await;
    let first = wait_for_broker_alerts(&mut officer, 1).await;
    assert_eq!(
        headlines(&first[..1]),
        ["IMMEDIATE: radioactive source at the crossing"]
    );
    agent.wait_until("drained", |s| s.outbox_depth == 0).await;
    let all = broker_alerts(&mut officer).await;
    assert_eq!(all.len(), 10_001);
    assert_eq!(headlines(&all[1..2]), ["routine 0"]);
}

/// One post of the simulated region: an agent behind its own flapping link.
struct Post {
    agent: TestAgent,
    _proxy: FlakyProxy,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_region_loses_nothing_and_every_feed_gets_what_its_filter_matches() {
    let broker = TestBroker::start().await;
    let stop = CancellationToken::new();
    let countries = [
        ("TJ", "border-guard"),
        ("AF", "border-police"),
        ("UZ", "border-troops"),
    ];
    let categories = [
        pb::Category::Drugs,
        pb::Category::Arms,
        pb::Category::Migration,
        pb::Category::Health,
    ];

    // One liaison office per country, each with a durable feed of two categories.
    let mut feeds = Vec::new();
    for (i, (cc, agency)) in countries.iter().enumerate() {
        let urn = format!("urn:liaison:{cc}:{agency}:liaison-office");
        let wanted = vec![categories[i % 4], categories[(i + 1) % 4]];
        let mut client = broker.client(&urn).await;
        let filter = pb::Filter {
            categories: wanted.iter().map(|c| *c as i32).collect(),
            ..Default::default()
        };
        let sub = Subscriber::open(
            &mut client,
            pb::OpenFeed {
                max_in_flight: 1024,
                ..open("region", filter)
            },
        )
        .await;
        feeds.push((urn, wanted, sub, client));
    }

    // Two posts per country, each behind a link that flaps at its own pace.
    let mut posts = Vec::new();
    for (cc, agency) in countries {
        for n in 0..2 {
            let urn = format!("urn:liaison:{cc}:{agency}:post-{n}");
            let proxy = FlakyProxy::start(broker.addr, Mode::Pass)
                .await
                .expect("proxy");
            proxy.flap(Duration::from_millis(100 + 70 * n), stop.clone());
            let agent = TestAgent::start(&broker, &proxy.url(), &urn, |_| {}).await;
            posts.push(Post {
                agent,
                _proxy: proxy,
            });
        }
    }

    // Every post publishes random TLP:GREEN alerts across the categories.
    let mut published: HashMap<String, pb::Category> = HashMap::new();
    let mut rng = rand::rng();
    for round in 0..40 {
        for post in &posts {
            let category = categories[rng.random_range(0..categories.len())];
            let a = alert(category, &format!("round {round}"));
            let mut client = post.agent.client().await;
            let ack = publish(&mut client, a).await;
            published.insert(ack.id, category);
        }
    }
    stop.cancel();
    for post in &posts {
        post.agent
            .wait_until("post drained", |s| s.outbox_depth == 0)
            .await;
    }

    // Every acknowledged alert is stored exactly once.
    let mut officer = broker.client(KG_CENTRE).await;
    let stored = broker_alerts(&mut officer).await;
    let stored_ids: Vec<String> = stored
        .iter()
        .map(|r| r.alert.as_ref().expect("alert").id.clone())
        .collect();
    assert_eq!(stored_ids.len(), published.len(), "stored count");
    assert_eq!(
        stored_ids.iter().collect::<HashSet<_>>().len(),
        stored_ids.len(),
        "stored twice"
    );
    assert_eq!(
        stored_ids.iter().cloned().collect::<HashSet<_>>(),
        published.keys().cloned().collect::<HashSet<_>>()
    );

    // Every feed receives exactly the alerts its filter matches.
    for (urn, wanted, sub, _) in &mut feeds {
        let expected: HashSet<String> = published
            .iter()
            .filter(|(_, c)| wanted.contains(c))
            .map(|(id, _)| id.clone())
            .collect();
        let mut got = HashSet::new();
        while got.len() < expected.len() {
            let d = sub.next().await;
            let record = d.record.expect("record");
            sub.ack(&[record.seq]).await;
            let id = record.alert.expect("alert").id;
            assert!(
                expected.contains(&id),
                "{urn} received an alert its filter does not match"
            );
            got.insert(id);
        }
        assert_eq!(got, expected, "{urn}");
    }
}
