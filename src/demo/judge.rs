//! The demo's verdict, reached independently of the brokers' own code:
//! what each office received against the rules restated ([`Expect`]), and
//! what each broker's store holds, read directly once the brokers stopped.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{DemoResult, Expect, Homes, Office, Sent, Tally, Verdict, lock};
use liaison::alert::{AlertId, Seq};
use liaison::store::{Store, StoreConfig};

/// Counts what was lost, what leaked and what was stored twice.
pub(super) async fn judge(
    homes: &Homes,
    offices: &[Office],
    tally: &Arc<Mutex<Tally>>,
    expect: Expect<'_>,
) -> DemoResult<Verdict> {
    let mut stores: HashMap<PathBuf, Store> = HashMap::new();
    for home in homes.values() {
        if !stores.contains_key(&home.data) {
            stores.insert(home.data.clone(), open(&home.data).await?);
        }
    }
    let store_of = |cc: &str| homes.get(cc).and_then(|h| stores.get(&h.data));
    let stored = |cc: &str, id: &str| {
        let id: Option<AlertId> = id.parse().ok();
        id.zip(store_of(cc))
            .and_then(|(id, store)| store.get_by_id(&id).ok().flatten())
    };
    let t = lock(tally);
    let mut lost = 0;
    // Every acknowledged alert is in its origin's broker.
    for (id, sent) in &t.sent {
        if stored(sent.origin.country().as_str(), id).is_none() {
            lost += 1;
        }
    }
    let mut leaked = 0;
    let mut delivered = 0;
    for (i, office) in offices.iter().enumerate() {
        let got = t.received.get(&i).cloned().unwrap_or_default();
        delivered += got.len() as u64;
        for (id, sent) in &t.sent {
            match (expect(office, sent), got.contains(id)) {
                (true, false) => lost += 1,
                (false, true) => leaked += 1,
                _ => {}
            }
        }
        // Deliveries of alerts whose publish reply the demo never saw are
        // judged by the markings stored at the office's broker; one it does
        // not hold cannot be justified and counts as leaked.
        let here = office.node.country();
        for id in got.iter().filter(|id| !t.sent.contains_key(*id)) {
            let allowed = stored(here.as_str(), id)
                .is_some_and(|r| expect(office, &Sent::from_stored(&r.alert)));
            if !allowed {
                leaked += 1;
            }
        }
    }
    let mut stored_twice = 0;
    for store in stores.values() {
        stored_twice += twice(store)?;
    }
    Ok(Verdict {
        published: t.sent.len() as u64,
        delivered,
        lost,
        leaked,
        stored_twice,
        brokers: stores.len(),
    })
}

/// Opens a stopped broker's store (its last tasks release it promptly).
async fn open(path: &Path) -> DemoResult<Store> {
    let mut attempts = 0;
    loop {
        match Store::open(path, StoreConfig::default()) {
            Ok(store) => return Ok(store),
            Err(_) if attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Alert ids the store holds under more than one sequence number.
fn twice(store: &Store) -> DemoResult<u64> {
    let mut seen = HashSet::new();
    let mut twice = 0;
    let mut from = Seq(1);
    loop {
        let page = store.scan(from, 1024)?;
        let Some(last) = page.last() else {
            return Ok(twice);
        };
        from = Seq(last.seq.0 + 1);
        for r in &page {
            if !seen.insert(r.alert.id) {
                twice += 1;
            }
        }
    }
}
