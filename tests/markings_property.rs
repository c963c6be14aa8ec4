//! Property test of the sharing model: random alerts with random markings ×
//! random subscriber identities × random bilateral agreements. No delivery or
//! history read ever violates a marking or an agreement, and everything the
//! rules allow is delivered. The rules are restated independently here (the
//! model) and compared with what the broker core does.

use std::collections::BTreeSet;
use std::sync::Arc;

use liaison::alert::AlertId;
use liaison::broker::{Broker, BrokerConfig, FeedEvent, FeedSpec, ListQuery, Start};
use liaison::filter::Filter;
use liaison::identity::NodeId;
use liaison::policy::{Agreement, Categories, Policy, Role, Rule, Subject};
use liaison::proto as pb;
use liaison::store::{Store, StoreConfig};
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

const COUNTRIES: [&str; 3] = ["TJ", "AF", "UZ"];
const AGENCIES: [&str; 2] = ["border-guard", "customs"];
const NODES: [&str; 2] = ["a", "b"];
const CATEGORIES: [pb::Category; 3] = [
    pb::Category::Drugs,
    pb::Category::Arms,
    pb::Category::Health,
];
const TLPS: [pb::Tlp; 5] = [
    pb::Tlp::Clear,
    pb::Tlp::Green,
    pb::Tlp::Amber,
    pb::Tlp::AmberStrict,
    pb::Tlp::Red,
];
const CODES: [&str; 2] = ["LE-ONLY", "NO-MEDIA"];

