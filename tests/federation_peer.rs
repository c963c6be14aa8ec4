//! A peer broker played by hand over the link protocol
//! ([`HandPlayedPeer`]), so that it can do what no honest broker does:
//! forged, changed and garbage offers are refused while the link goes on;
//! a peer whose old link went silent dials again and takes the link over.

use liaison::federation::attest;
use liaison::proto as pb;
use liaison_testkit::federation::{HandPlayedPeer, attested, waiting_for};
use liaison_testkit::*;
use pb::link_frame::Frame;

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

/// TJ's broker waiting for AF's, and AF's broker files for the test to
/// play it (trusting TJ's CA).
async fn tj_and_af() -> (TestBroker, Pki, liaison::tls::TlsFiles) {
    let (tj_pki, af_pki) = (Pki::national("TJ"), Pki::national("AF"));
    let af_ca = af_pki.ca_path();
    let tj = waiting_for(tj_pki, POLICY, "AF", &af_ca).await;
    let files = liaison::tls::TlsFiles {
        ca: tj.pki.ca_path(),
        ..af_pki.broker_files()
    };
    (tj, af_pki, files)
}

fn offer(seq: u64, attestation: Option<pb::Attestation>) -> Frame {
    Frame::Offer(pb::Offer {
        seq,
        attestation,
        path: vec![broker_of("AF").to_string()],
    })
}

#[tokio::test]
async fn forged_changed_and_garbage_offers_are_refused_and_the_link_goes_on() {
    let (tj, af_pki, files) = tj_and_af().await;
    let signer = attest::Signer::load(&af_pki.broker_files()).expect("AF's broker key");
    let mut af = HandPlayedPeer::dial(&tj, &files, &broker_of("AF").to_string()).await;
    // 1. An origin of a third country, signed with AF's own key.
    let forged = attested(&signer, UZ_OFFICE, alert(pb::Category::Drugs, "forged"));
    af.send(offer(1, Some(forged))).await;
    // 2. A changed byte in an honest statement.
    let mut changed = attested(&signer, AF_OFFICE, alert(pb::Category::Drugs, "changed"));
    let at = changed.statement.len() - 3;
    changed.statement[at] ^= 0x20;
    af.send(offer(2, Some(changed))).await;
    // 3. Garbage: no attestation, then one that does not decode.
    af.send(offer(3, None)).await;
    let garbage = pb::Attestation {
        statement: vec![0xff; 32],
        ..Default::default()
    };
    af.send(offer(4, Some(garbage))).await;
    // 4. An honest offer after all that.
    let honest = attested(&signer, AF_OFFICE, alert(pb::Category::Drugs, "honest"));
    af.send(offer(5, Some(honest))).await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(af.answer().await);
    }
    let kinds: Vec<i32> = answers.iter().map(|a| a.kind).collect();
    let refused = pb::AnswerKind::Refused as i32;
    assert_eq!(
        kinds,
        [
            refused,
            refused,
            refused,
            refused,
            pb::AnswerKind::Stored as i32
        ],
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().map(|a| a.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(answers[0].reason.contains("UZ"), "{}", answers[0].reason);
    assert!(
        answers[1].reason.contains("attestation"),
        "{}",
        answers[1].reason
    );
    assert!(
        answers[2].reason.contains("offer.attestation"),
        "{}",
        answers[2].reason
    );
    let mut post = tj.client(TJ_POST).await;
    let got = wait_for_broker_alerts(&mut post, 1).await;
    assert_eq!(headlines(&got), ["honest"]);
    assert_eq!(
        got[0]
            .alert
            .as_ref()
            .and_then(|a| a.origin.as_ref())
            .map(|o| o.urn.as_str()),
        Some(AF_OFFICE)
    );
}

#[tokio::test]
async fn a_peer_that_dials_again_takes_over_its_silent_link() {
    let (tj, af_pki, files) = tj_and_af().await;
    let signer = attest::Signer::load(&af_pki.broker_files()).expect("AF's broker key");
    let af = broker_of("AF").to_string();
    // The first link: up, then silent — AF's side is gone (a cable cut
    // without a word), while TJ's side still holds the link.
    let mut first = HandPlayedPeer::dial(&tj, &files, &af).await;
    assert!(matches!(first.next().await, Some(Frame::Hello(_))));
    // AF dials again: TJ ends the old link and takes the new one, instead
    // of refusing it until a keepalive gives up on the old one.
    let mut second = HandPlayedPeer::dial(&tj, &files, &af).await;
    loop {
        match first.next().await {
            None => break,
            Some(Frame::Heartbeat(_)) => {}
            Some(other) => panic!("the replaced link carried {other:?}"),
        }
    }
    assert!(matches!(second.next().await, Some(Frame::Hello(_))));
    let honest = attested(&signer, AF_OFFICE, alert(pb::Category::Drugs, "after"));
    second.send(offer(1, Some(honest))).await;
    assert_eq!(second.answer().await.kind, pb::AnswerKind::Stored as i32);
    let mut post = tj.client(TJ_POST).await;
    let got = wait_for_broker_alerts(&mut post, 1).await;
    assert_eq!(headlines(&got), ["after"]);
}
