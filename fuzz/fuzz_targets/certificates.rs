//! Certificates and revocation lists as the broker reads them: a node's
//! identity from a certificate, a PEM CRL, and a client verifier built from
//! arbitrary CA and CRL PEM.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use liaison::identity::NodeId;

fuzz_target!(|data: &[u8]| {
    let _ = NodeId::from_certificate(data);
    let _ = liaison::pki::parse_crl(data);
    let (ca, crl) = data.split_at(data.len() / 2);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca[..]).flatten() {
        let _ = NodeId::from_certificate(&cert);
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return;
    }
    let crls: Vec<_> = rustls_pemfile::crls(&mut &crl[..]).flatten().collect();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let _ = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls(crls)
        .build();
});
