//! Durability: acknowledged alerts survive a restart and `kill -9`, and a
//! shutdown completes within its deadline while subscribers are connected.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use liaison::client;
use liaison::proto as pb;
use liaison::store::{Store, StoreConfig};
use liaison_testkit::*;
use prost::Message as _;
use rand::Rng;

#[tokio::test]
async fn acknowledged_alerts_are_all_present_in_order_after_a_restart() {
    let mut broker = TestBroker::start().await;
    let mut post = broker.client(TJ_POST).await;
    let mut acks = Vec::new();
    for i in 0..200 {
        acks.push(publish(&mut post, alert(pb::Category::Migration, &format!("{i}"))).await);
    }
    broker.restart().await;
    let mut post = broker.client(TJ_POST).await;
    let mut stored = Vec::new();
    let mut req = pb::ListAlertsRequest {
        page_size: 64,
        ..Default::default()
    };
    loop {
        let page = post
            .list_alerts(req.clone())
            .await
            .expect("list")
            .into_inner();
        stored.extend(
            page.alerts
                .into_iter()
                .map(|r| (r.seq, r.alert.expect("alert").id)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    let expected: Vec<(u64, String)> = acks.iter().map(|a| (a.seq, a.id.clone())).collect();
    assert_eq!(stored, expected);
    // New alerts continue the sequence.
    let next = publish(&mut post, alert(pb::Category::Other, "after restart")).await;
    assert_eq!(next.seq, acks[199].seq + 1);
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_completes_within_the_deadline() {
    let mut broker = TestBroker::start_with(|c| c.shutdown_grace = Duration::from_secs(5)).await;
    let mut officer = broker.client(AF_OFFICE).await;
    let mut sub = Subscriber::open(&mut officer, open("main", pb::Filter::default())).await;
    let handle = broker.take_handle().expect("running");
    broker.shutdown_token().cancel();
    let ended = sub
        .next_event()
        .await
        .expect_err("stream ends with a status");
    assert_eq!(ended.code(), tonic::Code::Unavailable);
    // Bounded by the grace period; the bound here only turns a hang into a failure.
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("shutdown finished within the deadline")
        .expect("task")
        .expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_alert_survives_kill_9_at_random_moments() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("tmp");
    let store_dir = data.path().join("store");
    let files = pki.node(TJ_POST);
    let mut acknowledged: HashSet<String> = HashSet::new();
    let mut rng = rand::rng();
    for round in 0..5 {
        let server = ServeProcess::start(pki.path(), &store_dir);
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut publishers = Vec::new();
        for _ in 0..16 {
            let mut client = client::connect(&server.url, Some(&files))
                .await
                .expect("connect");
            let acked = acked.clone();
            publishers.push(tokio::spawn(async move {
                loop {
                    let a = alert(pb::Category::Drugs, "crash test");
                    let id = a.id.clone();
                    match client.publish(pb::PublishRequest { alert: Some(a) }).await {
                        Ok(_) => acked.lock().expect("lock").push(id),
                        Err(_) => return, // the broker died under us
                    }
                }
            }));
        }
        // The random moment of the crash.
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
        server.kill9();
        for p in publishers {
            p.await.expect("publisher");
        }
        let acked = std::mem::take(&mut *acked.lock().expect("lock"));
        assert!(
            !acked.is_empty(),
            "round {round}: nothing was acknowledged before the kill"
        );
        acknowledged.extend(acked);

        // The store opens cleanly and holds every acknowledged alert.
        let store =
            Store::open(&store_dir, StoreConfig::default()).expect("store reopens after kill -9");
        let mut present = HashSet::new();
        let mut from = liaison::alert::Seq(1);
        loop {
            let chunk = store.scan(from, 1024).expect("scan");
            let Some(last) = chunk.last() else { break };
            from = last.seq.next();
            present.extend(chunk.iter().map(|r| r.alert.id.to_string()));
        }
        let missing: Vec<_> = acknowledged.difference(&present).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged alerts lost: {missing:?}",
            missing.len()
        );
        // Whole groups, not parts of them: every alert's id index is there
        // (dedupe), and the counters match the records.
        let mut bytes = 0;
        let mut from = liaison::alert::Seq(1);
        loop {
            let chunk = store.scan(from, 1024).expect("scan");
            let Some(last) = chunk.last() else { break };
            from = last.seq.next();
            for r in &chunk {
                let by_id = store.get_by_id(&r.alert.id).expect("get by id");
                assert_eq!(
                    by_id.map(|b| b.seq),
                    Some(r.seq),
                    "round {round}: alert {} has no id index",
                    r.alert.id
                );
                bytes += r.to_proto().encoded_len() as u64;
            }
        }
        assert_eq!(store.log_bytes().expect("bytes"), bytes, "round {round}");
        store.close().await.expect("close");
        drop(store);
        // The audit trail is unbroken: every group's record made it whole.
        let verify = std::process::Command::new(env!("CARGO_BIN_EXE_liaison"))
            .args(["audit", "verify", "--data"])
            .arg(&store_dir)
            .output()
            .expect("run audit verify");
        assert!(
            verify.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }
}

/// A subscriber that acknowledged everything and closed its stream cleanly
/// may forget those alerts: a `kill -9` right after the close must not
/// bring them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_sent_before_a_clean_close_survive_a_kill_9_right_after() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("tmp");
    let store_dir = data.path().join("store");
    let server = ServeProcess::start(pki.path(), &store_dir);
    let mut post = client::connect(&server.url, Some(&pki.node(TJ_POST)))
        .await
        .expect("connect");
    let alerts: Vec<_> = (0..41)
        .map(|i| alert(pb::Category::Drugs, &format!("{i}")))
        .collect();
    publish_many(&mut post, alerts).await;
    let mut officer = client::connect(&server.url, Some(&pki.node(AF_OFFICE)))
        .await
        .expect("connect");
    let mut feed = pb::OpenFeed {
        start: start_all(),
        ..open("main", pb::Filter::default())
    };
    let mut sub = Subscriber::open(&mut officer, feed.clone()).await;
    let mut seqs = Vec::new();
    for _ in 0..41 {
        seqs.push(seq_of(&sub.next().await));
    }
    sub.ack(&seqs).await;
    sub.close().await;
    server.kill9();

    let server = ServeProcess::start(pki.path(), &store_dir);
    let mut post = client::connect(&server.url, Some(&pki.node(TJ_POST)))
        .await
        .expect("connect");
    let barrier = publish(&mut post, alert(pb::Category::Drugs, "after the crash")).await;
    let mut officer = client::connect(&server.url, Some(&pki.node(AF_OFFICE)))
        .await
        .expect("connect");
    feed.start = None;
    let mut sub = Subscriber::open(&mut officer, feed).await;
    assert_eq!(sub.opened.ack_floor, 41, "the cursor survived the crash");
    let next = sub.next().await;
    assert_eq!(
        seq_of(&next),
        barrier.seq,
        "an acknowledged alert came back"
    );
}
