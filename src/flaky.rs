//! A TCP proxy for flaky-link tests, on command: passes bytes; cuts every
//! connection (and refuses new ones); stalls (sockets stay open, bytes are
//! held); black-holes (sockets stay open, bytes vanish); or flaps between
//! passing and cutting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Cut,
    Stall,
    BlackHole,
}

pub struct FlakyProxy {
    pub addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    /// Client-to-server bytes forwarded so far.
    upstream_bytes: Arc<AtomicU64>,
    /// Server-to-client bytes forwarded so far.
    downstream_bytes: Arc<AtomicU64>,
    /// Cut once `upstream_bytes` reaches this (u64::MAX: never).
    cut_at: Arc<AtomicU64>,
    /// Cut each connection once it has carried this many client-to-server
    /// bytes (u64::MAX: never).
    budget: Arc<AtomicU64>,
    /// Where connections go; a restarted broker has a new port.
    target: Arc<std::sync::Mutex<SocketAddr>>,
}

impl FlakyProxy {
    /// Starts a proxy on a free loopback port in front of `target`.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start(target: SocketAddr, mode: Mode) -> std::io::Result<FlakyProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, _) = watch::channel(mode);
        let mode = Arc::new(tx);
        let upstream_bytes = Arc::new(AtomicU64::new(0));
        let downstream_bytes = Arc::new(AtomicU64::new(0));
        let cut_at = Arc::new(AtomicU64::new(u64::MAX));
        let budget = Arc::new(AtomicU64::new(u64::MAX));
        let target = Arc::new(std::sync::Mutex::new(target));
        let (m, up, down, cut, per_conn, to) = (
            mode.clone(),
            upstream_bytes.clone(),
            downstream_bytes.clone(),
            cut_at.clone(),
            budget.clone(),
            target.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *m.borrow() == Mode::Cut {
                    drop(client);
                    continue;
                }
                let target = *to.lock().unwrap_or_else(|p| p.into_inner());
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let limits = Limits {
                    cut_at: Some(cut.clone()),
                    budget: per_conn.load(Ordering::SeqCst),
                };
                tokio::spawn(pump(cr, sw, m.clone(), up.clone(), limits));
                tokio::spawn(pump(sr, cw, m.clone(), down.clone(), Limits::none()));
            }
        });
        Ok(FlakyProxy {
            addr,
            mode,
            upstream_bytes,
            downstream_bytes,
            cut_at,
            budget,
            target,
        })
    }

    /// Sends new connections to another address.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    /// Alternates between passing and cutting every `period`, until `stop`
    /// is cancelled; then passes.
    pub fn flap(&self, period: std::time::Duration, stop: tokio_util::sync::CancellationToken) {
        let mode = self.mode.clone();
        tokio::spawn(async move {
            let mut up = false;
            loop {
                mode.send_replace(if up { Mode::Pass } else { Mode::Cut });
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(period) => up = !up,
                }
            }
            mode.send_replace(Mode::Pass);
        });
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Bytes forwarded so far: (client to server, server to client).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.upstream_bytes.load(Ordering::SeqCst),
            self.downstream_bytes.load(Ordering::SeqCst),
        )
    }

    /// Waits until the proxy is in `mode` (e.g. after a `cut_after`).
    pub async fn wait_for(&self, mode: Mode) {
        let mut rx = self.mode.subscribe();
        // The sender lives as long as the proxy, so this only ends when the
        // mode is reached.
        let _ = rx.wait_for(|m| *m == mode).await;
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// A link that misbehaves at random until `stop`: mostly up, sometimes
    /// cut, sometimes stalled, each state lasting from `min` to `max`.
    pub fn chaos(
        &self,
        min: std::time::Duration,
        max: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        use rand::Rng;
        let mode = self.mode.clone();
        tokio::spawn(async move {
            loop {
                let (next, hold) = {
                    let mut rng = rand::rng();
                    let roll: f64 = rng.random();
                    let next = if roll < 0.7 {
                        Mode::Pass
                    } else if roll < 0.85 {
                        Mode::Cut
                    } else {
                        Mode::Stall
                    };
                    (next, rng.random_range(min..=max))
                };
                mode.send_replace(next);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(hold) => {}
                }
            }
            mode.send_replace(Mode::Pass);
        });
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// From now on, cuts each new connection once it has carried `bytes`
    /// client-to-server bytes (`None`: never) — a link that is up for a
    /// while and then drops, measured in what it carried rather than in
    /// time, so that a slow machine sees the same link as a fast one.
    pub fn cut_each_connection_after(&self, bytes: Option<u64>) {
        self.budget
            .store(bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Cuts every connection once `more` further client-to-server bytes have
    /// passed (a link that drops in the middle of a batch).
    pub fn cut_after(&self, more: u64) {
        let now = self.upstream_bytes.load(Ordering::SeqCst);
        self.cut_at.store(now + more, Ordering::SeqCst);
    }
}

/// When one direction of a connection is cut.
struct Limits {
    /// Every connection, once the proxy's total reaches this.
    cut_at: Option<Arc<AtomicU64>>,
    /// This connection, once it carried this much.
    budget: u64,
}

impl Limits {
    fn none() -> Limits {
        Limits {
            cut_at: None,
            budget: u64::MAX,
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<watch::Sender<Mode>>,
    bytes: Arc<AtomicU64>,
    limits: Limits,
) {
    let mut carried = 0u64;
    let mut rx = mode.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = rx.changed() => {
                if changed.is_err() || *rx.borrow() == Mode::Cut {
                    return;
                }
                continue;
            }
        };
        // Stalled: hold the bytes, keep the sockets open.
        let Ok(mode_now) = rx.wait_for(|m| *m != Mode::Stall).await.map(|m| *m) else {
            return;
        };
        match mode_now {
            Mode::Cut => return,
            Mode::BlackHole => continue, // the bytes vanish
            Mode::Pass | Mode::Stall => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        let total = bytes.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        if let Some(cut_at) = &limits.cut_at
            && total >= cut_at.load(Ordering::SeqCst)
        {
            cut_at.store(u64::MAX, Ordering::SeqCst);
            mode.send_replace(Mode::Cut);
            return;
        }
        carried += n as u64;
        if carried >= limits.budget {
            // This connection's turn is over; dropping both halves here
            // ends the other direction too.
            return;
        }
    }
}
