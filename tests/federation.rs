//! Federation between two states' brokers, each with its own PKI, in this
//! process on 127.0.0.1:0: what crosses is what the agreement allows, with
//! its origin provable; a peer that is down misses nothing; a peer's CA
//! logs nobody in as a node; receipts travel back; alerts are re-shared in
//! a triangle where allowed and never loop (a peer played by hand:
//! `federation_peer.rs`).

use liaison::federation::PeerConfig;
use liaison::federation::attest;
use liaison::proto as pb;
use liaison_testkit::federation::{fast_link, peer, write_policy};
use liaison_testkit::*;

const POLICY: &str = r#"
[[node]]
match = "TJ"
role = "post"

[[node]]
match = "AF"
role = "liaison_office"

[[agreement]]
between = ["TJ", "AF"]
categories = ["drugs", "arms"]
max_tlp = "amber"
"#;

/// AF waits for TJ to dial; TJ dials AF.
struct Pair {
    tj: TestBroker,
    af: TestBroker,
}

async fn pair() -> Pair {
    trace();
    let (tj_pki, af_pki) = (Pki::national("TJ"), Pki::national("AF"));
    let (tj_ca, af_ca) = (tj_pki.ca_path(), af_pki.ca_path());
    let af_policy = write_policy(&af_pki, POLICY);
    let af = TestBroker::start_in(af_pki, |c| {
        c.policy_file = Some(af_policy);
        c.federation.peers = vec![peer("tj", "TJ", &tj_ca, None)];
        fast_link(c);
    })
    .await;
    let tj_policy = write_policy(&tj_pki, POLICY);
    let af_url = af.url();
    let tj = TestBroker::start_in(tj_pki, |c| {
        c.policy_file = Some(tj_policy);
        c.federation.peers = vec![peer("af", "AF", &af_ca, Some(af_url))];
        fast_link(c);
    })
    .await;
    Pair { tj, af }
}

fn marked(category: pb::Category, headline: &str, tlp: pb::Tlp, releasable: &[&str]) -> pb::Alert {
    let mut a = alert(category, headline);
    a.marking = Some(pb::Marking {
        tlp: tlp as i32,
        releasable_to: releasable.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    });
    a
}

#[tokio::test]
async fn what_crosses_is_exactly_what_the_agreement_and_markings_allow() {
    let pair = pair().await;
    let mut post = pair.tj.client(TJ_POST).await;
    let mut exercise = marked(pb::Category::Drugs, "exercise", pb::Tlp::Green, &[]);
    exercise.status = pb::Status::Exercise as i32;
    let cases = [
        (
            marked(pb::Category::Drugs, "green drugs", pb::Tlp::Green, &[]),
            true,
        ),
        (
            marked(pb::Category::Health, "green health", pb::Tlp::Green, &[]),
            false,
        ),
        (
            marked(pb::Category::Health, "clear health", pb::Tlp::Clear, &[]),
            true,
        ),
        (
            marked(pb::Category::Arms, "amber to AF", pb::Tlp::Amber, &["AF"]),
            true,
        ),
        (
            marked(pb::Category::Arms, "amber to UZ", pb::Tlp::Amber, &["UZ"]),
            false,
        ),
        (
            marked(
                pb::Category::Drugs,
                "amber strict",
                pb::Tlp::AmberStrict,
                &[],
            ),
            false,
        ),
        (exercise, false),
        (
            marked(pb::Category::Drugs, "sentinel", pb::Tlp::Green, &[]),
            true,
        ),
    ];
    let mut expected = Vec::new();
    for (a, crosses) in cases {
        if crosses {
            expected.push(a.headline.clone());
        }
        publish(&mut post, a).await;
    }
    let mut office = pair.af.client(AF_OFFICE).await;
    let got = wait_for_broker_alerts(&mut office, expected.len()).await;
    assert_eq!(
        headlines(&got),
        expected,
        "in publication order, nothing else"
    );
    for record in &got {
        let alert = record.alert.as_ref().expect("alert");
        assert_eq!(alert.origin.as_ref().expect("origin").urn, TJ_POST);
        let p = record.provenance.as_ref().expect("provenance");
        assert_eq!(p.origin_broker, broker_of("TJ").to_string());
        assert_eq!(p.path, [broker_of("TJ").to_string()]);
    }
    // The sentinel arrived after everything before it was decided: nothing
    // else crossed.
    let all = broker_alerts(&mut office).await;
    assert_eq!(all.len(), expected.len());
}

