//! The alerts the demo's posts send: a report from the gazetteer at the
//! post's crossing, with a marking, severity and parameters drawn at random,
//! and what the demo must remember of it to judge the deliveries.

use std::time::SystemTime;

use rand::Rng;
use rand::seq::IndexedRandom;

use super::{Post, Sent};
use liaison::alert::timestamp;
use liaison::gazetteer;
use liaison::identity::NodeId;
use liaison::proto as pb;

/// A realistic alert from `post`. AMBER is releasable to the country
/// across the crossing, RED names its liaison office; GREEN is sometimes
/// releasable to a few countries of the region, which lets it be re-shared
/// beyond the first border between federated brokers.
pub(super) fn make_alert(post: &Post, rng: &mut impl Rng) -> (pb::Alert, Sent) {
    let x = post.crossing;
    let n: u32 = rng.random_range(2..60);
    let (category, template) = *REPORTS.choose(rng).expect("non-empty");
    let headline = report(template, n, x.name);
    let tlp = *[
        pb::Tlp::Clear,
        pb::Tlp::Green,
        pb::Tlp::Green,
        pb::Tlp::Green,
        pb::Tlp::Amber,
        pb::Tlp::Amber,
        pb::Tlp::Amber,
        pb::Tlp::AmberStrict,
        pb::Tlp::Red,
    ]
    .choose(rng)
    .expect("non-empty");
    let neighbour_office = gazetteer::AGENCIES
        .iter()
        .find(|(cc, _)| *cc == x.neighbour)
        .and_then(|(cc, agency)| NodeId::new(cc, agency, "liaison-office").ok());
    let releasable_to = match tlp {
        pb::Tlp::Amber => vec![x.neighbour.to_owned()],
        pb::Tlp::Green if rng.random_bool(0.5) => {
            let n = rng.random_range(1..=3);
            gazetteer::AGENCIES
                .choose_multiple(rng, n)
                .map(|(cc, _)| (*cc).to_owned())
                .filter(|cc| cc != post.node.country().as_str())
                .collect()
        }
        _ => Vec::new(),
    };
    let recipients: Vec<NodeId> = match (tlp, neighbour_office) {
        (pb::Tlp::Red, Some(o)) => vec![o],
        (pb::Tlp::Red, None) => vec![post.node.clone()],
        _ => Vec::new(),
    };
    let exercise = rng.random_bool(0.1);
    let severity = *[
        pb::Severity::Minor,
        pb::Severity::Moderate,
        pb::Severity::Severe,
        pb::Severity::Extreme,
    ]
    .choose(rng)
    .expect("non-empty");
    let urgency = if severity == pb::Severity::Extreme {
        pb::Urgency::Immediate
    } else {
        pb::Urgency::Expected
    };
    let alert = pb::Alert {
        id: uuid::Uuid::now_v7().to_string(),
        sent: Some(timestamp(SystemTime::now())),
        status: if exercise {
            pb::Status::Exercise
        } else {
            pb::Status::Actual
        } as i32,
        msg_type: pb::MsgType::Alert as i32,
        category: category as i32,
        urgency: urgency as i32,
        severity: severity as i32,
        certainty: pb::Certainty::Likely as i32,
        headline,
        language: "en".into(),
        parameters: vec![pb::Parameter {
            key: "count".into(),
            value: Some(pb::parameter::Value::Integer(i64::from(n))),
            unit: String::new(),
        }],
        area: Some(pb::Area {
            crossing_point: x.code.into(),
            border_sector: format!("{}-{}", x.country, x.neighbour),
            circles: vec![pb::Circle {
                center: Some(pb::Point {
                    latitude: x.latitude,
                    longitude: x.longitude,
                }),
                radius_km: 5.0,
            }],
            ..Default::default()
        }),
        marking: Some(pb::Marking {
            tlp: tlp as i32,
            releasable_to: releasable_to.clone(),
            recipients: recipients.iter().map(ToString::to_string).collect(),
            handling_codes: Vec::new(),
        }),
        ..Default::default()
    };
    let sent = Sent {
        origin: post.node.clone(),
        category,
        tlp,
        exercise,
        releasable_to,
        recipients,
    };
    (alert, sent)
}

/// What the demo's posts report, by category: `{n}` stands for a count,
/// `{at}` for the crossing's name.
pub const REPORTS: &[(pb::Category, &str)] = &[
    (
        pb::Category::Drugs,
        "{n} kg of heroin hidden in a lorry at {at}",
    ),
    (pb::Category::Drugs, "Opium seizure near {at}"),
    (
        pb::Category::Arms,
        "Rifles and ammunition in transit cargo at {at}",
    ),
    (
        pb::Category::Cbrn,
        "Radiation portal alarm on a lorry at {at}",
    ),
    (
        pb::Category::Terrorism,
        "Suspected foreign terrorist fighter at {at}",
    ),
    (
        pb::Category::HumanSmuggling,
        "{n} migrants found in a smuggler's van near {at}",
    ),
    (
        pb::Category::Migration,
        "Group of {n} people waiting to cross at {at}",
    ),
    (
        pb::Category::DocumentFraud,
        "Forged passports detected at {at}",
    ),
    (
        pb::Category::Health,
        "Fever screening at {at} after an outbreak report",
    ),
    (pb::Category::Other, "Unusual activity reported near {at}"),
];

/// A report's headline: `template` with its count and place filled in.
pub fn report(template: &str, n: u32, at: &str) -> String {
    template.replace("{n}", &n.to_string()).replace("{at}", at)
}
