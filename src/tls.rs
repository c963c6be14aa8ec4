//! Mutual TLS for the broker's listener: the rustls server configuration
//! (TLS 1.3 only, client certificate required, ring provider), and the
//! accept loop that hands authenticated connections to tonic.
//!
//! We terminate TLS ourselves instead of using tonic's built-in TLS so that
//! the handshake runs off the accept loop with a deadline, every refusal is
//! logged once with its reason, and the caller's identity is parsed once per
//! connection and travels with it as [`Peer`].

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{debug, info, warn};

use crate::identity::{IdentityError, NodeId};

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
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
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
fn load_crls(
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

/// The broker's rustls configuration: TLS 1.3 only, a client certificate
/// signed by `files.ca` and not revoked by `ca.crl` beside it (when there is
/// one) required, HTTP/2 by ALPN.
///
/// # Errors
/// When a file is missing or malformed, or the key does not match.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&files.ca)? {
        roots.add(ca).map_err(|e| TlsError::Invalid {
            path: files.ca.clone(),
            reason: e.to_string(),
        })?;
    }
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let crl = crl_path(files);
    if crl.exists() {
        // Only node certificates are revoked by the list; a certificate of
        // another CA in `ca.crt` (during a rotation) has no status there.
        verifier = verifier
            .with_crls(load_crls(&crl)?)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    let verifier = Arc::new(Recording(
        verifier
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?,
    ));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| TlsError::Config(format!("{}: {e}", files.key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Who is on the other end of a connection, established once at the
/// handshake and attached to every request on it (tonic request extensions).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The identity from the client certificate, or why there is none.
    pub identity: Result<NodeId, IdentityError>,
    pub remote: SocketAddr,
}

/// One open connection, for the admin view.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub node: Option<NodeId>,
    pub remote: SocketAddr,
    pub since: std::time::SystemTime,
    /// The serial number of the client certificate.
    pub serial: Vec<u8>,
}

#[derive(Default)]
struct Open {
    conns: std::collections::HashMap<u64, (ConnInfo, Arc<Closer>)>,
    /// The serials revoked by the list in force: a connection whose
    /// handshake passed under an older list is closed as it registers.
    revoked: std::collections::HashSet<Vec<u8>>,
}

/// The open connections of a listener, each with a token that closes it. A
/// std mutex: held to insert or remove one entry, or to copy the list.
#[derive(Clone, Default)]
pub struct Connections {
    open: Arc<std::sync::Mutex<Open>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl Connections {
    fn register(&self, info: ConnInfo, close: Arc<Closer>) -> ConnGuard {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut open = self.lock();
        if open.revoked.contains(&info.serial) {
            warn!(remote = %info.remote, "certificate revoked during its handshake: connection closed");
            close.close();
        }
        open.conns.insert(id, (info, close));
        drop(open);
        metrics::gauge!(crate::metrics::CONNECTED_NODES).increment(1.0);
        ConnGuard {
            id,
            conns: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open connections, oldest first.
    pub fn list(&self) -> Vec<ConnInfo> {
        let mut all: Vec<ConnInfo> = self.lock().conns.values().map(|(c, _)| c.clone()).collect();
        all.sort_by_key(|c| c.since);
        all
    }

    /// Puts `revoked` in force: closes every open connection whose
    /// certificate serial it holds (and any that registers later); returns
    /// the connections closed now.
    pub fn close_revoked(&self, revoked: std::collections::HashSet<Vec<u8>>) -> Vec<ConnInfo> {
        let mut open = self.lock();
        let mut closed = Vec::new();
        for (info, close) in open.conns.values() {
            if revoked.contains(&info.serial) && !close.is_closed() {
                close.close();
                closed.push(info.clone());
            }
        }
        open.revoked = revoked;
        closed
    }
}

/// Removes its connection from the registry when the connection closes.
struct ConnGuard {
    id: u64,
    conns: Connections,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.conns.lock().conns.remove(&self.id);
        metrics::gauge!(crate::metrics::CONNECTED_NODES).decrement(1.0);
    }
}

/// What the accept loop reports to (refused handshakes and open
/// connections) and how long it waits for a new connection.
#[derive(Clone, Default)]
pub struct Hooks {
    pub on_refused: Option<RefusalHook>,
    pub connections: Option<Connections>,
    pub timeouts: Timeouts,
}

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
fn refusal_reason(e: &io::Error) -> &'static str {
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
    static PRESENTED: std::cell::RefCell<Option<Presented>>;
}

/// What a client certificate says about itself: for the log line and the
/// audit record of a refused handshake (which otherwise name only an
/// address).
#[derive(Debug, Clone, Default)]
struct Presented {
    node: Option<String>,
    serial: String,
}

impl Presented {
    fn of(der: &[u8]) -> Presented {
        Presented {
            node: NodeId::from_certificate(der).ok().map(|n| n.to_string()),
            serial: x509_parser::parse_x509_certificate(der)
                .map(|(_, c)| crate::pki::hex(c.raw_serial()))
                .unwrap_or_default(),
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
struct Recording(Arc<dyn rustls::server::danger::ClientCertVerifier>);

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

/// A connection carrying its [`Peer`]: a mutual-TLS stream, or (for an
/// agent's loopback listener) a plain TCP stream whose peer is the agent's
/// own identity.
pub struct PeerStream<S = tokio_rustls::server::TlsStream<TcpStream>> {
    inner: S,
    /// Bytes already read from `inner` (the HTTP/2 preface, read to check
    /// that the client speaks), handed out again before anything else.
    replay: &'static [u8],
    peer: Peer,
    /// Keeps the connection listed while it is open.
    _registered: Option<ConnGuard>,
    /// Set when the connection must end (its certificate was revoked).
    closer: Option<Arc<Closer>>,
}

/// Ends a connection from outside: its reads and writes fail from then on,
/// and the task waiting on a read is woken, so hyper drops the connection
/// with its streams. Two atomics per read that would block; nothing on the
/// way of data.
#[derive(Default)]
struct Closer {
    closed: std::sync::atomic::AtomicBool,
    reader: futures::task::AtomicWaker,
}

impl Closer {
    fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.reader.wake();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }
}

fn revoked_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the peer's certificate was revoked",
    )
}

impl<S> PeerStream<S> {
    fn check_closed(&self) -> io::Result<()> {
        match &self.closer {
            Some(c) if c.is_closed() => Err(revoked_error()),
            _ => Ok(()),
        }
    }
}

impl<S> Connected for PeerStream<S> {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PeerStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_closed()?;
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay[..n]);
            self.replay = &self.replay[n..];
            return Poll::Ready(Ok(()));
        }
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if read.is_pending()
            && let Some(c) = &self.closer
        {
            c.reader.register(cx.waker());
            if c.is_closed() {
                return Poll::Ready(Err(revoked_error()));
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PeerStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_closed()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_closed()?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` and completes TLS handshakes, each
/// in its own task with a deadline, until `shutdown` is cancelled. The
/// returned stream yields the connections that passed the handshake; it is
/// meant for tonic's `serve_with_incoming_shutdown`.
/// Called with the remote address and the reason when a handshake is
/// refused (the broker records it in the audit trail).
pub type RefusalHook = Arc<dyn Fn(SocketAddr, String) + Send + Sync>;

///
/// Each handshake uses the configuration `config` holds at that moment, so a
/// reloaded revocation list applies to the next connection.
pub fn incoming(
    listener: TcpListener,
    config: watch::Receiver<Arc<ServerConfig>>,
    shutdown: CancellationToken,
    hooks: Hooks,
) -> ReceiverStream<Result<PeerStream, io::Error>> {
    // The accept loop holds the sender; tonic holds the receiver. Bounded so
    // that a flood of handshakes cannot queue without limit.
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config.borrow().clone());
            let tx = tx.clone();
            let hooks = hooks.clone();
            tokio::spawn(async move {
                if let Some(stream) = handshake(acceptor, tcp, remote, hooks).await {
                    let _ = tx.send(Ok(stream)).await;
                }
            });
        }
        debug!("accept loop stopped");
    });
    ReceiverStream::new(rx)
}

/// Accepts plain TCP connections on a loopback `listener` and attributes
/// every one to `identity` (an agent serving the software of its own post).
pub fn incoming_plain(
    listener: TcpListener,
    identity: NodeId,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<PeerStream<TcpStream>, io::Error>> {
    // The accept loop holds the sender; tonic holds the receiver.
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, remote)) => {
                    let _ = tcp.set_nodelay(true);
                    let peer = Peer {
                        identity: Ok(identity.clone()),
                        remote,
                    };
                    let stream = PeerStream {
                        inner: tcp,
                        replay: &[],
                        peer,
                        _registered: None,
                        closer: None,
                    };
                    if tx.send(Ok(stream)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    hooks: Hooks,
) -> Option<PeerStream> {
    let accept = async {
        let accepted = tokio::time::timeout(hooks.timeouts.handshake, acceptor.accept(tcp)).await;
        let presented = PRESENTED.with(|p| p.borrow_mut().take());
        (accepted, presented)
    };
    let (accepted, presented) = PRESENTED.scope(std::cell::RefCell::new(None), accept).await;
    let mut tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let whose = presented.map_or_else(|| "no certificate".to_owned(), |p| p.to_string());
            warn!(%remote, reason = %e, presented = %whose, "TLS handshake refused");
            let reason = refusal_reason(&e);
            metrics::counter!(crate::metrics::CERT_REFUSALS, "reason" => reason).increment(1);
            if let Some(hook) = hooks.on_refused {
                hook(remote, format!("TLS handshake refused ({whose}): {e}"));
            }
            return None;
        }
        Err(_) => {
            info!(%remote, "TLS handshake timed out");
            return None;
        }
    };
    if !read_preface(&mut tls, remote, hooks.timeouts.preface).await {
        return None;
    }
    let (identity, serial) = match tls.get_ref().1.peer_certificates() {
        Some([leaf, ..]) => (
            NodeId::from_certificate(leaf),
            x509_parser::parse_x509_certificate(leaf)
                .map(|(_, c)| c.raw_serial().to_vec())
                .unwrap_or_default(),
        ),
        _ => (Err(IdentityError::NoCertificate), Vec::new()),
    };
    match &identity {
        Ok(node) => debug!(%remote, %node, "node connected"),
        Err(e) => {
            warn!(%remote, reason = %e, "certificate carries no usable identity");
            metrics::counter!(crate::metrics::CERT_REFUSALS, "reason" => "no_identity")
                .increment(1);
        }
    }
    let closer = Arc::new(Closer::default());
    let registered = hooks.connections.map(|c| {
        c.register(
            ConnInfo {
                node: identity.as_ref().ok().cloned(),
                remote,
                since: std::time::SystemTime::now(),
                serial,
            },
            closer.clone(),
        )
    });
    Some(PeerStream {
        inner: tls,
        replay: H2_PREFACE,
        peer: Peer { identity, remote },
        _registered: registered,
        closer: Some(closer),
    })
}

/// Waits (bounded) for the client's HTTP/2 connection preface; false, with
/// the reason logged, when it does not come or is not one.
async fn read_preface<S: AsyncRead + Unpin>(
    tls: &mut S,
    remote: SocketAddr,
    wait: Duration,
) -> bool {
    use tokio::io::AsyncReadExt;
    let mut preface = [0u8; H2_PREFACE.len()];
    match tokio::time::timeout(wait, tls.read_exact(&mut preface)).await {
        Ok(Ok(_)) if preface == *H2_PREFACE => true,
        Ok(Ok(_)) => {
            info!(%remote, "the client does not speak HTTP/2 (no connection preface); closed");
            metrics::counter!(crate::metrics::IDLE_CONNECTIONS_CLOSED, "reason" => "not_http2")
                .increment(1);
            false
        }
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "connection closed before its first request");
            false
        }
        Err(_) => {
            info!(%remote, ?wait, "no HTTP/2 preface after the TLS handshake; closed");
            metrics::counter!(crate::metrics::IDLE_CONNECTIONS_CLOSED, "reason" => "no_preface")
                .increment(1);
            false
        }
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
