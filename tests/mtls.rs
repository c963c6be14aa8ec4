//! Identity comes from the client certificate only, and every bad
//! certificate is refused with a clear reason.

use std::time::Duration;

use liaison::client;
use liaison::pki::{Ca, LeafSpec};
use liaison::proto as pb;
use liaison::tls::TlsFiles;
use liaison_testkit::*;
use time::OffsetDateTime;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Tries one RPC with `files`; returns the whole error text (status and the
/// source chain, where rustls' alert is) or the identity the broker saw.
async fn attempt(broker: &TestBroker, files: &TlsFiles) -> Result<String, String> {
    let mut client = match client::connect(&broker.url(), Some(files)).await {
        Ok(c) => c,
        Err(e) => return Err(chain(&e)),
    };
    match client.who_am_i(pb::WhoAmIRequest {}).await {
        Ok(resp) => Ok(resp.into_inner().identity.expect("identity").urn),
        Err(status) => Err(format!("{:?} {}", status.code(), chain(&status))),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn spec(uris: &[&str]) -> LeafSpec {
    let now = OffsetDateTime::now_utc();
    LeafSpec {
        common_name: "test".into(),
        uris: uris.iter().map(|s| s.to_string()).collect(),
        hosts: vec![],
        not_before: now - time::Duration::minutes(5),
        not_after: now + time::Duration::days(1),
    }
}

#[tokio::test]
async fn a_valid_node_certificate_is_its_identity() {
    let broker = TestBroker::start().await;
    assert_eq!(
        attempt(&broker, &broker.pki.node(TJ_POST)).await,
        Ok(TJ_POST.to_owned())
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_at_the_handshake() {
    let broker = TestBroker::start().await;
    let ca = std::fs::read(&broker.pki.broker_files().ca).expect("ca");
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    let endpoint = Endpoint::from_shared(broker.url())
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(5));
    let err = match endpoint.connect().await {
        Err(e) => chain(&e),
        Ok(channel) => {
            let mut client = pb::broker_client::BrokerClient::new(channel);
            let status = client
                .who_am_i(pb::WhoAmIRequest {})
                .await
                .expect_err("refused");
            chain(&status)
        }
    };
    assert!(err.contains("CertificateRequired"), "{err}");
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_is_refused() {
    let broker = TestBroker::start().await;
    let rogue = Ca::generate("rogue CA").expect("ca");
    let files = broker.pki.custom("rogue", &spec(&[TJ_POST]), Some(&rogue));
    let err = attempt(&broker, &files).await.expect_err("refused");
    assert!(
        err.contains("UnknownCA") || err.contains("BadCertificate"),
        "{err}"
    );
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let broker = TestBroker::start().await;
    let mut expired = spec(&[TJ_POST]);
    let now = OffsetDateTime::now_utc();
    expired.not_before = now - time::Duration::days(30);
    expired.not_after = now - time::Duration::days(1);
    let files = broker.pki.custom("expired", &expired, None);
    let err = attempt(&broker, &files).await.expect_err("refused");
    assert!(err.contains("CertificateExpired"), "{err}");
    // The operator learns whose certificate it was, not only from where.
    let channel = client::endpoint(&broker.url(), Some(&broker.pki.node(TJ_POST)))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let admin = pb::admin_client::AdminClient::new(channel);
    let detail = eventually("an auth_failure record", || {
        let mut admin = admin.clone();
        async move {
            let mut trail = admin
                .audit(pb::AdminAuditRequest { from_seq: 1 })
                .await
                .expect("audit")
                .into_inner();
            let mut found = None;
            while let Some(e) = trail.message().await.expect("entry") {
                if e.kind == "auth_failure" {
                    found = Some(e.detail);
                }
            }
            found.ok_or(())
        }
    })
    .await;
    assert!(
        detail.contains(&format!("of {TJ_POST}")) && detail.contains("certificate "),
        "{detail}"
    );
}

#[tokio::test]
async fn certificates_without_exactly_one_valid_liaison_uri_are_unauthenticated() {
    let broker = TestBroker::start().await;
    let cases: [(&str, &[&str], &str); 4] = [
        ("no-uri", &[], "no `urn:liaison:` URI"),
        (
            "other-uri",
            &["https://example.org/node"],
            "no `urn:liaison:` URI",
        ),
        ("two-uris", &[TJ_POST, AF_OFFICE], "2 `urn:liaison:` URIs"),
        (
            "bad-uri",
            &["urn:liaison:tj:Border:x"],
            "is not a liaison identity",
        ),
    ];
    for (name, uris, expected) in cases {
        let files = broker.pki.custom(name, &spec(uris), None);
        let err = attempt(&broker, &files).await.expect_err(name);
        assert!(err.starts_with("Unauthenticated"), "{name}: {err}");
        assert!(err.contains(expected), "{name}: {err}");
    }
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_and_its_open_feed_is_closed() {
    let broker = TestBroker::start_with(|c| c.tls_poll = Duration::from_millis(50)).await;
    let officer = broker.pki.node(AF_OFFICE);
    let post = broker.pki.node(TJ_POST);
    let mut client = broker.client(AF_OFFICE).await;
    let mut feed = Subscriber::open(&mut client, open("main", pb::Filter::default())).await;

    let name = AF_OFFICE.replace(':', "_");
    let revoked = liaison::pki::revoke(broker.pki.path(), &name).expect("revoke");
    assert!(!revoked.already);
    assert_eq!(revoked.listed, 1);

    // The open feed ends: the broker closed the connection.
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Ok(Some(_)) = feed.next_event().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the feed of a revoked certificate stayed open"
    );
    // New handshakes with it are refused, with the reason.
    let err = attempt(&broker, &officer).await.expect_err("refused");
    assert!(err.contains("Revoked"), "{err}");
    // Everybody else is unaffected, and revoking again changes nothing.
    assert_eq!(attempt(&broker, &post).await, Ok(TJ_POST.to_owned()));
    let again = liaison::pki::revoke(broker.pki.path(), &name).expect("revoke again");
    assert!(again.already);
    assert_eq!(again.listed, 1);
}

#[tokio::test]
async fn a_broker_started_with_a_revocation_list_refuses_what_it_lists() {
    let pki = Pki::new();
    let node: liaison::identity::NodeId = TJ_POST.parse().expect("urn");
    liaison::pki::issue_node(pki.path(), &node, "post", 30, false).expect("issue");
    liaison::pki::revoke(pki.path(), "post").expect("revoke");
    let broker = TestBroker::start_in(pki, |_| {}).await;
    let err = attempt(&broker, &TlsFiles::in_dir(broker.pki.path(), "post"))
        .await
        .expect_err("refused");
    assert!(err.contains("Revoked"), "{err}");
    assert_eq!(
        attempt(&broker, &broker.pki.node(AF_OFFICE)).await,
        Ok(AF_OFFICE.to_owned())
    );
}

#[tokio::test]
async fn the_broker_takes_new_certificates_without_a_restart() {
    let broker = TestBroker::start_with(|c| c.tls_poll = Duration::from_millis(50)).await;
    let old = broker.pki.node(TJ_POST);
    assert_eq!(attempt(&broker, &old).await, Ok(TJ_POST.to_owned()));

    // A new CA and broker certificate replace the old ones in place, one
    // file after the other (a half-rotated set is refused until complete).
    let fresh = Pki::new();
    let new_node = fresh.node(AF_OFFICE);
    for f in ["ca.crt", "broker.crt", "broker.key"] {
        std::fs::copy(fresh.path().join(f), broker.pki.path().join(f)).expect("copy");
    }
    let id = eventually("the new certificates are used", || async {
        attempt(&broker, &new_node).await
    })
    .await;
    assert_eq!(id, AF_OFFICE);
    // Certificates of the old CA no longer get in.
    assert!(attempt(&broker, &old).await.is_err());
}
