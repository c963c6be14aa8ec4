//! The accept loops: TCP accepted, the TLS handshake run in its own task
//! with a deadline, the HTTP/2 preface awaited, the peer's identity parsed
//! once, and the connection handed to tonic.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::AsyncRead;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::connections::{ConnInfo, Peer};
use super::stream::{Closer, PeerStream};
use super::verify::{PRESENTED, refusal_reason};
use super::{H2_PREFACE, Hooks};
use crate::identity::{IdentityError, NodeId};

/// Accepts TCP connections on `listener` and completes TLS handshakes, each
/// in its own task with a deadline, until `shutdown` is cancelled. The
/// returned stream yields the connections that passed the handshake; it is
/// meant for tonic's `serve_with_incoming_shutdown`.
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
                        link: None,
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
    let link = presented.and_then(|p| p.link);
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
        Ok(node) if link.is_some() => {
            info!(%remote, %node, peer = link.as_deref(), "peer broker connected")
        }
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
        peer: Peer {
            identity,
            remote,
            link,
        },
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