#[tokio::test]
async fn the_origin_is_provable_and_a_changed_byte_is_detected() {
    let pair = pair().await;
    let mut post = pair.tj.client(TJ_POST).await;
    publish(
        &mut post,
        marked(pb::Category::Drugs, "signed", pb::Tlp::Green, &[]),
    )
    .await;
    let mut office = pair.af.client(AF_OFFICE).await;
    let got = wait_for_broker_alerts(&mut office, 1).await;
    let att = got[0]
        .provenance
        .as_ref()
        .and_then(|p| p.attestation.clone())
        .expect("attestation");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tj_ca = pair.tj.pki.ca_path();
    let origins = [attest::Origin::new(
        broker_of("TJ").country(),
        broker_of("TJ"),
        liaison::tls::ca_verifier(&tj_ca, None, &provider).expect("verifier"),
    )];
    let ok = attest::verify(&att, &origins).expect("verifies against TJ's CA");
    assert_eq!(
        ok.statement.alert.as_ref().map(|a| a.headline.as_str()),
        Some("signed")
    );
    assert_eq!(
        ok.statement.alert.as_ref(),
        got[0].alert.as_ref(),
        "stored exactly as attested"
    );
    for at in [att.statement.len() / 2, att.statement.len() - 1] {
        let mut changed = att.clone();
        changed.statement[at] ^= 0x01;
        assert!(
            attest::verify(&changed, &origins).is_err(),
            "byte {at} changed"
        );
    }
    let mut changed = att.clone();
    let last = changed.signature.len() - 1;
    changed.signature[last] ^= 0x01;
    assert_eq!(
        attest::verify(&changed, &origins).err(),
        Some(attest::Unproven::BadSignature)
    );
    // Under another state's CA it proves nothing.
    let af_ca = pair.af.pki.ca_path();
    let wrong = [attest::Origin::new(
        broker_of("TJ").country(),
        broker_of("TJ"),
        liaison::tls::ca_verifier(&af_ca, None, &provider).expect("verifier"),
    )];
    assert!(matches!(
        attest::verify(&att, &wrong),
        Err(attest::Unproven::Certificate { .. })
    ));
}

#[tokio::test]
async fn a_peer_down_while_alerts_are_published_gets_all_of_them_once_in_order() {
    let mut pair = pair().await;
    let mut post = pair.tj.client(TJ_POST).await;
    publish(
        &mut post,
        marked(pb::Category::Drugs, "before", pb::Tlp::Green, &[]),
    )
    .await;
    let mut office = pair.af.client(AF_OFFICE).await;
    wait_for_broker_alerts(&mut office, 1).await;
    pair.af.stop().await;
    let mut expected = vec!["before".to_owned()];
    for i in 0..50 {
        let h = format!("while down {i}");
        publish(
            &mut post,
            marked(pb::Category::Drugs, &h, pb::Tlp::Green, &[]),
        )
        .await;
        expected.push(h);
    }
    pair.af.restart().await;
    let mut office = pair.af.client(AF_OFFICE).await;
    let got = wait_for_broker_alerts(&mut office, expected.len()).await;
    assert_eq!(headlines(&got), expected);
    // The origin broker restarting re-offers from its saved cursor; the
    // peer answers duplicates and stores nothing twice.
    pair.tj.restart().await;
    publish(
        &mut post_after(&pair).await,
        marked(pb::Category::Drugs, "after", pb::Tlp::Green, &[]),
    )
    .await;
    expected.push("after".into());
    let got = wait_for_broker_alerts(&mut office, expected.len()).await;
    assert_eq!(headlines(&got), expected);
}

async fn post_after(pair: &Pair) -> Client {
    pair.tj.client(TJ_POST).await
}

