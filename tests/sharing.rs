//! The sharing policy end to end: publish authorisation, agreements across
//! borders, reload (and refusal of a bad file), receipts and who may read
//! them, and the tamper-evident audit trail.

use std::process::Command;

use liaison::proto as pb;
use liaison_testkit::*;
use tokio_stream::StreamExt;

const NATIONAL_CENTRE: &str = "urn:liaison:TJ:border-guard:dushanbe";

const POLICY: &str = r#"
[[node]]
match = "TJ:border-guard"
role = "post"
publish = ["drugs"]

[[node]]
match = "urn:liaison:TJ:border-guard:dushanbe"
role = "national_centre"

[[node]]
match = "TJ:customs"
role = "post"

[[node]]
match = "AF"
role = "liaison_office"

[[node]]
match = "UZ"
role = "liaison_office"

[[node]]
match = "urn:liaison:TJ:border-guard:admin"
role = "administrator"
subscribe = false

[[agreement]]
between = ["TJ", "AF"]
categories = ["drugs"]
max_tlp = "amber"
"#;

const ADMIN: &str = "urn:liaison:TJ:border-guard:admin";

/// Asks the broker, as its administrator, to read its policy file again.
async fn reload(broker: &TestBroker) -> Result<pb::PolicyChange, tonic::Status> {
    let channel = liaison::client::endpoint(&broker.url(), Some(&broker.pki.node(ADMIN)))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    pb::admin_client::AdminClient::new(channel)
        .reload_policy(pb::ReloadPolicyRequest {})
        .await
        .map(tonic::Response::into_inner)
}

async fn with_policy(text: &str) -> (TestBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, text).expect("write policy");
    let broker = TestBroker::start_with(|c| {
        c.policy_file = Some(path);
    })
    .await;
    (broker, dir)
}

fn amber_to(category: pb::Category, headline: &str, releasable: &[&str]) -> pb::Alert {
    let mut a = alert(category, headline);
    a.marking = Some(pb::Marking {
        tlp: pb::Tlp::Amber as i32,
        releasable_to: releasable.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    });
    a
}

