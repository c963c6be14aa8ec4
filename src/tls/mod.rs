//! Mutual TLS for the broker's listener: the rustls server configuration
//! (TLS 1.3 only, client certificate required, ring provider), and the
//! accept loop that hands authenticated connections to tonic.
//!
//! We terminate TLS ourselves instead of using tonic's built-in TLS so that
//! the handshake runs off the accept loop with a deadline, every refusal is
//! logged once with its reason, and the caller's identity is parsed once per
//! connection and travels with it as [`Peer`].

//!
//! Submodules: [`verify`] (the client-certificate verifier that notes what
//! was presented, and the reason of a refusal), [`accept`] (the accept
//! loops and the handshake), [`stream`] (the connection handed to tonic,
//! which a revocation can close), [`connections`] (the registry of open
//! connections).

mod accept;
mod connections;
mod stream;
mod verify;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{RootCertStore, ServerConfig};

pub use accept::{incoming, incoming_plain};
pub use connections::{ConnInfo, Connections, Peer};
pub use stream::PeerStream;
use verify::Recording;
pub use verify::rustls_error;

use crate::identity::NodeId;

/// How long a new connection may take to become usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To complete the TLS handshake.
    pub handshake: Duration,
    /// After the handshake, to send the HTTP/2 connection preface (every
    /// gRPC client sends it at once): a client that completes TLS and then
    /// says nothing holds a connection slot for free.
    pub preface: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            preface: Duration::from_secs(10),
        }
    }
}

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} holds no PEM {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

/// Paths of the PEM files one side of a mutual-TLS connection needs.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signs the other side's certificate.
    pub ca: PathBuf,
    /// This side's certificate (chain).
    pub cert: PathBuf,
    /// This side's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The `--certs D --name N` shorthand: `D/ca.crt`, `D/N.crt`, `D/N.key`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            ca: dir.join(crate::pki::CA_CERT),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads every certificate of a PEM file.
///
/// # Errors
/// When the file is unreadable, malformed or holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Empty {
            path: path.to_owned(),
            what: "private key",
        })
}

/// The revocation list that goes with a CA file: `ca.crl` beside it.
pub fn crl_path(files: &TlsFiles) -> PathBuf {
    files.ca.with_file_name(crate::pki::CA_CRL)
}

/// Reads the CRLs of a PEM file.
pub(crate) fn load_crls(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>, TlsError> {
    let pem = read(path)?;
    let crls = rustls_pemfile::crls(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if crls.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what: "certificate revocation list",
        });
    }
    Ok(crls)
}

/// A federation peer's CA, trusted for the peer broker's certificate only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTrust {
    /// The peer's name in the configuration.
    pub name: String,
    /// The identity the peer broker's certificate carries.
    pub broker: NodeId,
    /// The peer state's CA certificate (PEM).
    pub ca: PathBuf,
    /// The peer state's revocation list (PEM), if it gave one.
    pub crl: Option<PathBuf>,
}

/// A verifier of client certificates issued by the CAs in `ca` and not
/// revoked by the list at `crl`.
fn client_verifier(
    ca: &Path,
    crl: Option<&Path>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<(Arc<dyn ClientCertVerifier>, Vec<rustls::DistinguishedName>), TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            path: ca.to_owned(),
            reason: e.to_string(),
        })?;
    }
    let hints = roots.subjects();
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl) = crl {
        // Only leaf certificates are revoked by the list; a certificate of
        // another CA in the file (during a rotation) has no status there.
        verifier = verifier
            .with_crls(load_crls(crl)?)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
    Ok((verifier, hints))
}

/// A verifier of certificates issued by the CAs in `ca` (and not revoked
/// by the list at `crl`): what federation checks an origin broker's
/// signing certificate with.
///
/// # Errors
/// When a file is missing or malformed.
pub fn ca_verifier(
    ca: &Path,
    crl: Option<&Path>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    Ok(client_verifier(ca, crl, provider)?.0)
}

/// The broker's rustls configuration: TLS 1.3 only, a client certificate
/// required — signed by `files.ca` and not revoked by `ca.crl` beside it
/// (when there is one), or a federation peer's broker certificate signed by
/// that peer's CA — and HTTP/2 by ALPN.
///
/// # Errors
/// When a file is missing or malformed, or the key does not match.
pub fn server_config(files: &TlsFiles, peers: &[PeerTrust]) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let crl = crl_path(files);
    let (local, mut hints) =
        client_verifier(&files.ca, crl.exists().then_some(crl.as_path()), &provider)?;
    let mut peer_cas = Vec::new();
    for peer in peers {
        let (verifier, subjects) = client_verifier(&peer.ca, peer.crl.as_deref(), &provider)?;
        hints.extend(subjects);
        peer_cas.push(verify::PeerCa {
            name: peer.name.as_str().into(),
            broker: peer.broker.clone(),
            verifier,
        });
    }
    let verifier: Arc<dyn ClientCertVerifier> = if peer_cas.is_empty() {
        local
    } else {
        Arc::new(verify::Federated {
            local,
            peers: peer_cas,
            hints,
        })
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(Recording(verifier)))
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| TlsError::Config(format!("{}: {e}", files.key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What the accept loop reports to (refused handshakes and open
/// connections) and how long it waits for a new connection.
#[derive(Clone, Default)]
pub struct Hooks {
    pub on_refused: Option<RefusalHook>,
    pub connections: Option<Connections>,
    pub timeouts: Timeouts,
}

/// Called with the remote address and the reason when a handshake is
/// refused (the broker records it in the audit trail).
pub type RefusalHook = Arc<dyn Fn(SocketAddr, String) + Send + Sync>;