#[tokio::test]
async fn a_peer_ca_never_logs_anyone_in_as_a_node() {
    let pair = pair().await;
    // A node certificate of AF's PKI, presented to TJ's broker: refused at
    // the handshake (TJ trusts AF's CA for AF's broker only).
    let af_node = pair.af.pki.node(AF_OFFICE);
    let files = liaison::tls::TlsFiles {
        ca: pair.tj.pki.ca_path(),
        ..af_node
    };
    let refused = match liaison::client::connect(&pair.tj.url(), Some(&files)).await {
        Err(_) => true,
        Ok(mut c) => c.who_am_i(pb::WhoAmIRequest {}).await.is_err(),
    };
    assert!(refused, "a node of the peer's PKI is no node here");
    // AF's broker certificate is accepted, but for the link only.
    let af_broker = liaison::tls::TlsFiles {
        ca: pair.tj.pki.ca_path(),
        ..pair.af.pki.broker_files()
    };
    let mut c = liaison::client::connect(&pair.tj.url(), Some(&af_broker))
        .await
        .expect("the handshake passes");
    let status = c
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect_err("no node calls");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("federation link only"),
        "{status:?}"
    );
    let status = publish_status(&mut c).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
}

async fn publish_status(c: &mut Client) -> tonic::Status {
    c.publish(pb::PublishRequest {
        alert: Some(alert(pb::Category::Drugs, "as a node")),
    })
    .await
    .expect_err("refused")
}

#[tokio::test]
async fn receipts_of_the_foreign_office_reach_the_originating_post() {
    let pair = pair().await;
    let mut post = pair.tj.client(TJ_POST).await;
    let mut office = pair.af.client(AF_OFFICE).await;
    let mut feed = Subscriber::open(&mut office, open("main", pb::Filter::default())).await;
    let a = marked(
        pb::Category::Drugs,
        "caravan at the ford",
        pb::Tlp::Amber,
        &["AF"],
    );
    let id = a.id.clone();
    publish(&mut post, a).await;
    let d = feed.next().await;
    assert_eq!(headline_of(&d), "caravan at the ford");
    feed.ack(&[seq_of(&d)]).await;
    office
        .acknowledge(pb::AcknowledgeRequest {
            id: id.clone(),
            note: "patrol sent".into(),
        })
        .await
        .expect("acknowledge");
    let receipts = eventually("both receipts are back at the origin", || {
        let mut post = post.clone();
        let id = id.clone();
        async move {
            let list = receipts(&mut post, &id).await?;
            if list.len() == 2 {
                Ok(list)
            } else {
                Err(format!("{list:?}"))
            }
        }
    })
    .await;
    for r in &receipts {
        assert_eq!(r.recipient.as_ref().expect("recipient").urn, AF_OFFICE);
    }
    let kinds: Vec<i32> = receipts.iter().map(|r| r.kind).collect();
    assert!(kinds.contains(&(pb::ReceiptKind::Delivered as i32)));
    assert!(kinds.contains(&(pb::ReceiptKind::Acknowledged as i32)));
    assert!(receipts.iter().any(|r| r.note == "patrol sent"));
}

const TRIANGLE: &str = r#"
[[node]]
match = "TJ"
role = "post"

[[node]]
match = "AF"
role = "liaison_office"

[[node]]
match = "UZ"
role = "liaison_office"

[[agreement]]
between = ["TJ", "AF"]
categories = ["drugs"]
max_tlp = "amber"

[[agreement]]
between = ["AF", "UZ"]
categories = ["drugs"]
max_tlp = "green"
reshare = true

# Uzbek nodes see Tajik alerts (relayed by Afghanistan) under Uzbekistan's
# own agreement with Tajikistan, as within one broker.
[[agreement]]
between = ["TJ", "UZ"]
categories = ["drugs"]
max_tlp = "green"
"#;

async fn state(
    pki: Pki,
    peers: Vec<PeerConfig>,
    origins: Vec<liaison::federation::OriginConfig>,
) -> TestBroker {
    trace();
    let policy = pki.path().join("policy.toml");
    std::fs::write(&policy, TRIANGLE).expect("policy");
    TestBroker::start_in(pki, |c| {
        c.policy_file = Some(policy);
        c.federation.peers = peers;
        c.federation.origins = origins;
        fast_link(c);
    })
    .await
}

