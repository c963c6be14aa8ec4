//! An emulated link between a post and its national centre, at packet
//! level, for the link bench and the tests (docs/links.md).
//!
//! Two network namespaces (`ip netns`), the post's and the centre's, each
//! with a TUN device: `10.77.0.2` at the post, `10.77.0.1` at the centre,
//! point to point. Every IP packet one side sends is read from its TUN
//! device by this process, goes through the link's model — a bottleneck of
//! the profile's rate with a drop-tail queue, the one-way delay, random
//! loss, up or down — and is written to the other side's TUN device, so
//! that TCP and TLS behave as on the real link. (The kernels here have no
//! netem; this is the approach of the mahimahi emulator, in user space.)
//!
//! Programs run inside a namespace with [`EmulatedLink::command`] (`ip
//! netns exec`); this process reaches them with [`connect_in`], which opens
//! its socket from inside the namespace, so that only the traffic between
//! the post and the centre crosses the emulated link. Dropping the link
//! stops its threads, closes the TUN devices and deletes the namespaces,
//! also when a test fails.
//!
//! Needs root (namespaces and TUN devices).

use std::collections::VecDeque;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::Rng;

pub mod bed;

/// The post's address on the link.
pub const POST_ADDR: &str = "10.77.0.2";
/// The centre's (the broker's) address on the link.
pub const CENTRE_ADDR: &str = "10.77.0.1";

/// A link's character.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    /// Bottleneck rate, bits per second (each direction).
    pub rate_bps: u64,
    /// Round-trip time added (half each way).
    pub rtt: Duration,
    /// Probability that a packet is lost (each packet, each direction).
    pub loss: f64,
    /// Bytes the bottleneck queues before it drops (each direction).
    pub queue_bytes: usize,
    /// Up for the first, then down for the second, repeatedly (`None`:
    /// always up).
    pub schedule: Option<(Duration, Duration)>,
}

/// The named profiles of docs/links.md.
pub fn profile(name: &str) -> Option<Profile> {
    Some(match name {
        "satellite" => Profile {
            name: "satellite",
            rate_bps: 64_000,
            rtt: Duration::from_millis(600),
            loss: 0.05,
            queue_bytes: 32 * 1024,
            schedule: None,
        },
        "3g" => Profile {
            name: "3g",
            rate_bps: 384_000,
            rtt: Duration::from_millis(200),
            loss: 0.01,
            queue_bytes: 64 * 1024,
            schedule: None,
        },
        "radio" => Profile {
            name: "radio",
            rate_bps: 9_600,
            rtt: Duration::from_secs(1),
            loss: 0.10,
            queue_bytes: 8 * 1024,
            schedule: Some((Duration::from_secs(300), Duration::from_secs(600))),
        },
        _ => return None,
    })
}

/// The profiles' names, for messages.
pub const PROFILES: &str = "satellite, 3g, radio";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "the emulated link needs root (network namespaces and TUN devices); run as root, as CI does"
    )]
    NotRoot,
    #[error("emulated link: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("emulated link: `{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError::Io { what, source }
}

/// Which end of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Post,
    Centre,
}

/// What crossed the link, each direction.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes of IP packets delivered post → centre.
    pub up_bytes: AtomicU64,
    pub up_packets: AtomicU64,
    /// Bytes of IP packets delivered centre → post.
    pub down_bytes: AtomicU64,
    pub down_packets: AtomicU64,
    /// Packets the model dropped (loss, a full queue, the link down).
    pub dropped: AtomicU64,
}

/// An emulated link and its two namespaces; see the module documentation.
pub struct EmulatedLink {
    pub profile: Profile,
    post_ns: String,
    centre_ns: String,
    counters: Arc<Counters>,
    /// Whether packets pass (the schedule, or [`EmulatedLink::set_up`]).
    up: Arc<AtomicBool>,
    /// Stops the threads.
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EmulatedLink {
    /// Creates the namespaces, the TUN devices and the relay.
    ///
    /// # Errors
    /// [`LinkError::NotRoot`] when not root; when a device or namespace
    /// cannot be made (what exists by then is removed again).
    pub fn create(profile: Profile) -> Result<EmulatedLink, LinkError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LinkError::NotRoot);
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut link = EmulatedLink {
            profile,
            post_ns: format!("liaison-post-{id}"),
            centre_ns: format!("liaison-centre-{id}"),
            counters: Arc::default(),
            up: Arc::new(AtomicBool::new(true)),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        // From here on, Drop cleans up whatever was made.
        let post = link.side(
            &format!("lkp{id}"),
            &link.post_ns.clone(),
            POST_ADDR,
            CENTRE_ADDR,
        )?;
        let centre = link.side(
            &format!("lkc{id}"),
            &link.centre_ns.clone(),
            CENTRE_ADDR,
            POST_ADDR,
        )?;
        let (post, centre) = (Arc::new(post), Arc::new(centre));
        link.relay(post.clone(), centre.clone(), true);
        link.relay(centre, post, false);
        if let Some((up, down)) = link.profile.schedule {
            link.schedule(up, down);
        }
        Ok(link)
    }

