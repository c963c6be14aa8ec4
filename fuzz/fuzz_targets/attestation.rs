//! Proof of origin (federation): an arbitrary attestation is verified
//! against a national CA without panicking, and an honest attestation (the
//! middle one of a signed batch of three) with any byte of its statement,
//! signature, batch root or inclusion proof changed never verifies.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use liaison::federation::attest::{self, Origin, Signer};
use liaison::identity::{CountryCode, NodeId};
use liaison::proto as pb;
use prost::Message;

struct Fixture {
    origins: Vec<Origin>,
    honest: pb::Attestation,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tmp");
        let tj = CountryCode::parse("TJ").expect("cc");
        liaison::pki::init_for(dir.path(), &[], Some(tj), false).expect("pki");
        let files = liaison::tls::TlsFiles::in_dir(dir.path(), liaison::pki::BROKER_NAME);
        let signer = Signer::load(&files).expect("signer");
        let origin: NodeId = "urn:liaison:TJ:border-guard:ishkashim".parse().expect("urn");
        let body = pb::Alert {
            id: "0192b8a0-7d3c-7cc1-9a0e-3f1c2b4d5e6f".into(),
            sent: Some(liaison::alert::timestamp(std::time::SystemTime::now())),
            status: 1,
            msg_type: 1,
            category: 1,
            urgency: 1,
            severity: 1,
            certainty: 1,
            headline: "fuzz".into(),
            marking: Some(pb::Marking {
                tlp: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let alert = liaison::alert::validate(
            body,
            &origin,
            &liaison::alert::Limits::default(),
            std::time::SystemTime::now(),
        )
        .expect("valid");
        let records: Vec<liaison::alert::Record> = (1..=3)
            .map(|seq| liaison::alert::Record {
                seq: liaison::alert::Seq(seq),
                received_at: std::time::SystemTime::now(),
                alert: alert.clone(),
                provenance: None,
            })
            .collect();
        let refs: Vec<&liaison::alert::Record> = records.iter().collect();
        let honest = signer.attest_batch(&refs).expect("attest").remove(1);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            liaison::tls::ca_verifier(&dir.path().join("ca.crt"), None, &provider).expect("ca");
        let origins = vec![Origin::new(tj, liaison::pki::broker_identity(tj), verifier)];
        assert!(attest::verify(&honest, &origins).is_ok());
        Fixture {
            origins,
            honest,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    if let Ok(att) = pb::Attestation::decode(data) {
        let _ = attest::verify(&att, &f.origins);
    }
    // The data as an XOR mask over the honest statement, signature, batch
    // root and inclusion proof, in that order.
    let mut changed = f.honest.clone();
    let mut any = false;
    let mut mask = data.iter();
    let batch = changed.batch.as_mut().expect("a batch");
    for field in [
        &mut changed.statement,
        &mut changed.signature,
        &mut batch.root,
        &mut batch.proof,
    ] {
        for (byte, m) in field.iter_mut().zip(&mut mask) {
            *byte ^= m;
            any |= *m != 0;
        }
    }
    if any {
        assert!(
            attest::verify(&changed, &f.origins).is_err(),
            "a changed attestation verified"
        );
    }
});
