//! Malformed alerts are refused with INVALID_ARGUMENT naming the field and
//! the rule, and nothing of them is stored.

use std::time::{Duration, SystemTime};

use liaison::alert::timestamp;
use liaison::proto as pb;
use liaison_testkit::*;

type Mutation = fn(&mut pb::Alert);

fn cases() -> Vec<(&'static str, Mutation, &'static str)> {
    vec![
        ("missing id", |a| a.id.clear(), "alert.id: is required"),
        (
            "id not a uuid",
            |a| a.id = "alert-1".into(),
            "alert.id: must be a UUID",
        ),
        (
            "nil uuid",
            |a| a.id = uuid::Uuid::nil().to_string(),
            "alert.id: must not be the nil UUID",
        ),
        // The acknowledged id is the one sent: other spellings of a UUID
        // are refused rather than rewritten.
        (
            "upper-case id",
            |a| a.id = a.id.to_uppercase(),
            "alert.id: must be a UUID in canonical form",
        ),
        (
            "id without hyphens",
            |a| a.id = a.id.replace('-', ""),
            "alert.id: must be a UUID in canonical form",
        ),
        (
            "id in braces",
            |a| a.id = format!("{{{}}}", a.id),
            "alert.id: must be a UUID in canonical form",
        ),
        (
            "id as a URN",
            |a| a.id = format!("urn:uuid:{}", a.id),
            "alert.id: must be a UUID in canonical form",
        ),
        (
            "reference without hyphens",
            |a| {
                a.msg_type = pb::MsgType::Update as i32;
                a.references = vec![uuid::Uuid::now_v7().simple().to_string()];
            },
            "alert.references[0]: must be a UUID in canonical form",
        ),
        ("no sent", |a| a.sent = None, "alert.sent: is required"),
        (
            "sent in the future",
            |a| a.sent = Some(timestamp(SystemTime::now() + Duration::from_secs(3600))),
            "alert.sent: lies more than",
        ),
        ("no status", |a| a.status = 0, "alert.status: is required"),
        (
            "unknown status",
            |a| a.status = 42,
            "alert.status: 42 is not a known value",
        ),
        (
            "no category",
            |a| a.category = 0,
            "alert.category: is required",
        ),
        (
            "no severity",
            |a| a.severity = 0,
            "alert.severity: is required",
        ),
        (
            "no urgency",
            |a| a.urgency = 0,
            "alert.urgency: is required",
        ),
        (
            "no certainty",
            |a| a.certainty = 0,
            "alert.certainty: is required",
        ),
        (
            "empty headline",
            |a| a.headline.clear(),
            "alert.headline: is required",
        ),
        (
            "long headline",
            |a| a.headline = "h".repeat(300),
            "alert.headline: is 300 bytes long",
        ),
        (
            "control char",
            |a| a.headline = "bad\u{7}bell".into(),
            "alert.headline: must not contain control",
        ),
        (
            "update without references",
            |a| a.msg_type = pb::MsgType::Update as i32,
            "alert.references: must name at least one",
        ),
        (
            "alert with references",
            |a| a.references = vec![uuid::Uuid::now_v7().to_string()],
            "alert.references: must be empty",
        ),
        (
            "bad reference",
            |a| {
                a.msg_type = pb::MsgType::Cancel as i32;
                a.references = vec!["x".into()];
            },
            "alert.references[0]: must be a UUID",
        ),
        (
            "expires before sent",
            |a| a.expires = Some(timestamp(SystemTime::now() - Duration::from_secs(60))),
            "alert.expires: must be later than alert.sent",
        ),
        (
            "no marking",
            |a| a.marking = None,
            "alert.marking: is required",
        ),
        (
            "no tlp",
            |a| a.marking.as_mut().expect("marking").tlp = 0,
            "alert.marking.tlp: is required",
        ),
        (
            "red without recipients",
            |a| a.marking.as_mut().expect("marking").tlp = pb::Tlp::Red as i32,
            "alert.marking.recipients: must name at least one",
        ),
        (
            "bad recipient",
            |a| {
                let m = a.marking.as_mut().expect("marking");
                m.tlp = pb::Tlp::Red as i32;
                m.recipients = vec![AF_OFFICE.into(), "urn:liaison:af:x:y".into()];
            },
            "alert.marking.recipients[1]:",
        ),
        (
            "bad releasable_to",
            |a| a.marking.as_mut().expect("marking").releasable_to = vec!["Uzbekistan".into()],
            "alert.marking.releasable_to[0]: must be a country code",
        ),
        (
            "bad handling code",
            |a| a.marking.as_mut().expect("marking").handling_codes = vec!["le only".into()],
            "alert.marking.handling_codes[0]:",
        ),
        (
            "parameter without value",
            |a| {
                a.parameters = vec![pb::Parameter {
                    key: "plate".into(),
                    value: None,
                    unit: String::new(),
                }]
            },
            "alert.parameters[0].value: is required",
        ),
        (
            "parameter key",
            |a| {
                a.parameters = vec![pb::Parameter {
                    key: "Plate Number".into(),
                    value: Some(pb::parameter::Value::Text("01 A 123".into())),
                    unit: String::new(),
                }]
            },
            "alert.parameters[0].key: must match",
        ),
        (
            "parameter key reserved for CAP export",
            |a| {
                a.parameters = vec![pb::Parameter {
                    key: "liaison:origin".into(),
                    value: Some(pb::parameter::Value::Text("someone else".into())),
                    unit: String::new(),
                }]
            },
            "alert.parameters[0].key: \"liaison:\" keys are reserved",
        ),
        (
            "translations without the alert's language",
            |a| a.translations = vec![translation("ru", "Заголовок")],
            "alert.language: is required when the alert has translations",
        ),
        (
            "translation in the alert's language",
            |a| {
                a.language = "ru".into();
                a.translations = vec![translation("RU", "Заголовок")]
            },
            "alert.translations[0].language: \"RU\" is given twice",
        ),
        (
            "translation without headline",
            |a| {
                a.language = "en".into();
                a.translations = vec![translation("ru", "")]
            },
            "alert.translations[0].headline: is required",
        ),
        (
            "translation language tag",
            |a| {
                a.language = "en".into();
                a.translations = vec![translation("russian language", "x")]
            },
            "alert.translations[0].language: must be a BCP 47 language tag",
        ),
        (
            "too many translations",
            |a| {
                a.language = "en".into();
                a.translations = ["ru", "tg", "uz", "kk", "ky", "tk", "fa", "ps", "ar"]
                    .map(|l| translation(l, "x"))
                    .to_vec()
            },
            "alert.translations: has 9 items; at most 8",
        ),
        (
            "latitude out of range",
            |a| {
                a.area = Some(pb::Area {
                    circles: vec![pb::Circle {
                        center: Some(pb::Point {
                            latitude: 91.0,
                            longitude: 70.0,
                        }),
                        radius_km: 5.0,
                    }],
                    ..Default::default()
                })
            },
            "alert.area.circles[0].center.latitude: must be between -90 and 90",
        ),
        (
            "open polygon",
            |a| {
                let p = |lat, lon| pb::Point {
                    latitude: lat,
                    longitude: lon,
                };
                a.area = Some(pb::Area {
                    polygons: vec![pb::Polygon {
                        points: vec![p(37.0, 71.0), p(37.1, 71.0), p(37.1, 71.1), p(37.0, 71.2)],
                    }],
                    ..Default::default()
                })
            },
            "alert.area.polygons[0].points: the polygon must be closed",
        ),
        (
            "empty area",
            |a| a.area = Some(pb::Area::default()),
            "alert.area: when present",
        ),
        (
            "bad language",
            |a| a.language = "russian language".into(),
            "alert.language: must be a BCP 47",
        ),
        (
            "attachment digest mismatch",
            |a| {
                a.attachments = vec![pb::Attachment {
                    filename: "photo.jpg".into(),
                    mime_type: "image/jpeg".into(),
                    content: vec![1, 2, 3].into(),
                    sha256: vec![0; 32],
                    description: String::new(),
                }]
            },
            "alert.attachments[0].sha256: does not match",
        ),
        (
            "attachment path",
            |a| {
                a.attachments = vec![pb::Attachment {
                    filename: "../etc/passwd".into(),
                    mime_type: "text/plain".into(),
                    content: vec![1].into(),
                    sha256: vec![0; 32],
                    description: String::new(),
                }]
            },
            "alert.attachments[0].filename: must be a plain file name",
        ),
        (
            "oversized",
            |a| a.description = "x".repeat(300 * 1024),
            "alert: encoded size",
        ),
    ]
}

