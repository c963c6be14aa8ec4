//! What an encrypted store leaves in clear: only index data.

use std::time::SystemTime;

use super::*;
use crate::audit::AuditEvent;
use crate::receipt::{Receipt, ReceiptKind};

const SECRET: &str = "OKAPI-4411 cocaine in the spare tyre";

fn alert(id: &str) -> Alert {
    Alert::from_stored(pb::Alert {
        id: id.into(),
        headline: SECRET.into(),
        description: SECRET.into(),
        origin: Some(crate::alert::origin_proto(
            &"urn:liaison:TJ:border-guard:ishkashim".parse().unwrap(),
        )),
        status: 1,
        category: 1,
        severity: 1,
        urgency: 1,
        marking: Some(pb::Marking {
            tlp: 1,
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap()
}

/// Key families whose values are index data, kept in clear.
fn clear_allowed(tree: &str, key: &[u8]) -> bool {
    tree == "log" && matches!(key.first(), Some(&keys::ID | &keys::OUTBOX | b'm'))
}

#[tokio::test]
async fn every_value_but_index_data_is_sealed_and_reads_back() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("data");
    let config = || StoreConfig {
        key: Some(KeySource::File(t.path().join("store.key"))),
        ..StoreConfig::default()
    };
    let store = Store::open(&dir, config()).unwrap();
    let a = alert("0192b8a0-7d3c-7cc1-9a0e-3f1c2b4d5e6f");
    let b = alert("0192b8a0-7d3c-7cc1-9a0e-3f1c2b4d5e70");
    store.append(a.clone()).await.unwrap();
    store
        .submit(b.clone(), AppendKind::Outbox(OutboxLimits::default()))
        .await
        .unwrap()
        .await
        .unwrap();
    store
        .record_receipt(Receipt {
            alert: a.id,
            kind: ReceiptKind::Acknowledged,
            recipient: "urn:liaison:AF:border-police:sher-khan".parse().unwrap(),
            feed: String::new(),
            at: SystemTime::now(),
            note: SECRET.into(),
        })
        .await
        .unwrap();
    store.audit(AuditEvent::published("someone", &[])).await;
    let feed = StoredFeed {
        ack_floor: 1,
        ..StoredFeed::default()
    };
    store.save_feed("owner", "feed", &feed).unwrap();
    store
        .save_link("urn:liaison:AF:liaison:broker", &StoredLink::default())
        .unwrap();
    store
        .remember_bundle(
            &uuid::Uuid::now_v7(),
            &StoredBundle {
                from: SECRET.into(),
                ..StoredBundle::default()
            },
        )
        .unwrap();
    store.flush().await.unwrap();

    let mut sealed = 0;
    for (name, tree) in [
        ("log", &store.inner.log),
        ("feeds", &store.inner.feeds),
        ("links", &store.inner.links),
        ("bundles", &store.inner.bundles),
    ] {
        for kv in tree.iter() {
            let (k, v) = kv.unwrap();
            let text = String::from_utf8_lossy(&v);
            assert!(!text.contains("OKAPI"), "{name} {k:?} holds the secret");
            if clear_allowed(name, &k) {
                continue;
            }
            assert!(Seal::looks_sealed(&v), "{name} {k:?} is not sealed: {v:?}");
            sealed += 1;
        }
    }
    // Two alerts, a receipt, audit records, a feed and a link at least.
    assert!(sealed >= 6, "{sealed}");

    // Read back, after a restart too.
    assert_eq!(
        store.get_by_id(&a.id).unwrap().unwrap().alert.body.headline,
        SECRET
    );
    store.close().await.unwrap();
    drop(store);
    let store = Store::open(&dir, config()).unwrap();
    assert_eq!(
        store.get_by_id(&b.id).unwrap().unwrap().alert.body.headline,
        SECRET
    );
    assert_eq!(store.receipts(&a.id).unwrap()[0].note, SECRET);
    assert_eq!(store.load_feed("owner", "feed").unwrap(), Some(feed));
    assert!(
        store
            .audit_records(0, 100)
            .unwrap()
            .iter()
            .all(|(_, r)| r.is_some())
    );
    assert_eq!(store.meta().outbox_count, 1);
    store.close().await.unwrap();
}
