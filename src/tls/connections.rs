//! The registry of a listener's open connections: listed for the admin
//! view, and closed when their certificate is revoked.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::warn;

use super::stream::Closer;
use crate::identity::{IdentityError, NodeId};

/// Who is on the other end of a connection, established once at the
/// handshake and attached to every request on it (tonic request extensions).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The identity from the client certificate, or why there is none.
    pub identity: Result<NodeId, IdentityError>,
    pub remote: SocketAddr,
    /// The federation peer whose CA issued the certificate, when it was not
    /// the broker's own CA: such a connection may only carry that peer's
    /// federation link, never act as a node.
    pub link: Option<Arc<str>>,
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
    pub(super) fn register(&self, info: ConnInfo, close: Arc<Closer>) -> ConnGuard {
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
pub(super) struct ConnGuard {
    id: u64,
    conns: Connections,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.conns.lock().conns.remove(&self.id);
        metrics::gauge!(crate::metrics::CONNECTED_NODES).decrement(1.0);
    }
}