#[tokio::test]
async fn a_triangle_reshares_green_where_allowed_keeps_amber_at_the_first_border_and_never_loops() {
    let (tj_pki, af_pki, uz_pki) = (
        Pki::national("TJ"),
        Pki::national("AF"),
        Pki::national("UZ"),
    );
    // The CA files stay where they are while the brokers own their PKIs.
    let (tj_ca, af_ca, uz_ca) = (tj_pki.ca_path(), af_pki.ca_path(), uz_pki.ca_path());
    let tj_origin = liaison::federation::OriginConfig {
        country: broker_of("TJ").country(),
        broker: broker_of("TJ"),
        ca: tj_ca.clone(),
    };
    let uz = state(
        uz_pki,
        vec![peer("af", "AF", &af_ca, None)],
        vec![tj_origin],
    )
    .await;
    let af = state(
        af_pki,
        vec![
            peer("tj", "TJ", &tj_ca, None),
            peer("uz", "UZ", &uz_ca, Some(uz.url())),
        ],
        vec![],
    )
    .await;
    let tj = state(
        tj_pki,
        vec![peer("af", "AF", &af_ca, Some(af.url()))],
        vec![],
    )
    .await;

    let mut post = tj.client(TJ_POST).await;
    let cases = [
        (
            marked(pb::Category::Drugs, "clear", pb::Tlp::Clear, &[]),
            true,
            true,
        ),
        (
            marked(pb::Category::Drugs, "green to UZ", pb::Tlp::Green, &["UZ"]),
            true,
            true,
        ),
        (
            marked(pb::Category::Drugs, "green", pb::Tlp::Green, &[]),
            true,
            false,
        ),
        (
            marked(
                pb::Category::Drugs,
                "amber to AF and UZ",
                pb::Tlp::Amber,
                &["AF", "UZ"],
            ),
            true,
            false,
        ),
        (
            marked(pb::Category::Drugs, "sentinel", pb::Tlp::Clear, &[]),
            true,
            true,
        ),
    ];
    let (mut at_af, mut at_uz) = (Vec::new(), Vec::new());
    for (a, to_af, to_uz) in cases {
        if to_af {
            at_af.push(a.headline.clone());
        }
        if to_uz {
            at_uz.push(a.headline.clone());
        }
        publish(&mut post, a).await;
    }
    let mut af_office = af.client(AF_OFFICE).await;
    let got = wait_for_broker_alerts(&mut af_office, at_af.len()).await;
    assert_eq!(headlines(&got), at_af);
    let mut uz_office = uz.client(UZ_OFFICE).await;
    let got = wait_for_broker_alerts(&mut uz_office, at_uz.len()).await;
    assert_eq!(headlines(&got), at_uz, "each once, and nothing AMBER");
    for r in &got {
        let p = r.provenance.as_ref().expect("provenance");
        assert_eq!(p.origin_broker, broker_of("TJ").to_string());
        assert_eq!(
            p.path,
            [broker_of("TJ").to_string(), broker_of("AF").to_string()]
        );
        assert_eq!(
            r.alert
                .as_ref()
                .and_then(|a| a.origin.as_ref())
                .map(|o| o.urn.as_str()),
            Some(TJ_POST)
        );
    }
    // Nothing came back to Tajikistan: it holds only its own five.
    let mut centre = tj.client(TJ_POST_2).await;
    assert_eq!(broker_alerts(&mut centre).await.len(), 5);
}