    /// One end: a namespace with `lo` up and a TUN device (made here, then
    /// moved into the namespace), addressed point to point.
    fn side(
        &self,
        device: &str,
        ns: &str,
        local: &str,
        peer: &str,
    ) -> Result<tun_rs::SyncDevice, LinkError> {
        run(&["ip", "netns", "add", ns])?;
        let tun = tun_rs::DeviceBuilder::new()
            .name(device)
            .mtu(1500)
            .build_sync()
            .map_err(io(format!("creating TUN device {device}")))?;
        run(&["ip", "link", "set", device, "netns", ns])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        run(&[
            "ip", "-n", ns, "addr", "add", local, "peer", peer, "dev", device,
        ])?;
        run(&["ip", "-n", ns, "link", "set", device, "up"])?;
        Ok(tun)
    }

    /// One direction: a reader that applies the model, a writer that
    /// delivers each packet at its time.
    fn relay(&mut self, from: Arc<tun_rs::SyncDevice>, to: Arc<tun_rs::SyncDevice>, upward: bool) {
        let (tx, rx) = channel::<(Instant, Vec<u8>)>();
        let model = Model::new(&self.profile);
        let (stop, up, counters) = (self.stop.clone(), self.up.clone(), self.counters.clone());
        self.threads.push(std::thread::spawn(move || {
            read_loop(&from, model, &tx, &stop, &up, &counters);
        }));
        let (stop, counters) = (self.stop.clone(), self.counters.clone());
        self.threads.push(std::thread::spawn(move || {
            write_loop(&to, &rx, &stop, &counters, upward);
        }));
    }

