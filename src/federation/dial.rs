//! The side of a link that dials: connects to the peer's URL with this
//! broker's certificate, trusting the peer state's CA only and only for a
//! server certificate that carries the peer broker's identity; runs a
//! [`session`](super::session) on the link; and reconnects with the
//! agent's backoff (exponential, jittered, the maximum after a refused
//! certificate) whenever it ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::StreamExt;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Federation, FederationError, PeerLink, session};
use crate::agent::{Backoff, Problem};
use crate::identity::NodeId;
use crate::proto::federation_client::FederationClient;
use crate::tls;

/// Largest link frame accepted (an alert of at most a few hundred KiB, its
/// attestation and certificates).
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Dials `peer` until `shutdown`, one session at a time.
pub async fn run(fed: Federation, peer: Arc<PeerLink>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(&fed.inner.link);
    loop {
        let result = {
            // Wait while the peer holds a link it dialed itself.
            let _session = tokio::select! {
                () = shutdown.cancelled() => return,
                s = peer.session.lock() => s,
            };
            once(&fed, &peer, shutdown.clone()).await
        };
        if shutdown.is_cancelled() {
            return;
        }
        let problem = match result {
            Ok(()) => Problem::Down("the peer closed the link".into()),
            Err(p) => p,
        };
        if peer
            .link
            .status()
            .last_contact
            .is_some_and(|t| t.elapsed().unwrap_or_default() < fed.inner.link.ack_timeout)
        {
            backoff.reset();
        }
        peer.link.failed(&problem);
        let delay = backoff.delay(&problem);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection and session.
async fn once(
    fed: &Federation,
    peer: &Arc<PeerLink>,
    shutdown: CancellationToken,
) -> Result<(), Problem> {
    let url = peer.config.url.as_deref().unwrap_or_default();
    let connector = connector(fed, peer).map_err(|e| Problem::Local(e.to_string()))?;
    // tonic sees plain HTTP/2: the connector does the TLS.
    let plain = url.replacen("https://", "http://", 1);
    let channel = tonic::transport::Endpoint::from_shared(plain)
        .map_err(|e| Problem::Local(format!("peer {}: url `{url}`: {e}", peer.config.name)))?
        .connect_timeout(fed.inner.link.ack_timeout)
        .http2_keep_alive_interval(fed.inner.link.keepalive_interval)
        .keep_alive_timeout(fed.inner.link.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect_with_connector(connector)
        .await
        .map_err(|e| Problem::of(&tonic::Status::from_error(Box::new(e))))?;
    let mut client = FederationClient::new(channel)
        .max_decoding_message_size(MAX_FRAME_BYTES)
        .max_encoding_message_size(MAX_FRAME_BYTES);
    let (tx, rx) = tokio::sync::mpsc::channel(fed.inner.link.window.max(16) + 16);
    let inbound = crate::agent::link::open(
        &fed.inner.link,
        client.link(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await?;
    info!(peer = %peer.config.name, %url, "federation link dialed");
    session::run(fed, peer, inbound.boxed(), tx, shutdown).await
}

/// A TLS connector for `peer`: this broker's certificate, the peer's CA,
/// the peer broker's identity required of the server.
fn connector(fed: &Federation, peer: &PeerLink) -> Result<PeerConnector, FederationError> {
    let url = peer.config.url.as_deref().unwrap_or_default();
    let bad = |reason: String| FederationError::Peer {
        peer: peer.config.name.clone(),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|e| bad(format!("url `{url}`: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| bad(format!("url `{url}` names no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in tls::load_certs(&peer.config.ca)? {
        roots
            .add(ca)
            .map_err(|e| bad(format!("{}: {e}", peer.config.ca.display())))?;
    }
    let mut webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    );
    if let Some(crl) = &peer.config.crl {
        // The peer's revocation list applies to its broker's certificate
        // whichever side dials.
        webpki = webpki
            .with_crls(tls::load_crls(crl)?)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    let webpki = webpki.build().map_err(|e| bad(e.to_string()))?;
    let verifier = Arc::new(PeerServer {
        inner: webpki,
        broker: peer.config.broker.clone(),
    });
    let files = &fed.inner.tls;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(tls::load_certs(&files.cert)?, tls::load_key(&files.key)?)
        .map_err(|e| bad(format!("{}: {e}", files.key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name =
        ServerName::try_from(host.clone()).map_err(|e| bad(format!("host `{host}`: {e}")))?;
    Ok(PeerConnector {
        tls: TlsConnector::from(Arc::new(config)),
        name,
        addr: format!("{host}:{port}"),
    })
}

/// The peer's server certificate: valid under its CA for the host dialed,
/// and carrying the peer broker's identity.
#[derive(Debug)]
struct PeerServer {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    broker: NodeId,
}

impl ServerCertVerifier for PeerServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        match NodeId::from_certificate(end_entity) {
            Ok(node) if node == self.broker => Ok(verified),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Connects TCP, then TLS, for tonic.
#[derive(Clone)]
struct PeerConnector {
    tls: TlsConnector,
    name: ServerName<'static>,
    addr: String,
}

impl tower_service::Service<http::Uri> for PeerConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.addr).await?;
            tcp.set_nodelay(true)?;
            let tls = this.tls.connect(this.name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