#[tokio::test]
async fn a_foreign_alert_keeps_its_proof_of_origin_in_a_posts_agent() {
    let pair = pair().await;
    let agent = TestAgent::start(&pair.af, &pair.af.url(), AF_OFFICE, |_| {}).await;
    let mut post = pair.tj.client(TJ_POST).await;
    publish(
        &mut post,
        marked(pb::Category::Drugs, "to the post", pb::Tlp::Green, &[]),
    )
    .await;
    let mut local = agent.client().await;
    let got = wait_for_broker_alerts(&mut local, 1).await;
    assert_eq!(headlines(&got), ["to the post"]);
    let p = got[0].provenance.as_ref().expect("provenance in the inbox");
    assert_eq!(p.origin_broker, broker_of("TJ").to_string());
    assert!(
        p.attestation
            .as_ref()
            .is_some_and(|a| !a.signature.is_empty())
    );
}

#[tokio::test]
async fn a_revoked_peer_broker_certificate_is_refused_like_any_other() {
    let (tj_pki, af_pki) = (Pki::national("TJ"), Pki::national("AF"));
    // Afghanistan revokes its broker's certificate and hands Tajikistan
    // the list.
    liaison::pki::revoke(af_pki.path(), liaison::pki::BROKER_NAME).expect("revoke");
    let af_crl = af_pki.path().join(liaison::pki::CA_CRL);
    let policy = write_policy(&tj_pki, POLICY);
    let af_ca = af_pki.ca_path();
    let tj = TestBroker::start_in(tj_pki, |c| {
        c.policy_file = Some(policy);
        c.federation.peers = vec![PeerConfig {
            name: "af".into(),
            broker: broker_of("AF"),
            ca: af_ca,
            crl: Some(af_crl),
            countries: vec![broker_of("AF").country()],
            url: None,
        }];
    })
    .await;
    let af_files = liaison::tls::TlsFiles {
        ca: tj.pki.ca_path(),
        ..af_pki.broker_files()
    };
    let refused = match liaison::client::endpoint(&tj.url(), Some(&af_files))
        .expect("endpoint")
        .connect()
        .await
    {
        Err(_) => true,
        Ok(channel) => pb::federation_client::FederationClient::new(channel)
            .link(tokio_stream::iter(Vec::<pb::LinkFrame>::new()))
            .await
            .is_err(),
    };
    assert!(refused, "a revoked peer broker certificate opens no link");
}

#[tokio::test]
async fn a_dialer_refuses_a_peer_whose_broker_certificate_its_list_revokes() {
    let (tj_pki, af_pki) = (Pki::national("TJ"), Pki::national("AF"));
    liaison::pki::revoke(af_pki.path(), liaison::pki::BROKER_NAME).expect("revoke");
    let af_crl = af_pki.path().join(liaison::pki::CA_CRL);
    let (tj_ca, af_ca) = (tj_pki.ca_path(), af_pki.ca_path());
    let af_policy = write_policy(&af_pki, POLICY);
    let af = TestBroker::start_in(af_pki, |c| {
        c.policy_file = Some(af_policy);
        c.federation.peers = vec![peer("tj", "TJ", &tj_ca, None)];
    })
    .await;
    let tj_policy = tj_pki.path().join("policy.toml");
    std::fs::write(
        &tj_policy,
        format!("{POLICY}\n[[node]]\nmatch = \"urn:liaison:TJ:border-guard:admin\"\nrole = \"administrator\"\n"),
    )
    .expect("policy");
    let af_url = af.url();
    let tj = TestBroker::start_in(tj_pki, |c| {
        c.policy_file = Some(tj_policy);
        c.federation.peers = vec![PeerConfig {
            crl: Some(af_crl),
            ..peer("af", "AF", &af_ca, Some(af_url))
        }];
        fast_link(c);
    })
    .await;
    let channel = liaison::client::endpoint(
        &tj.url(),
        Some(&tj.pki.node("urn:liaison:TJ:border-guard:admin")),
    )
    .expect("endpoint")
    .connect()
    .await
    .expect("connect");
    let admin = pb::admin_client::AdminClient::new(channel);
    let link = eventually("the link is refused for the revoked certificate", || {
        let mut admin = admin.clone();
        async move {
            let links = admin
                .links(pb::AdminLinksRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .links;
            match links.first() {
                Some(l) if l.state == pb::LinkState::Refused as i32 => Ok(l.clone()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(
        link.last_error.to_lowercase().contains("revoked"),
        "{link:?}"
    );
}
