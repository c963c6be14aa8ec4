//! The store's failure paths, reached with injected faults: a write of the
//! write-ahead log that fails, a sync that fails, a group applied to sled
//! only in part. Every waiting caller hears of it, nothing is stored by
//! half, and a reopened store is whole.

use std::sync::Arc;

use liaison::alert::{AlertId, Seq};
use liaison::broker::{Broker, BrokerConfig, BrokerError};
use liaison::identity::NodeId;
use liaison::proto as pb;
use liaison::store::{Fault, Faults, Store, StoreConfig, StoreError, Writes};
use liaison_testkit::{TJ_POST, alert};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

fn open(dir: &std::path::Path, faults: &Arc<Faults>) -> (Broker, Store) {
    let config = StoreConfig {
        faults: Some(faults.clone()),
        ..StoreConfig::default()
    };
    let store = Store::open(dir, config).expect("store opens");
    let broker = Broker::new(
        store.clone(),
        BrokerConfig::default(),
        CancellationToken::new(),
    );
    (broker, store)
}

fn post() -> NodeId {
    TJ_POST.parse().expect("urn")
}

/// Publishes `n` alerts at once (so that they share groups); returns each
/// alert's id with its answer.
async fn publish_together(
    broker: &Broker,
    n: usize,
) -> Vec<(AlertId, Result<liaison::broker::PublishAck, BrokerError>)> {
    let mut pending = Vec::new();
    for i in 0..n {
        let a = alert(pb::Category::Drugs, &format!("together {i}"));
        let id: AlertId = a.id.parse().expect("id");
        match broker.submit(&post(), a).await {
            Ok(fut) => pending.push((id, Box::pin(fut))),
            Err(e) => panic!("not even submitted: {e}"),
        }
    }
    let mut out = Vec::new();
    for (id, fut) in pending {
        out.push((id, fut.await));
    }
    out
}

/// Checks what a store holds is whole: every record has its id index, the
/// byte counter matches the records, and the audit chain verifies.
fn assert_whole(store: &Store) {
    let mut from = Seq(1);
    let mut bytes = 0u64;
    loop {
        let chunk = store.scan(from, 1024).expect("scan");
        let Some(last) = chunk.last() else { break };
        from = last.seq.next();
        for r in &chunk {
            let by_id = store.get_by_id(&r.alert.id).expect("get by id");
            assert_eq!(
                by_id.map(|b| b.seq),
                Some(r.seq),
                "alert {} has no id index",
                r.alert.id
            );
            bytes += r.to_proto().encoded_len() as u64;
        }
    }
    assert_eq!(
        store.log_bytes().expect("bytes"),
        bytes,
        "the counter matches the records"
    );
    let records = store.audit_records(1, usize::MAX).expect("audit");
    liaison::audit::verify(records).expect("the audit chain is whole");
}

#[tokio::test]
async fn a_failed_wal_write_refuses_its_group_stores_nothing_and_the_store_goes_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let faults = Arc::new(Faults::default());
    let (broker, store) = open(dir.path(), &faults);
    let first = broker
        .publish(&post(), alert(pb::Category::Drugs, "before"))
        .await
        .expect("publish");

    faults.fail(Fault::WalWrite, 1);
    let refused = alert(pb::Category::Drugs, "refused");
    let refused_id: AlertId = refused.id.parse().expect("id");
    let err = broker.publish(&post(), refused).await.expect_err("refused");
    assert!(
        matches!(&err, BrokerError::Store(e) if e.is_resource_exhausted()),
        "{err:?}"
    );
    assert_eq!(store.head(), first.seq, "nothing of the group is visible");
    assert!(store.get_by_id(&refused_id).expect("get").is_none());

    // The store goes on, and the next alert takes the next sequence.
    let after = broker
        .publish(&post(), alert(pb::Category::Drugs, "after"))
        .await
        .expect("the store goes on");
    assert_eq!(after.seq, first.seq.next());
    assert_eq!(*store.watch_writes().borrow(), Writes::Accepting);
    assert_whole(&store);
    store.close().await.expect("close");
    drop((broker, store));

    let (_broker, store) = open(dir.path(), &faults);
    assert!(store.get_by_id(&refused_id).expect("get").is_none());
    assert_eq!(store.head(), after.seq);
    assert_whole(&store);
}

#[tokio::test]
async fn a_failed_sync_answers_every_waiting_caller_and_a_restart_is_whole() {
    let dir = tempfile::tempdir().expect("tmp");
    let faults = Arc::new(Faults::default());
    let (broker, store) = open(dir.path(), &faults);
    publish_together(&broker, 5).await;

    faults.fail(Fault::WalSync, 1);
    let answers = publish_together(&broker, 20).await;
    let failed: Vec<AlertId> = answers
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(id, _)| *id)
        .collect();
    assert!(!failed.is_empty(), "a sync failed and nobody heard of it");
    for (_, r) in &answers {
        if let Err(e) = r {
            assert!(matches!(e, BrokerError::Store(_)), "{e:?}");
        }
    }
    // Writes stop (the drive may have lost what it did not sync); reads
    // go on.
    assert!(matches!(*store.watch_writes().borrow(), Writes::Stopped(_)));
    let later = broker
        .publish(&post(), alert(pb::Category::Drugs, "later"))
        .await
        .expect_err("writes are stopped");
    assert!(
        matches!(later, BrokerError::Store(StoreError::Failed(_))),
        "{later:?}"
    );
    for (id, r) in &answers {
        if r.is_ok() {
            assert!(store.get_by_id(id).expect("read").is_some());
        }
    }
    store.close().await.expect("a clean close, even now");
    drop((broker, store));

    // The restart replays the log: every acknowledged alert is there, and
    // whatever else is there is there whole.
    let (broker, store) = open(dir.path(), &faults);
    for (id, r) in &answers {
        if r.is_ok() {
            assert!(store.get_by_id(id).expect("read").is_some(), "{id} lost");
        }
    }
    assert_whole(&store);
    broker
        .publish(&post(), alert(pb::Category::Drugs, "after the restart"))
        .await
        .expect("writes again");
}

#[tokio::test]
async fn a_group_applied_in_part_is_completed_by_the_next_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let faults = Arc::new(Faults::default());
    let (broker, store) = open(dir.path(), &faults);
    publish_together(&broker, 3).await;

    faults.fail(Fault::Apply, 1);
    let answers = publish_together(&broker, 10).await;
    assert!(matches!(*store.watch_writes().borrow(), Writes::Stopped(_)));
    // The group whose apply failed heard the failure itself; the groups
    // after it were refused without being written.
    let in_failed_group: Vec<AlertId> = answers
        .iter()
        .filter(|(_, r)| matches!(r, Err(BrokerError::Store(StoreError::Io { .. }))))
        .map(|(id, _)| *id)
        .collect();
    assert!(!in_failed_group.is_empty(), "{answers:?}");
    store.close().await.expect("close");
    drop((broker, store));

    let (_broker, store) = open(dir.path(), &faults);
    // The group's record was written before its apply failed: the open
    // replays it whole, so each of its alerts is there with its index.
    for id in &in_failed_group {
        assert!(store.get_by_id(id).expect("read").is_some(), "{id}");
    }
    for (id, r) in &answers {
        match r {
            Ok(_) => assert!(store.get_by_id(id).expect("read").is_some()),
            Err(BrokerError::Store(StoreError::Failed(_))) => {
                assert!(
                    store.get_by_id(id).expect("read").is_none(),
                    "{id} never written"
                )
            }
            _ => {}
        }
    }
    assert_whole(&store);
}
