//! Proof of origin signed in batches: one signature over a Merkle tree of
//! the batch's statements, and each alert's attestation proves that one
//! alert on its own — against the origin state's CA, with nothing else
//! from the batch.

use std::sync::Arc;
use std::time::SystemTime;

use liaison::alert::{Limits, Record, Seq, validate};
use liaison::federation::attest::{self, Origin, Signer, Unproven};
use liaison::identity::NodeId;
use liaison::proto as pb;
use liaison_testkit::*;

const TJ_POST: &str = "urn:liaison:TJ:border-guard:ishkashim";

fn records(n: usize) -> Vec<Record> {
    let origin: NodeId = TJ_POST.parse().expect("urn");
    (0..n)
        .map(|i| {
            let body = alert(pb::Category::Drugs, &format!("alert {i}"));
            Record {
                seq: Seq(i as u64 + 1),
                received_at: SystemTime::now(),
                alert: validate(body, &origin, &Limits::default(), SystemTime::now())
                    .expect("valid"),
                provenance: None,
            }
        })
        .collect()
}

fn tj_origins(pki: &Pki) -> Vec<Origin> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    vec![Origin::new(
        broker_of("TJ").country(),
        broker_of("TJ"),
        liaison::tls::ca_verifier(&pki.ca_path(), None, &provider).expect("verifier"),
    )]
}

fn signed(pki: &Pki, n: usize) -> Vec<pb::Attestation> {
    let signer = Signer::load(&pki.broker_files()).expect("TJ's broker key");
    let records = records(n);
    let refs: Vec<&Record> = records.iter().collect();
    signer.attest_batch(&refs).expect("signs")
}

fn headline(a: &attest::Attested) -> &str {
    a.statement
        .alert
        .as_ref()
        .map_or("", |a| a.headline.as_str())
}

#[test]
fn each_alert_of_a_batch_is_proven_on_its_own() {
    let pki = Pki::national("TJ");
    for n in [1, 2, 3, 7, 64] {
        let batch = signed(&pki, n);
        assert_eq!(batch.len(), n);
        for (i, att) in batch.iter().enumerate() {
            // A fresh verifier each time: no remembered signature helps.
            let ok = attest::verify(att, &tj_origins(&pki)).expect("verifies alone");
            assert_eq!(headline(&ok), format!("alert {i}"));
            let b = att.batch.as_ref().expect("batch");
            assert_eq!((b.size, b.index), (n as u64, i as u64));
        }
        // One signature for the whole batch.
        assert!(batch.iter().all(|a| a.signature == batch[0].signature));
    }
}

#[test]
fn a_statement_moved_changed_or_re_indexed_within_a_batch_is_refused() {
    let pki = Pki::national("TJ");
    let origins = tj_origins(&pki);
    let batch = signed(&pki, 5);
    // Verified once, so the batch signature is remembered: the refusals
    // below must come from the proofs, not from a missing cache entry.
    attest::verify(&batch[0], &origins).expect("honest");

    let mut moved = batch[1].clone();
    moved.statement = batch[2].statement.clone();
    assert_eq!(
        attest::verify(&moved, &origins).err(),
        Some(Unproven::NotInBatch)
    );

    let mut reindexed = batch[1].clone();
    reindexed.batch.as_mut().expect("batch").index = 2;
    assert_eq!(
        attest::verify(&reindexed, &origins).err(),
        Some(Unproven::NotInBatch)
    );

    for at in [
        10,
        batch[3].statement.len() / 2,
        batch[3].statement.len() - 1,
    ] {
        let mut changed = batch[3].clone();
        changed.statement[at] ^= 0x01;
        assert!(
            attest::verify(&changed, &origins).is_err(),
            "byte {at} changed"
        );
    }

    // Another root (with a proof that fits it) needs a signature of its own.
    let mut rerooted = batch[4].clone();
    let b = rerooted.batch.as_mut().expect("batch");
    b.root[0] ^= 0x01;
    assert!(attest::verify(&rerooted, &origins).is_err());

    // A batch of one claimed larger: the size is signed too.
    let single = signed(&pki, 1).remove(0);
    let mut resized = single.clone();
    resized.batch.as_mut().expect("batch").size = 2;
    assert!(attest::verify(&resized, &origins).is_err());

    let mut signature = batch[0].clone();
    let last = signature.signature.len() - 1;
    signature.signature[last] ^= 0x01;
    assert_eq!(
        attest::verify(&signature, &tj_origins(&pki)).err(),
        Some(Unproven::BadSignature)
    );
}

#[test]
fn malformed_batches_are_refused_naming_the_field() {
    let pki = Pki::national("TJ");
    let origins = tj_origins(&pki);
    let honest = signed(&pki, 3).remove(1);
    type Break = fn(&mut pb::SignedBatch);
    let cases: [(&str, Break); 5] = [
        ("size", |b| b.size = 0),
        ("size", |b| b.size = u64::MAX),
        ("index", |b| b.index = b.size),
        ("root", |b| b.root.truncate(31)),
        ("proof", |b| b.proof.push(0)),
    ];
    for (field, break_it) in cases {
        let mut att = honest.clone();
        break_it(att.batch.as_mut().expect("batch"));
        let err = attest::verify(&att, &origins).expect_err(field);
        assert!(
            err.to_string().contains(field),
            "{field}: {err} names the field"
        );
    }
}

#[test]
fn a_batch_under_another_states_ca_proves_nothing() {
    let (tj, af) = (Pki::national("TJ"), Pki::national("AF"));
    let batch = signed(&tj, 4);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let wrong = [Origin::new(
        broker_of("TJ").country(),
        broker_of("TJ"),
        liaison::tls::ca_verifier(&af.ca_path(), None, &provider).expect("verifier"),
    )];
    for att in &batch {
        assert!(matches!(
            attest::verify(att, &wrong),
            Err(Unproven::Certificate { .. })
        ));
    }
}
