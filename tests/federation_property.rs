//! Property test of what crosses a federation link, in a two-broker model:
//! random alerts of a Tajik node (random markings, exercise or not) ×
//! random agreements on each side (bilateral, but each state writes its
//! own) × every Afghan identity. What an Afghan node ends up seeing — the
//! Tajik broker's export rule, then the Afghan broker's import rule, then
//! its local entitlement, the same `Policy` code the link and the feeds
//! run — never exceeds what the rules, restated here independently, allow
//! (no leak), and everything they allow does cross (nothing withheld).

use liaison::identity::{CountryCode, NodeId};
use liaison::policy::{Agreement, Categories, Destination, Policy, Role, Rule, Subject};
use liaison::proto as pb;
use proptest::prelude::*;

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

fn cc(c: &str) -> CountryCode {
    CountryCode::parse(c).expect("cc")
}

/// The nodes of a country.
fn nodes_of(country: &str) -> Vec<NodeId> {
    AGENCIES
        .iter()
        .flat_map(|a| {
            NODES
                .iter()
                .map(move |n| NodeId::new(country, a, n).expect("urn"))
        })
        .collect()
}

#[derive(Debug, Clone)]
struct TestAlert {
    origin: usize,
    category: usize,
    tlp: usize,
    exercise: bool,
    /// Indexes into `releasees()`.
    releasable: Vec<usize>,
    /// Indexes into TJ's then AF's nodes.
    recipients: Vec<usize>,
    codes: Vec<usize>,
}

#[derive(Debug, Clone)]
struct TestAgreement {
    categories: Vec<usize>,
    max_tlp: usize,
    codes: Vec<usize>,
    exercises: bool,
}

fn releasees() -> Vec<String> {
    let mut out = Vec::new();
    for c in ["TJ", "AF", "UZ"] {
        out.push(c.to_owned());
        for a in AGENCIES {
            out.push(format!("{c}:{a}"));
        }
    }
    out
}