#[tokio::test]
async fn each_malformed_alert_is_refused_naming_its_field() {
    let broker = TestBroker::start().await;
    let mut post = broker.client(TJ_POST).await;
    let cases = cases();
    assert!(cases.len() >= 12);
    for (name, mutate, expected) in &cases {
        let mut a = alert(pb::Category::Drugs, "valid before the mutation");
        mutate(&mut a);
        let status = post
            .publish(pb::PublishRequest { alert: Some(a) })
            .await
            .expect_err(name);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{name}: {status:?}"
        );
        assert!(
            status.message().starts_with(expected),
            "{name}: got `{}`, expected `{expected}`",
            status.message()
        );
    }
    let none = post
        .publish(pb::PublishRequest { alert: None })
        .await
        .expect_err("no alert");
    assert_eq!(none.message(), "alert: is required");

    // Nothing half-valid was stored.
    let stored = post
        .list_alerts(pb::ListAlertsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(stored.alerts.is_empty());
}

#[tokio::test]
async fn a_complete_alert_with_every_optional_part_is_accepted_as_sent() {
    let broker = TestBroker::start().await;
    let mut post = broker.client(TJ_POST).await;
    let content = b"jpeg bytes".to_vec();
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&content).to_vec();
    let p = |lat, lon| pb::Point {
        latitude: lat,
        longitude: lon,
    };
    let mut a = alert(pb::Category::Terrorism, "FTF suspect crossing");
    a.description = "Two men, one matching a notice.\nHeading north.".into();
    a.instruction = "Check documents".into();
    a.incident = "TJ-2026-0042".into();
    a.expires = Some(timestamp(SystemTime::now() + Duration::from_secs(6 * 3600)));
    a.language = "ru".into();
    a.translations = vec![translation("en", "FTF suspect crossing (en)")];
    a.parameters = vec![
        pb::Parameter {
            key: "EAS-ORG:layer.1".into(),
            value: Some(pb::parameter::Value::Flag(true)),
            unit: String::new(),
        },
        pb::Parameter {
            key: "persons".into(),
            value: Some(pb::parameter::Value::Integer(2)),
            unit: "persons".into(),
        },
        pb::Parameter {
            key: "plate".into(),
            value: Some(pb::parameter::Value::Text("01 A 123 BC".into())),
            unit: String::new(),
        },
    ];
    a.area = Some(pb::Area {
        crossing_point: "TJ-ISHK".into(),
        border_sector: "TJ-AF/Pyanj".into(),
        circles: vec![pb::Circle {
            center: Some(p(36.727, 71.611)),
            radius_km: 5.0,
        }],
        polygons: vec![pb::Polygon {
            points: vec![p(36.7, 71.6), p(36.8, 71.6), p(36.8, 71.7), p(36.7, 71.6)],
        }],
        description: "bridge".into(),
    });
    a.marking = Some(pb::Marking {
        tlp: pb::Tlp::Amber as i32,
        releasable_to: vec!["AF".into(), "UZ:border-troops".into()],
        recipients: vec![],
        handling_codes: vec!["LE-ONLY".into()],
    });
    a.source = Some(pb::SourceEvaluation {
        reliability: pb::SourceReliability::B as i32,
        accuracy: pb::InformationAccuracy::InformationAccuracy2 as i32,
    });
    a.attachments = vec![pb::Attachment {
        filename: "photo.jpg".into(),
        mime_type: "image/jpeg".into(),
        content: content.into(),
        sha256: digest,
        description: "at the gate".into(),
    }];
    let ack = publish(&mut post, a.clone()).await;
    assert_eq!(ack.id, a.id, "the acknowledged id is the one sent");
    let stored = post
        .get_alert(pb::GetAlertRequest { id: a.id.clone() })
        .await
        .expect("get")
        .into_inner()
        .alert
        .expect("alert");
    let mut expected = a;
    expected.origin = stored.origin.clone();
    assert_eq!(stored, expected);
}

fn translation(language: &str, headline: &str) -> pb::Translation {
    pb::Translation {
        language: language.into(),
        headline: headline.into(),
        description: String::new(),
        instruction: String::new(),
    }
}
