//! Retention, driven through the core without a network: the oldest alerts
//! go once the log is over its size or age limit, what is removed is
//! counted, the rest (and its dedupe) stays.

use std::time::{Duration, SystemTime};

use liaison::alert::{Limits, validate};
use liaison::broker::{Broker, BrokerConfig};
use liaison::identity::NodeId;
use liaison::proto as pb;
use liaison::store::{Store, StoreConfig};
use liaison_testkit::alert;
use tokio_util::sync::CancellationToken;

fn open_broker(dir: &std::path::Path) -> (Broker, Store) {
    let store = Store::open(dir, StoreConfig::default()).expect("store opens");
    let broker = Broker::new(
        store.clone(),
        BrokerConfig::default(),
        CancellationToken::new(),
    );
    (broker, store)
}

#[tokio::test]
async fn prune_by_size_removes_the_oldest_and_keeps_dedupe_for_the_rest() {
    let dir = tempfile::tempdir().expect("tmp");
    let (broker, store) = open_broker(dir.path());
    let node: NodeId = liaison_testkit::TJ_POST.parse().expect("urn");
    let mut ids = Vec::new();
    for i in 0..40 {
        let a = alert(pb::Category::Drugs, &format!("alert {i}"));
        ids.push(a.id.clone());
        broker.publish(&node, a).await.expect("publish");
    }
    let before = store.log_bytes().expect("bytes");
    let per_alert = before / 40;
    let limit = per_alert * 10;
    let pruned = store.prune(None, Some(limit)).await.expect("prune");
    let after = store.log_bytes().expect("bytes");
    assert!(after <= limit, "{after} > {limit}");
    assert!(
        after + 2 * per_alert > limit,
        "removed more than needed: {pruned:?}"
    );
    assert_eq!(before - after, pruned.bytes);
    assert!((29..=31).contains(&pruned.alerts), "{pruned:?}");
    let through = pruned.through.expect("through").0;
    assert_eq!(through, pruned.alerts, "the oldest go first");
    assert_eq!(
        store.first_seq().expect("first").map(|s| s.0),
        Some(through + 1)
    );

    // A pruned id is gone; a retained one still dedupes.
    let viewer: NodeId = liaison_testkit::AF_OFFICE.parse().expect("urn");
    assert!(broker.get(&viewer, &ids[0].parse().expect("id")).is_err());
    let mut again = alert(pb::Category::Drugs, "again");
    again.id = ids[39].clone();
    let ack = broker.publish(&node, again).await.expect("publish");
    assert!(ack.duplicate);
    assert_eq!(ack.seq.0, 40);

    // Sequences are never reused, even after pruning and reopening.
    store.close().await.expect("close");
    drop((broker, store));
    let (broker, _store) = open_broker(dir.path());
    let fresh = broker
        .publish(&node, alert(pb::Category::Arms, "fresh"))
        .await
        .expect("publish");
    assert_eq!(fresh.seq.0, 41);
}

#[tokio::test]
async fn prune_by_age_removes_only_alerts_older_than_the_limit() {
    let dir = tempfile::tempdir().expect("tmp");
    let (broker, store) = open_broker(dir.path());
    let node: NodeId = liaison_testkit::TJ_POST.parse().expect("urn");
    for i in 0..5 {
        broker
            .publish(&node, alert(pb::Category::Health, &format!("{i}")))
            .await
            .expect("publish");
    }
    // Nothing is a day old.
    let none = store
        .prune(Some(Duration::from_secs(86_400)), None)
        .await
        .expect("prune");
    assert_eq!(none.alerts, 0);
    // Everything received before "now" is older than a zero age.
    let all = store
        .prune(Some(Duration::ZERO), None)
        .await
        .expect("prune");
    assert_eq!(all.alerts, 5);
    assert_eq!(store.first_seq().expect("first"), None);
    // Validation still runs for what comes next.
    let mut bad = alert(pb::Category::Health, "x");
    bad.sent = Some(liaison::alert::timestamp(
        SystemTime::now() + Duration::from_secs(3600),
    ));
    assert!(validate(bad, &node, &Limits::default(), SystemTime::now()).is_err());
}
