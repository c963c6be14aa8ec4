//! What a refused handshake was refused for, and who tried: the rustls
//! error behind an I/O error, its metric label, and a verifier that notes
//! the presented certificate before the real one decides.

use std::io;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

use crate::identity::NodeId;

/// The rustls error somewhere in `e`'s source chain (an `io::Error` is
/// looked into as well): what a refused handshake was refused for.
pub fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = err
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| rustls_error(inner))
        {
            return Some(inner);
        }
        next = err.source();
    }
    None
}

/// The label of a refused handshake in the certificate-refusal metric.
pub(super) fn refusal_reason(e: &io::Error) -> &'static str {
    use rustls::CertificateError as C;
    match rustls_error(e) {
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            C::UnknownIssuer | C::BadSignature => "unknown_ca",
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => "expired",
            C::Revoked => "revoked",
            _ => "other",
        },
        _ => "other",
    }
}

tokio::task_local! {
    /// The client certificate presented in the handshake this task runs;
    /// set by [`Recording`] as it verifies it.
    pub(super) static PRESENTED: std::cell::RefCell<Option<Presented>>;
}

/// What a client certificate says about itself: for the log line and the
/// audit record of a refused handshake (which otherwise name only an
/// address).
#[derive(Debug, Clone, Default)]
pub(super) struct Presented {
    node: Option<String>,
    serial: String,
    /// The federation peer whose CA accepted the certificate (not the
    /// broker's own CA).
    pub(super) link: Option<Arc<str>>,
}

impl Presented {
    fn of(der: &[u8]) -> Presented {
        Presented {
            node: NodeId::from_certificate(der).ok().map(|n| n.to_string()),
            serial: x509_parser::parse_x509_certificate(der)
                .map(|(_, c)| crate::pki::hex(c.raw_serial()))
                .unwrap_or_default(),
            link: None,
        }
    }
}

impl std::fmt::Display for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "certificate {} of {}",
            self.serial,
            self.node.as_deref().unwrap_or("(no liaison identity)")
        )
    }
}

/// The broker's client-certificate verifier, noting in [`PRESENTED`] what
/// each handshake presented before the real verifier decides.
#[derive(Debug)]
pub(super) struct Recording(pub(super) Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for Recording {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let _ = PRESENTED.try_with(|p| *p.borrow_mut() = Some(Presented::of(end_entity)));
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// One federation peer's CA, trusted for one certificate identity only:
/// the peer's broker.
#[derive(Debug)]
pub(super) struct PeerCa {
    pub(super) name: Arc<str>,
    pub(super) broker: NodeId,
    pub(super) verifier: Arc<dyn ClientCertVerifier>,
}

/// The broker's own CA for nodes, and each federation peer's CA for that
/// peer's broker certificate only: a certificate of a peer's CA that names
/// anyone else (a node, another broker) is refused at the handshake, so a
/// peer CA can never log anyone in as a node.
#[derive(Debug)]
pub(super) struct Federated {
    pub(super) local: Arc<dyn ClientCertVerifier>,
    pub(super) peers: Vec<PeerCa>,
    /// Every CA's subject, offered to clients as hints.
    pub(super) hints: Vec<rustls::DistinguishedName>,
}

impl ClientCertVerifier for Federated {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let local = match self
            .local
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Ok(node) = NodeId::from_certificate(end_entity) else {
            return Err(local);
        };
        let Some(peer) = self.peers.iter().find(|p| p.broker == node) else {
            return Err(local);
        };
        // The peer's own CA knows this certificate: its refusal (expired,
        // revoked, forged) is the one that explains.
        let verified = peer
            .verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        let _ = PRESENTED.try_with(|p| {
            if let Some(p) = p.borrow_mut().as_mut() {
                p.link = Some(peer.name.clone());
            }
        });
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.local.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.local.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.local.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_labelled_by_the_rustls_error_not_its_wording() {
        use rustls::CertificateError as C;
        let io = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            refusal_reason(&io(rustls::Error::NoCertificatesPresented)),
            "no_certificate"
        );
        assert_eq!(
            refusal_reason(&io(rustls::Error::InvalidCertificate(C::UnknownIssuer))),
            "unknown_ca"
        );
        assert_eq!(
            refusal_reason(&io(rustls::Error::InvalidCertificate(C::Expired))),
            "expired"
        );
        assert_eq!(
            refusal_reason(&io(rustls::Error::InvalidCertificate(C::Revoked))),
            "revoked"
        );
        assert_eq!(
            refusal_reason(&io::Error::other("the peer's certificate was revoked")),
            "other"
        );
    }
}
