//! Operating a broker: metrics that move with traffic, admin views for
//! administrators only, reflection and health.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use liaison::proto as pb;
use liaison_testkit::*;
use tokio_stream::StreamExt;

/// `GET /metrics` on a plain TCP connection.
fn scrape(url: &str) -> String {
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let mut conn = std::net::TcpStream::connect(addr).expect("connect metrics");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    conn.read_to_string(&mut body).expect("response");
    body
}

fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_metrics_endpoint_counts_what_happens() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("tmp");
    let mut child = Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--certs",
        ])
        .arg(pki.path())
        .arg("--data")
        .arg(data.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let (mut first, mut second) = (String::new(), String::new());
    out.read_line(&mut first).expect("listening line");
    out.read_line(&mut second).expect("metrics line");
    let broker_url = first
        .trim()
        .strip_prefix("liaison: listening on ")
        .expect("listening")
        .to_owned();
    let metrics_url = second
        .trim()
        .strip_prefix("liaison: metrics on ")
        .expect("metrics")
        .to_owned();

    let before = scrape(&metrics_url);
    assert!(before.starts_with("HTTP/1.1 200 OK"));
    let mut post = liaison::client::connect(&broker_url, Some(&pki.node(TJ_POST)))
        .await
        .expect("connect");
    let a = alert(pb::Category::Drugs, "counted");
    publish(&mut post, a.clone()).await;
    publish(&mut post, alert(pb::Category::Drugs, "counted too")).await;
    publish(&mut post, a).await; // duplicate
    let mut bad = alert(pb::Category::Drugs, "");
    bad.headline.clear();
    assert!(
        post.publish(pb::PublishRequest { alert: Some(bad) })
            .await
            .is_err()
    );
    let mut sub = Subscriber::open(
        &mut post,
        pb::OpenFeed {
            start: start_all(),
            ..open("main", pb::Filter::default())
        },
    )
    .await;
    let d = sub.next().await;
    sub.ack(&[seq_of(&d)]).await;
    sub.next().await;
    // A certificate from another CA is refused and counted.
    let rogue = liaison::pki::Ca::generate("rogue").expect("ca");
    let files = pki.custom(
        "rogue",
        &liaison::pki::LeafSpec::node(&TJ_POST.parse().expect("urn"), 1),
        Some(&rogue),
    );
    if let Ok(mut c) = liaison::client::connect(&broker_url, Some(&files)).await {
        assert!(c.who_am_i(pb::WhoAmIRequest {}).await.is_err());
    }

    let after = eventually("the metrics move", || async {
        let m = scrape(&metrics_url);
        (value(&m, "liaison_acks_total") >= 1.0
            && value(
                &m,
                "liaison_certificate_refusals_total{reason=\"unknown_ca\"}",
            ) >= 1.0)
            .then_some(m)
            .ok_or(())
    })
    .await;
    assert_eq!(
        value(&after, "liaison_publishes_total{result=\"accepted\"}"),
        2.0
    );
    assert_eq!(
        value(&after, "liaison_publishes_total{result=\"duplicate\"}"),
        1.0
    );
    assert_eq!(
        value(&after, "liaison_publishes_total{result=\"invalid\"}"),
        1.0
    );
    assert_eq!(value(&after, "liaison_deliveries_total"), 2.0);
    assert!(value(&after, "liaison_commit_batch_size_count") >= 2.0);
    assert!(value(&after, "liaison_commit_flush_seconds_count") >= 2.0);
    assert!(value(&after, "liaison_connected_nodes") >= 1.0);
    assert!(after.contains(
        "liaison_feed_in_flight{owner=\"urn:liaison:TJ:border-guard:ishkashim\",feed=\"main\"}"
    ));
    let _ = child.kill();
    let _ = child.wait();
}

const POLICY: &str = r#"
# One country: nothing crosses a border here.
no_agreements = true
[[node]]
match = "TJ"
role = "post"

[[node]]
match = "urn:liaison:TJ:border-guard:admin"
role = "administrator"
subscribe = false
"#;