fn universe() -> Vec<NodeId> {
    let mut out = Vec::new();
    for c in COUNTRIES {
        for a in AGENCIES {
            for n in NODES {
                out.push(NodeId::new(c, a, n).expect("valid"));
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
struct TestAlert {
    origin: usize,
    category: usize,
    tlp: usize,
    exercise: bool,
    releasable: Vec<String>,
    recipients: Vec<usize>,
    codes: Vec<usize>,
}

#[derive(Debug, Clone)]
struct TestAgreement {
    pair: (usize, usize),
    categories: Vec<usize>,
    max_tlp: usize,
    codes: Vec<usize>,
}

fn releasee() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..COUNTRIES.len()).prop_map(|c| COUNTRIES[c].to_owned()),
        (0..COUNTRIES.len(), 0..AGENCIES.len())
            .prop_map(|(c, a)| format!("{}:{}", COUNTRIES[c], AGENCIES[a])),
    ]
}

fn test_alert() -> impl Strategy<Value = TestAlert> {
    (
        0..12usize,
        0..CATEGORIES.len(),
        0..TLPS.len(),
        proptest::bool::weighted(0.2),
        proptest::collection::vec(releasee(), 0..3),
        proptest::collection::vec(0..12usize, 1..4),
        proptest::collection::vec(0..CODES.len(), 0..2),
    )
        .prop_map(
            |(origin, category, tlp, exercise, releasable, recipients, codes)| TestAlert {
                origin,
                category,
                tlp,
                exercise,
                releasable,
                recipients,
                codes,
            },
        )
}

fn test_agreement() -> impl Strategy<Value = TestAgreement> {
    (
        prop_oneof![Just((0usize, 1usize)), Just((0, 2)), Just((1, 2))],
        proptest::collection::vec(0..CATEGORIES.len(), 0..3),
        0..TLPS.len(),
        proptest::collection::vec(0..CODES.len(), 0..3),
    )
        .prop_map(|(pair, categories, max_tlp, codes)| TestAgreement {
            pair,
            categories,
            max_tlp,
            codes,
        })
}

/// The rules, restated: may `viewer` see `alert` under `agreements`?
fn model(
    alert: &TestAlert,
    viewer: &NodeId,
    nodes: &[NodeId],
    agreements: &[TestAgreement],
    exercise_opt_in: bool,
) -> bool {
    let origin = &nodes[alert.origin];
    if alert.exercise && !exercise_opt_in {
        return false;
    }
    let same_agency = origin.country() == viewer.country() && origin.agency() == viewer.agency();
    let marking_ok = match TLPS[alert.tlp] {
        pb::Tlp::Clear | pb::Tlp::Green => true,
        pb::Tlp::Amber => {
            same_agency
                || alert.releasable.iter().any(|r| {
                    *r == viewer.country().to_string()
                        || *r == format!("{}:{}", viewer.country(), viewer.agency())
                })
        }
        pb::Tlp::AmberStrict => same_agency,
        pb::Tlp::Red => origin == viewer || alert.recipients.iter().any(|i| &nodes[*i] == viewer),
        pb::Tlp::Unspecified => false,
    };
    let oc = COUNTRIES
        .iter()
        .position(|c| *c == origin.country().as_str())
        .expect("country");
    let vc = COUNTRIES
        .iter()
        .position(|c| *c == viewer.country().as_str())
        .expect("country");
    let crosses = oc == vc
        || TLPS[alert.tlp] == pb::Tlp::Clear
        || agreements.iter().any(|a| {
            (a.pair == (oc, vc) || a.pair == (vc, oc))
                && a.categories.contains(&alert.category)
                && alert.tlp <= a.max_tlp
                && alert.codes.iter().all(|c| a.codes.contains(c))
        });
    marking_ok && crosses
}

fn to_proto(a: &TestAlert, nodes: &[NodeId], n: usize) -> pb::Alert {
    let mut alert = liaison_testkit::alert(CATEGORIES[a.category], &format!("alert {n}"));
    if a.exercise {
        alert.status = pb::Status::Exercise as i32;
    }
    let tlp = TLPS[a.tlp];
    let mut codes: Vec<String> = a.codes.iter().map(|c| CODES[*c].to_owned()).collect();
    codes.dedup();
    alert.marking = Some(pb::Marking {
        tlp: tlp as i32,
        releasable_to: a.releasable.clone(),
        recipients: if tlp == pb::Tlp::Red {
            a.recipients.iter().map(|i| nodes[*i].to_string()).collect()
        } else {
            vec![]
        },
        handling_codes: codes,
    });
    alert
}

fn policy(agreements: &[TestAgreement]) -> Policy {
    let rules = COUNTRIES
        .iter()
        .map(|c| Rule {
            subject: Subject::Country(liaison::identity::CountryCode::parse(c).expect("cc")),
            role: Role::Post,
            publish: Categories::All,
            subscribe: true,
        })
        .collect();
    let agreements = agreements
        .iter()
        .map(|a| Agreement {
            between: [
                liaison::identity::CountryCode::parse(COUNTRIES[a.pair.0]).expect("cc"),
                liaison::identity::CountryCode::parse(COUNTRIES[a.pair.1]).expect("cc"),
            ],
            categories: Categories::Only(a.categories.iter().map(|c| CATEGORIES[*c]).collect()),
            max_tlp: TLPS[a.max_tlp],
            handling_codes: a.codes.iter().map(|c| CODES[*c].to_owned()).collect(),
            exercises: false,
            reshare: false,
        })
        .collect();
    Policy::new(rules, agreements)
}

async fn check(alerts: Vec<TestAlert>, agreements: Vec<TestAgreement>, opt_ins: Vec<bool>) {
    let nodes = universe();
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("store");
    let config = BrokerConfig {
        policy: Arc::new(policy(&agreements)),
        ..BrokerConfig::default()
    };
    let broker = Broker::new(store.clone(), config, CancellationToken::new());
    let mut ids: Vec<AlertId> = Vec::new();
    for (n, a) in alerts.iter().enumerate() {
        let ack = broker
            .publish(&nodes[a.origin], to_proto(a, &nodes, n))
            .await
            .expect("publish");
        ids.push(ack.id);
    }
    // A sentinel everyone may see, after everything else: a feed that has
    // delivered it has delivered everything before it.
    let sentinel = liaison_testkit::alert(pb::Category::Other, "sentinel");
    let sentinel_marking = pb::Marking {
        tlp: pb::Tlp::Clear as i32,
        ..Default::default()
    };
    let sentinel = pb::Alert {
        marking: Some(sentinel_marking),
        ..sentinel
    };
    let sentinel_id = broker
        .publish(&nodes[0], sentinel)
        .await
        .expect("sentinel")
        .id;

    for (v, viewer) in nodes.iter().enumerate() {
        let opt_in = opt_ins[v];
        let expected: BTreeSet<AlertId> = alerts
            .iter()
            .zip(&ids)
            .filter(|(a, _)| model(a, viewer, &nodes, &agreements, opt_in))
            .map(|(_, id)| *id)
            .collect();

        // History.
        let query = ListQuery {
            filter: Filter {
                include_exercise: opt_in,
                ..Filter::default()
            },
            page_size: 1000,
            ..ListQuery::default()
        };
        let page = broker.list(viewer, &query).await.expect("list");
        let history: BTreeSet<AlertId> = page
            .records
            .iter()
            .map(|r| r.alert.id)
            .filter(|id| *id != sentinel_id)
            .collect();
        assert_eq!(history, expected, "history of {viewer}");
        for (a, id) in alerts.iter().zip(&ids) {
            let visible = broker.get(viewer, id).is_ok();
            assert_eq!(
                visible,
                model(a, viewer, &nodes, &agreements, true),
                "get {id} by {viewer}: {a:?}"
            );
        }

        // Deliveries.
        let spec = FeedSpec {
            name: None,
            filter: Filter {
                include_exercise: opt_in,
                ..Filter::default()
            },
            start: Start::All,
            max_in_flight: 1024,
            ack_wait: std::time::Duration::from_secs(60),
        };
        let mut feed = broker.open_feed(viewer.clone(), spec).await.expect("feed");
        let mut delivered = BTreeSet::new();
        loop {
            match feed.events.recv().await.expect("event") {
                FeedEvent::Delivery { record, .. } if record.alert.id == sentinel_id => break,
                FeedEvent::Delivery { record, .. } => {
                    delivered.insert(record.alert.id);
                }
                FeedEvent::Ended(end) => panic!("feed ended: {end:?}"),
            }
        }
        assert_eq!(delivered, expected, "deliveries to {viewer}");
    }
    store.close().await.expect("close");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn no_delivery_or_read_violates_a_marking_and_everything_allowed_arrives(
        alerts in proptest::collection::vec(test_alert(), 1..25),
        agreements in proptest::collection::vec(test_agreement(), 0..4),
        opt_ins in proptest::collection::vec(proptest::bool::ANY, 12),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(check(alerts, agreements, opt_ins));
    }
}