#[tokio::test]
async fn the_policy_decides_who_publishes_what_and_what_crosses_a_border() {
    let (broker, _dir) = with_policy(POLICY).await;
    let mut post = broker.client(TJ_POST).await;
    // Role: this post may publish drugs only.
    let refused = post
        .publish(pb::PublishRequest {
            alert: Some(alert(pb::Category::Arms, "rifles")),
        })
        .await
        .expect_err("arms refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("may not publish category arms"),
        "{}",
        refused.message()
    );

    // A node the policy does not know may not subscribe.
    let mut stranger = broker.client("urn:liaison:KZ:customs:khorgos").await;
    let denied = Subscriber::try_open(&mut stranger, open("", pb::Filter::default()))
        .await
        .err()
        .expect("denied");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // AMBER releasable to AF and UZ: AF has an agreement with TJ, UZ has none.
    let mut af = broker.client(AF_OFFICE).await;
    let mut uz = broker.client(UZ_OFFICE).await;
    let mut s_af = Subscriber::open(&mut af, open("", pb::Filter::default())).await;
    let mut s_uz = Subscriber::open(&mut uz, open("", pb::Filter::default())).await;
    let shared = amber_to(pb::Category::Drugs, "heroin convoy", &["AF", "UZ"]);
    let shared_id = shared.id.clone();
    publish(&mut post, shared).await;
    let mut clear = alert(pb::Category::Drugs, "public notice");
    clear.marking = Some(pb::Marking {
        tlp: pb::Tlp::Clear as i32,
        ..Default::default()
    });
    publish(&mut post, clear).await;
    assert_eq!(headline_of(&s_af.next().await), "heroin convoy");
    assert_eq!(headline_of(&s_af.next().await), "public notice");
    assert_eq!(
        headline_of(&s_uz.next().await),
        "public notice",
        "no agreement: only CLEAR crosses"
    );
    let hidden = uz
        .get_alert(pb::GetAlertRequest { id: shared_id })
        .await
        .expect_err("hidden");
    assert_eq!(hidden.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_changed_policy_file_takes_effect_only_when_reloaded_and_a_bad_one_is_refused() {
    let (broker, dir) = with_policy(POLICY).await;
    let path = dir.path().join("policy.toml");
    let mut post = broker.client(TJ_POST).await;
    let arms = || pb::PublishRequest {
        alert: Some(alert(pb::Category::Arms, "rifles")),
    };
    assert!(post.publish(arms()).await.is_err());

    // A changed file is not in force until the operator says so.
    std::fs::write(
        &path,
        POLICY.replace(r#"publish = ["drugs"]"#, r#"publish = ["drugs", "arms"]"#),
    )
    .expect("write");
    assert!(post.publish(arms()).await.is_err(), "reloaded by itself");
    let change = reload(&broker).await.expect("reloaded");
    assert_eq!(
        change.changed,
        [
            "node TJ:border-guard (post, publishes drugs, subscribes) → node TJ:border-guard (post, publishes drugs,arms, subscribes)"
        ]
    );
    assert!(change.added.is_empty() && change.removed.is_empty());
    post.publish(arms())
        .await
        .expect("the new policy is in force");
    // The audit trail keeps what changed.
    let reloaded = audit_details(&broker, "policy_reloaded").await;
    assert!(
        reloaded
            .last()
            .is_some_and(|d| d.contains("~node TJ:border-guard")),
        "{reloaded:?}"
    );

    // A broken, an empty and a half-written file are refused; the policy in
    // force stays.
    let half = POLICY
        .split("[[agreement]]")
        .next()
        .expect("first half")
        .to_owned();
    for (bad, expected) in [
        (
            "[[node]]\nmatch = \"TJ\"\nrole = \"emperor\"\n".to_owned(),
            "emperor",
        ),
        (String::new(), "no_nodes = true"),
        (half, "no [[agreement]]"),
    ] {
        std::fs::write(&path, &bad).expect("write");
        let refused = reload(&broker).await.expect_err("refused");
        assert_eq!(
            refused.code(),
            tonic::Code::FailedPrecondition,
            "{refused:?}"
        );
        assert!(refused.message().contains(expected), "{refused:?}");
        post.publish(arms())
            .await
            .expect("old policy still in force");
    }
    assert_eq!(audit_details(&broker, "policy_rejected").await.len(), 3);
}

/// The details of the audit records of `kind` so far.
async fn audit_details(broker: &TestBroker, kind: &str) -> Vec<String> {
    let channel = liaison::client::endpoint(&broker.url(), Some(&broker.pki.node(ADMIN)))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut trail = pb::admin_client::AdminClient::new(channel)
        .audit(pb::AdminAuditRequest { from_seq: 1 })
        .await
        .expect("audit")
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = trail.message().await.expect("entry") {
        if e.kind == kind {
            out.push(e.detail);
        }
    }
    out
}

#[tokio::test]
async fn receipts_reach_the_originating_agency_and_nobody_else() {
    let (broker, _dir) = with_policy(POLICY).await;
    let mut post = broker.client(TJ_POST).await;
    let a = amber_to(pb::Category::Drugs, "caravan at the ford", &["AF"]);
    let id = a.id.clone();

    let mut officer = broker.client(AF_OFFICE).await;
    let mut feed = Subscriber::open(&mut officer, open("main", pb::Filter::default())).await;
    publish(&mut post, a).await;

    // The originator follows the receipts as they come.
    let mut follow = post
        .receipts(pb::ReceiptsRequest {
            id: id.clone(),
            follow: true,
        })
        .await
        .expect("receipts")
        .into_inner();

    let d = feed.next().await;
    feed.ack(&[seq_of(&d)]).await;
    let delivered = tokio::time::timeout(PATIENCE, follow.next())
        .await
        .expect("in time")
        .expect("receipt")
        .expect("ok");
    assert_eq!(delivered.kind, pb::ReceiptKind::Delivered as i32);
    assert_eq!(
        delivered.recipient.as_ref().expect("recipient").urn,
        AF_OFFICE
    );
    assert_eq!(delivered.feed, "main");

    let ack = officer
        .acknowledge(pb::AcknowledgeRequest {
            id: id.clone(),
            note: "patrol sent".into(),
        })
        .await
        .expect("acknowledge")
        .into_inner();
    assert_eq!(ack.kind, pb::ReceiptKind::Acknowledged as i32);
    let acknowledged = tokio::time::timeout(PATIENCE, follow.next())
        .await
        .expect("in time")
        .expect("receipt")
        .expect("ok");
    assert_eq!(acknowledged.note, "patrol sent");

    // Listing: the originator and its national centre see both receipts.
    for reader in [TJ_POST, TJ_POST_2, NATIONAL_CENTRE] {
        let mut client = broker.client(reader).await;
        let list = receipts(&mut client, &id).await.expect("receipts");
        assert_eq!(list.len(), 2, "{reader}");
    }
    // Other agencies — even the recipient and a Tajik customs post — cannot.
    for outsider in [AF_OFFICE, TJ_CUSTOMS, UZ_OFFICE] {
        let mut client = broker.client(outsider).await;
        let err = client
            .receipts(pb::ReceiptsRequest {
                id: id.clone(),
                follow: false,
            })
            .await
            .expect_err("not visible");
        assert_eq!(err.code(), tonic::Code::NotFound, "{outsider}");
    }
    // Acknowledging an alert one may not see looks like a missing alert.
    let mut uz = broker.client(UZ_OFFICE).await;
    let err = uz
        .acknowledge(pb::AcknowledgeRequest {
            id,
            note: String::new(),
        })
        .await
        .expect_err("hidden");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn the_audit_trail_records_everything_and_names_a_tampered_record() {
    let (mut broker, _dir) = with_policy(POLICY).await;
    let mut post = broker.client(TJ_POST).await;
    let mut officer = broker.client(AF_OFFICE).await;
    let mut feed = Subscriber::open(&mut officer, open("main", pb::Filter::default())).await;
    let a = amber_to(pb::Category::Drugs, "audited", &["AF"]);
    publish(&mut post, a.clone()).await;
    let d = feed.next().await;
    feed.ack(&[seq_of(&d)]).await;
    feed.close().await;
    let _ = post
        .publish(pb::PublishRequest {
            alert: Some(alert(pb::Category::Cbrn, "refused")),
        })
        .await;
    let bad = broker.pki.custom(
        "no-uri",
        &liaison::pki::LeafSpec {
            uris: vec![],
            ..liaison::pki::LeafSpec::node(&TJ_POST.parse().expect("urn"), 1)
        },
        None,
    );
    let mut nobody = liaison::client::connect(&broker.url(), Some(&bad))
        .await
        .expect("connect");
    assert!(nobody.who_am_i(pb::WhoAmIRequest {}).await.is_err());
    broker.stop().await;

    let data = broker.data_dir();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_liaison"))
            .args(args)
            .arg("--data")
            .arg(&data)
            .output()
            .expect("run liaison")
    };
    let export = run(&["audit", "export"]);
    assert!(export.status.success());
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let kinds: Vec<&str> = records.iter().filter_map(|r| r["kind"].as_str()).collect();
    for kind in [
        "policy_reloaded",
        "published",
        "delivered",
        "receipt",
        "refused",
        "auth_failure",
    ] {
        assert!(kinds.contains(&kind), "no {kind} record in {kinds:?}");
    }
    let verified = run(&["audit", "verify"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(String::from_utf8_lossy(&verified.stdout).contains("intact"));

    // Change the detail of one record in the database, as an intruder would.
    let victim = records
        .iter()
        .find(|r| r["kind"] == "published")
        .expect("published")["seq"]
        .as_u64()
        .expect("seq");
    {
        let db = sled::open(&data).expect("open sled");
        let log = db.open_tree("log").expect("tree");
        let mut key = vec![b'z'];
        key.extend_from_slice(&victim.to_be_bytes());
        let bytes = log.get(&key).expect("get").expect("record");
        let mut record = <liaison::audit::AuditRecord as prost::Message>::decode(bytes.as_ref())
            .expect("decode");
        record.detail = "nothing happened".into();
        log.insert(&key, prost::Message::encode_to_vec(&record))
            .expect("insert");
        db.flush().expect("flush");
    }
    let verified = run(&["audit", "verify"]);
    assert!(!verified.status.success());
    let stderr = String::from_utf8_lossy(&verified.stderr);
    assert!(
        stderr.contains(&format!("audit record {victim} is broken")),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_node_removed_from_the_policy_loses_its_open_feed() {
    let (broker, dir) = with_policy(POLICY).await;
    let path = dir.path().join("policy.toml");
    let mut officer = broker.client(AF_OFFICE).await;
    let mut feed = Subscriber::open(&mut officer, open("main", pb::Filter::default())).await;
    let mut post = broker.client(TJ_POST).await;
    publish(&mut post, amber_to(pb::Category::Drugs, "before", &["AF"])).await;
    let d = feed.next().await;
    feed.ack(&[seq_of(&d)]).await;

    // Afghanistan is taken out of the policy.
    std::fs::write(
        &path,
        POLICY.replace("[[node]]\nmatch = \"AF\"\nrole = \"liaison_office\"\n", ""),
    )
    .expect("write");
    let change = reload(&broker).await.expect("reloaded");
    assert_eq!(
        change.removed,
        ["node AF (liaison_office, publishes *, subscribes)"]
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        // The new policy ends the feed even when its window is full of
        // unacknowledged deliveries (as it soon is here).
        publish(&mut post, alert(pb::Category::Drugs, "after")).await;
        match tokio::time::timeout(std::time::Duration::from_millis(200), feed.next_event()).await {
            Ok(Err(status)) => {
                assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
                break;
            }
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(Ok(None)) => panic!("the feed ended without a status"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed was never closed"
        );
    }
}