#[tokio::test]
async fn admin_views_are_for_administrators_and_show_feeds_nodes_and_totals() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, POLICY).expect("policy");
    let broker = TestBroker::start_with(|c| c.policy_file = Some(path)).await;
    let mut post = broker.client(TJ_POST).await;
    publish(&mut post, alert(pb::Category::Drugs, "one")).await;
    publish(&mut post, alert(pb::Category::Drugs, "two")).await;
    let mut colleague = broker.client(TJ_POST_2).await;
    let mut feed = Subscriber::open(
        &mut colleague,
        pb::OpenFeed {
            start: start_all(),
            max_in_flight: 1,
            ..open("watch", pb::Filter::default())
        },
    )
    .await;
    let first = feed.next().await;
    assert_eq!(headline_of(&first), "one");

    let admin_files = broker.pki.node("urn:liaison:TJ:border-guard:admin");
    let channel = liaison::client::endpoint(&broker.url(), Some(&admin_files))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut admin = pb::admin_client::AdminClient::new(channel);
    let feeds = admin
        .feeds(pb::AdminFeedsRequest {})
        .await
        .expect("feeds")
        .into_inner()
        .feeds;
    let watch = feeds
        .iter()
        .find(|f| f.feed == "watch")
        .expect("feed listed");
    assert_eq!(watch.owner, TJ_POST_2);
    assert!(watch.connected);
    assert_eq!(watch.in_flight, 1);
    assert_eq!(watch.backlog, 2);

    let nodes = admin
        .nodes(pb::AdminNodesRequest {})
        .await
        .expect("nodes")
        .into_inner()
        .nodes;
    let urns: Vec<&str> = nodes.iter().map(|n| n.urn.as_str()).collect();
    assert!(
        urns.contains(&TJ_POST) && urns.contains(&TJ_POST_2),
        "{urns:?}"
    );
    let stats = admin
        .stats(pb::AdminStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.head_seq, 2);
    assert!(!stats.policy_open);
    assert!(stats.audit_records >= 3);

    // The audit trail streams in order, whole, and its chain verifies.
    let mut entries = admin
        .audit(pb::AdminAuditRequest { from_seq: 0 })
        .await
        .expect("audit")
        .into_inner();
    let mut records = Vec::new();
    while let Some(e) = entries.message().await.expect("entry") {
        assert!(!e.undecodable);
        records.push(liaison::audit::from_entry(e));
    }
    assert!(records.len() as u64 >= stats.audit_records);
    let kinds: Vec<&str> = records
        .iter()
        .filter_map(|(_, r)| r.as_ref().map(|r| r.kind.as_str()))
        .collect();
    assert!(kinds.contains(&"published"), "{kinds:?}");
    let (count, _) = liaison::audit::verify(records.clone()).expect("the chain verifies");
    assert_eq!(count, records.len() as u64);
    let tail: Vec<u64> = {
        let mut s = admin
            .audit(pb::AdminAuditRequest { from_seq: 2 })
            .await
            .expect("audit from 2")
            .into_inner();
        let mut seqs = Vec::new();
        while let Some(e) = s.message().await.expect("entry") {
            seqs.push(e.seq);
        }
        seqs
    };
    assert_eq!(tail.first(), Some(&2));

    // A post is not an administrator.
    let channel = liaison::client::endpoint(&broker.url(), Some(&broker.pki.node(TJ_POST)))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut not_admin = pb::admin_client::AdminClient::new(channel);
    let denied = not_admin
        .stats(pb::AdminStatsRequest {})
        .await
        .expect_err("not an administrator");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let denied = not_admin
        .audit(pb::AdminAuditRequest { from_seq: 0 })
        .await
        .expect_err("not an administrator");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn reflection_lists_the_services_and_health_reports_serving() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let broker = TestBroker::start().await;
    let channel = liaison::client::endpoint(&broker.url(), Some(&broker.pki.node(TJ_POST)))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers.next().await.expect("answer").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected answer {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "liaison.v1.Broker",
        "liaison.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "liaison.v1.Broker".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}