fn test_alert() -> impl Strategy<Value = TestAlert> {
    (
        0..4usize,
        0..CATEGORIES.len(),
        0..TLPS.len(),
        proptest::bool::weighted(0.25),
        proptest::collection::vec(0..9usize, 0..3),
        proptest::collection::vec(0..8usize, 1..4),
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

fn test_agreement() -> impl Strategy<Value = Option<TestAgreement>> {
    proptest::option::weighted(
        0.8,
        (
            proptest::collection::vec(0..CATEGORIES.len(), 0..3),
            0..TLPS.len(),
            proptest::collection::vec(0..CODES.len(), 0..3),
            proptest::bool::weighted(0.5),
        )
            .prop_map(|(categories, max_tlp, codes, exercises)| TestAgreement {
                categories,
                max_tlp,
                codes,
                exercises,
            }),
    )
}

fn policy(agreement: &Option<TestAgreement>) -> Policy {
    let rules = ["TJ", "AF"]
        .iter()
        .map(|c| Rule {
            subject: Subject::Country(cc(c)),
            role: Role::Post,
            publish: Categories::All,
            subscribe: true,
        })
        .collect();
    let agreements = agreement
        .iter()
        .map(|a| Agreement {
            between: [cc("TJ"), cc("AF")],
            categories: Categories::Only(a.categories.iter().map(|c| CATEGORIES[*c]).collect()),
            max_tlp: TLPS[a.max_tlp],
            handling_codes: a.codes.iter().map(|c| CODES[*c].to_owned()).collect(),
            exercises: a.exercises,
            reshare: false,
        })
        .collect();
    Policy::new(rules, agreements)
}

/// The rules, restated: may the Afghan `viewer` see the Tajik `alert`, with
/// each state's own agreement?
fn model(
    a: &TestAlert,
    viewer: &NodeId,
    tj: &Option<TestAgreement>,
    af: &Option<TestAgreement>,
    all: &[NodeId],
) -> bool {
    let releasees = releasees();
    let marking = match TLPS[a.tlp] {
        pb::Tlp::Clear | pb::Tlp::Green => true,
        pb::Tlp::Amber => a.releasable.iter().any(|r| {
            let r = &releasees[*r];
            *r == "AF" || *r == format!("AF:{}", viewer.agency())
        }),
        pb::Tlp::AmberStrict => false,
        pb::Tlp::Red => a.recipients.iter().any(|i| &all[*i] == viewer),
        pb::Tlp::Unspecified => false,
    };
    let covers = |g: &Option<TestAgreement>| {
        g.as_ref().is_some_and(|g| {
            g.categories.contains(&a.category)
                && a.tlp <= g.max_tlp
                && a.codes.iter().all(|c| g.codes.contains(c))
        })
    };
    let clear = TLPS[a.tlp] == pb::Tlp::Clear;
    let agreed = clear || (covers(tj) && covers(af));
    let exercise_ok = !a.exercise
        || [tj, af]
            .iter()
            .all(|g| covers(g) && g.as_ref().is_some_and(|g| g.exercises));
    marking && agreed && exercise_ok
}

fn to_alert(a: &TestAlert, all: &[NodeId]) -> liaison::alert::Alert {
    let mut body = liaison_testkit::alert(CATEGORIES[a.category], "property");
    if a.exercise {
        body.status = pb::Status::Exercise as i32;
    }
    let tlp = TLPS[a.tlp];
    let releasees = releasees();
    let mut codes: Vec<String> = a.codes.iter().map(|c| CODES[*c].to_owned()).collect();
    codes.dedup();
    let mut releasable: Vec<String> = a.releasable.iter().map(|r| releasees[*r].clone()).collect();
    releasable.sort();
    releasable.dedup();
    let mut recipients: Vec<String> = a.recipients.iter().map(|i| all[*i].to_string()).collect();
    recipients.sort();
    recipients.dedup();
    body.marking = Some(pb::Marking {
        tlp: tlp as i32,
        releasable_to: if tlp == pb::Tlp::Amber || tlp == pb::Tlp::Green {
            releasable
        } else {
            vec![]
        },
        recipients: if tlp == pb::Tlp::Red {
            recipients
        } else {
            vec![]
        },
        handling_codes: codes,
    });
    liaison::alert::validate(
        body,
        &all[a.origin],
        &liaison::alert::Limits::default(),
        std::time::SystemTime::now(),
    )
    .expect("a valid alert")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12_000, ..ProptestConfig::default() })]

    #[test]
    fn what_an_afghan_node_sees_of_a_tajik_alert_is_exactly_what_both_agreements_and_the_markings_allow(
        a in test_alert(),
        tj_agreement in test_agreement(),
        af_agreement in test_agreement(),
    ) {
        let (tj_nodes, af_nodes) = (nodes_of("TJ"), nodes_of("AF"));
        let all: Vec<NodeId> = tj_nodes.iter().chain(&af_nodes).cloned().collect();
        let (tj, af) = (policy(&tj_agreement), policy(&af_agreement));
        let alert = to_alert(&a, &all);
        let (tj_broker, af_broker) = (
            liaison::pki::broker_identity(cc("TJ")).to_string(),
            liaison::pki::broker_identity(cc("AF")).to_string(),
        );
        let exported = tj
            .may_export(&alert, None, Destination { local: cc("TJ"), country: cc("AF"), broker: &af_broker })
            .is_ok();
        let provenance = pb::Provenance { path: vec![tj_broker], ..Default::default() };
        let imported = exported
            && af
                .may_export(&alert, Some(&provenance), Destination { local: cc("TJ"), country: cc("AF"), broker: &af_broker })
                .is_ok();
        for viewer in &af_nodes {
            let sees = imported && af.entitled(&alert, viewer);
            let allowed = model(&a, viewer, &tj_agreement, &af_agreement, &all);
            prop_assert!(!sees || allowed, "LEAK to {viewer}: {a:?} tj {tj_agreement:?} af {af_agreement:?}");
            prop_assert!(!allowed || sees, "withheld from {viewer}: {a:?} tj {tj_agreement:?} af {af_agreement:?}");
        }
        if TLPS[a.tlp] == pb::Tlp::AmberStrict {
            prop_assert!(!exported, "AMBER+STRICT left its agency");
        }
    }
}