    fn schedule(&mut self, up_for: Duration, down_for: Duration) {
        let (stop, up) = (self.stop.clone(), self.up.clone());
        self.threads.push(std::thread::spawn(move || {
            let mut next = Instant::now() + up_for;
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    let was = up.fetch_xor(true, Ordering::Relaxed);
                    next += if was { down_for } else { up_for };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }

    /// Lets packets pass, or drops every packet offered.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The namespace of one end.
    pub fn namespace(&self, side: Side) -> &str {
        match side {
            Side::Post => &self.post_ns,
            Side::Centre => &self.centre_ns,
        }
    }

    /// `program args…` to be run inside one end's namespace.
    pub fn command(&self, side: Side, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.namespace(side)]).arg(program);
        c
    }
}

impl Drop for EmulatedLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The devices closed with their threads; the namespaces go now.
        for ns in [&self.post_ns, &self.centre_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn run(args: &[&str]) -> Result<(), LinkError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(io(format!("running {}", args[0])))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LinkError::Command {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The bottleneck of one direction: when the packets queued before a new
/// one have left, and whether it fits in the queue.
struct Model {
    rate_bps: u64,
    delay: Duration,
    loss: f64,
    queue_bytes: usize,
    /// When the last packet queued has been sent.
    busy_until: Instant,
}

impl Model {
    fn new(p: &Profile) -> Model {
        Model {
            rate_bps: p.rate_bps.max(1),
            delay: p.rtt / 2,
            loss: p.loss,
            queue_bytes: p.queue_bytes,
            busy_until: Instant::now(),
        }
    }

    fn transmission(&self, bytes: usize) -> Duration {
        Duration::from_nanos(bytes as u64 * 8 * 1_000_000_000 / self.rate_bps)
    }

    /// When a packet of `bytes` offered `now` arrives, or `None` if it is
    /// dropped.
    fn offer(&mut self, now: Instant, bytes: usize, rng: &mut impl Rng) -> Option<Instant> {
        let queued = self.busy_until.saturating_duration_since(now);
        let queued_bytes = (queued.as_nanos() * u128::from(self.rate_bps) / 8_000_000_000) as usize;
        if queued_bytes + bytes > self.queue_bytes || rng.random_bool(self.loss) {
            return None;
        }
        let end = self.busy_until.max(now) + self.transmission(bytes);
        self.busy_until = end;
        Some(end + self.delay)
    }
}

/// Reads packets from `from` until stopped, through the model.
fn read_loop(
    from: &tun_rs::SyncDevice,
    mut model: Model,
    tx: &Sender<(Instant, Vec<u8>)>,
    stop: &AtomicBool,
    up: &AtomicBool,
    counters: &Counters,
) {
    let mut rng = rand::rng();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        if !readable(from, Duration::from_millis(50)) {
            continue;
        }
        let Ok(n) = from.recv(&mut buf) else { return };
        let now = Instant::now();
        match model.offer(now, n, &mut rng) {
            Some(at) if up.load(Ordering::Relaxed) => {
                if tx.send((at, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            _ => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Whether `dev` has a packet within `wait`.
fn readable(dev: &tun_rs::SyncDevice, wait: Duration) -> bool {
    let mut fds = libc::pollfd {
        fd: dev.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, for the duration of the call.
    let r = unsafe { libc::poll(&mut fds, 1, ms) };
    r > 0 && fds.revents & libc::POLLIN != 0
}

/// Delivers each packet to `to` at its time, in order.
fn write_loop(
    to: &tun_rs::SyncDevice,
    rx: &Receiver<(Instant, Vec<u8>)>,
    stop: &AtomicBool,
    counters: &Counters,
    upward: bool,
) {
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        let wait = queue.front().map_or(Duration::from_millis(50), |(at, _)| {
            at.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50))
        });
        match rx.recv_timeout(wait) {
            Ok(p) => queue.push_back(p),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) if queue.is_empty() => return,
            Err(RecvTimeoutError::Disconnected) => {}
        }
        let now = Instant::now();
        while queue.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, packet)) = queue.pop_front() else {
                break;
            };
            if to.send(&packet).is_ok() {
                let (bytes, packets) = if upward {
                    (&counters.up_bytes, &counters.up_packets)
                } else {
                    (&counters.down_bytes, &counters.down_packets)
                };
                bytes.fetch_add(packet.len() as u64, Ordering::Relaxed);
                packets.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A TCP connection to `addr` opened from inside namespace `ns` (on a
/// thread of its own, which enters the namespace and ends).
///
/// # Errors
/// When the namespace cannot be entered or the connection fails.
pub async fn connect_in(ns: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let path = format!("/var/run/netns/{ns}");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let connected = File::open(&path).and_then(|f| {
            // SAFETY: setns on a namespace file this thread opened; it
            // changes this thread's namespace only, and the thread ends.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
            s.set_nonblocking(true)?;
            s.set_nodelay(true)?;
            Ok(s)
        });
        let _ = tx.send(connected);
    });
    let std = rx
        .await
        .map_err(|_| std::io::Error::other("the connecting thread ended"))??;
    tokio::net::TcpStream::from_std(std)
}

/// A gRPC channel to `url` (whose host is `addr`), connected from inside
/// namespace `ns`, with the TLS files when given.
///
/// # Errors
/// When the address or certificates are unusable.
pub fn channel_in(
    ns: &str,
    url: &str,
    addr: SocketAddr,
    tls: Option<&crate::tls::TlsFiles>,
) -> Result<tonic::transport::Channel, crate::client::ClientError> {
    let ns = ns.to_owned();
    let endpoint = crate::client::endpoint(url, tls)?;
    let connector = tower_service_fn(move |_uri: http::Uri| {
        let ns = ns.clone();
        async move {
            connect_in(&ns, addr)
                .await
                .map(hyper_util::rt::TokioIo::new)
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// A `tower::Service` from a closure (tonic's connectors are services).
fn tower_service_fn<F, Fut, T>(f: F) -> ServiceFn<F>
where
    F: FnMut(http::Uri) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    ServiceFn(f)
}

#[derive(Clone)]
struct ServiceFn<F>(F);

impl<F, Fut, T> tower_service::Service<http::Uri> for ServiceFn<F>
where
    F: FnMut(http::Uri) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    type Response = T;
    type Error = std::io::Error;
    type Future = Fut;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Fut {
        (self.0)(uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_paces_queues_and_drops_as_the_profile_says() {
        let p = Profile {
            name: "test",
            rate_bps: 80_000, // 10 kB/s
            rtt: Duration::from_millis(200),
            loss: 0.0,
            queue_bytes: 3_000,
            schedule: None,
        };
        let mut m = Model::new(&p);
        let mut rng = rand::rng();
        let t0 = Instant::now();
        // 1,000 bytes take 100 ms at 10 kB/s, then 100 ms one way.
        let a = m.offer(t0, 1_000, &mut rng).expect("fits");
        assert_eq!(a - t0, Duration::from_millis(200));
        let b = m.offer(t0, 1_000, &mut rng).expect("fits");
        assert_eq!(
            b - t0,
            Duration::from_millis(300),
            "queued behind the first"
        );
        let c = m.offer(t0, 1_000, &mut rng).expect("fits");
        assert_eq!(c - t0, Duration::from_millis(400));
        assert!(
            m.offer(t0, 1_000, &mut rng).is_none(),
            "the queue holds 3,000 bytes"
        );
        // Once the queue drained, packets pass again.
        assert!(
            m.offer(t0 + Duration::from_secs(1), 1_000, &mut rng)
                .is_some()
        );
        let lossy = Profile { loss: 1.0, ..p };
        assert!(Model::new(&lossy).offer(t0, 10, &mut rng).is_none());
    }

    #[test]
    fn profiles_are_as_documented() {
        let s = profile("satellite").expect("satellite");
        assert_eq!(
            (s.rate_bps, s.rtt, s.loss),
            (64_000, Duration::from_millis(600), 0.05)
        );
        let r = profile("radio").expect("radio");
        assert_eq!(
            r.schedule,
            Some((Duration::from_secs(300), Duration::from_secs(600)))
        );
        assert!(profile("3g").is_some() && profile("carrier pigeon").is_none());
    }
}
