//! The connection tonic serves: a stream that carries its [`Peer`], hands
//! back the preface read to check it, and fails once it is closed from
//! outside.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::Connected;

use super::connections::{ConnGuard, Peer};

/// A connection carrying its [`Peer`]: a mutual-TLS stream, or (for an
/// agent's loopback listener) a plain TCP stream whose peer is the agent's
/// own identity.
pub struct PeerStream<S = tokio_rustls::server::TlsStream<TcpStream>> {
    pub(super) inner: S,
    /// Bytes already read from `inner` (the HTTP/2 preface, read to check
    /// that the client speaks), handed out again before anything else.
    pub(super) replay: &'static [u8],
    pub(super) peer: Peer,
    /// Keeps the connection listed while it is open.
    pub(super) _registered: Option<ConnGuard>,
    /// Set when the connection must end (its certificate was revoked).
    pub(super) closer: Option<Arc<Closer>>,
}

/// Ends a connection from outside: its reads and writes fail from then on,
/// and the task waiting on a read is woken, so hyper drops the connection
/// with its streams. Two atomics per read that would block; nothing on the
/// way of data.
#[derive(Default)]
pub(super) struct Closer {
    closed: std::sync::atomic::AtomicBool,
    pub(super) reader: futures::task::AtomicWaker,
}

impl Closer {
    pub(super) fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.reader.wake();
    }

    pub(super) fn is_closed(&self) -> bool {
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
