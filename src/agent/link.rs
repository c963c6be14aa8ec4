//! The state of the agent's upstream link, shared by the uplink and the
//! downlink, and the reconnect policy: exponential backoff with a cap and
//! jitter; a refused certificate is told apart from a network that is down.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tracing::{error, info, warn};

use crate::proto::LinkState;

/// Tuning of the upstream link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// First retry delay.
    pub backoff_min: Duration,
    /// Longest retry delay (also used after a certificate refusal).
    pub backoff_max: Duration,
    /// HTTP/2 keepalive ping interval; a ping unanswered within
    /// `keepalive_timeout` closes the connection (detects stalls).
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// An alert sent upstream and not acknowledged within this time means the
    /// link stalled: the stream is torn down and the link rebuilt.
    pub ack_timeout: Duration,
    /// Alerts sent upstream and not yet acknowledged, at most.
    pub window: usize,
    /// Alerts sent at first on a new connection; doubled with every round
    /// of answers up to `window` (slow start).
    pub first_window: usize,
    /// Longest wait between attempts while the network is down (not after
    /// a refusal, which waits `backoff_max`): a post's link that comes back
    /// is used within seconds, for the price of a dropped SYN meanwhile.
    pub down_retry_max: Duration,
    /// How long a TCP connection attempt waits for an answer. The kernel
    /// sends the SYN again after 1 s, then 3 s: a link that comes up in
    /// between waits for the next SYN. With 2 s and `down_retry_max` 1 s,
    /// a SYN leaves at least every 1.5 s (docs/links.md); one answered
    /// within 2 s still connects (a radio link's round trip is 1 s).
    pub connect_timeout: Duration,
    /// Bytes in flight at least; above it, about twice what the link
    /// carries in a round trip (`agent::pacing`).
    pub min_in_flight_bytes: usize,
    /// gzip-compress requests upstream (when upstream takes gzip): about
    /// 40 % fewer bytes on a post's link, for CPU that a fast link does not
    /// need to spend (a loopback drain runs about a quarter slower).
    pub compress: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(15),
            keepalive_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(30),
            window: 1024,
            first_window: 16,
            down_retry_max: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            min_in_flight_bytes: super::pacing::FLOOR,
            compress: true,
        }
    }
}

/// Why a link attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The network or the broker is unavailable, or the link stalled.
    Down(String),
    /// Our certificate (or the broker's) was refused: retrying fast will not help.
    Refused(String),
    /// A problem at the agent itself (its store); says nothing about the link.
    Local(String),
}

impl Problem {
    /// Classifies a failed gRPC call: certificate trouble anywhere in the
    /// error chain — the broker's TLS alert refusing our certificate, our
    /// own refusal of the broker's, UNAUTHENTICATED — is a refusal; the rest
    /// is the network. Decided on types, never on wording: a rustls error
    /// where the chain still carries one, and otherwise an I/O error of kind
    /// `InvalidData`, which on a TLS connection means the TLS layer failed
    /// (h2 keeps only the kind and the text of the error it passes on),
    /// not the network.
    pub fn of(status: &tonic::Status) -> Problem {
        use rustls::AlertDescription as A;
        let text = chain(status);
        let tls_failed = io_kinds(status).contains(&std::io::ErrorKind::InvalidData);
        let refused = status.code() == tonic::Code::Unauthenticated
            || match crate::tls::rustls_error(status) {
                Some(rustls::Error::AlertReceived(alert)) => matches!(
                    alert,
                    A::BadCertificate
                        | A::UnsupportedCertificate
                        | A::CertificateRevoked
                        | A::CertificateExpired
                        | A::CertificateUnknown
                        | A::UnknownCA
                        | A::AccessDenied
                        | A::CertificateRequired
                        | A::DecryptError
                ),
                Some(
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented,
                ) => true,
                Some(_) => false,
                None => tls_failed,
            };
        if refused {
            Problem::Refused(text)
        } else {
            Problem::Down(text)
        }
    }
}

/// Opens a stream to the upstream broker, bounded by `ack_timeout`: a
/// handshake that hangs on a broken path must not wedge the link.
///
/// # Errors
/// The problem, classified.
pub async fn open<T>(
    config: &LinkConfig,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Problem> {
    open_response(config, call)
        .await
        .map(tonic::Response::into_inner)
}

/// As [`open`], with the answer's headers.
///
/// # Errors
/// The problem, classified.
pub async fn open_response<T>(
    config: &LinkConfig,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, Problem> {
    tokio::time::timeout(config.ack_timeout, call)
        .await
        .map_err(|_| {
            Problem::Down(format!(
                "no answer from upstream within {:?} while connecting",
                config.ack_timeout
            ))
        })?
        .map_err(|s| Problem::of(&s))
}

/// The kinds of the I/O errors in a status's source chain.
fn io_kinds(status: &tonic::Status) -> Vec<std::io::ErrorKind> {
    let mut kinds = Vec::new();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            kinds.push(io.kind());
        }
        source = e.source();
    }
    kinds
}

/// The status message with its whole source chain (rustls' alert is deep).
pub fn chain(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[derive(Debug, Clone)]
pub struct LinkStatus {
    pub state: LinkState,
    pub last_contact: Option<SystemTime>,
    pub last_error: String,
    pub reconnects: u64,
}

/// Shared, cheap-to-clone view of the link. A std mutex: held for a field
/// update, never across an `.await`.
#[derive(Clone)]
pub struct Link {
    status: Arc<Mutex<LinkStatus>>,
    upstream: Arc<str>,
    /// Whether upstream takes gzip-compressed requests: assumed (a
    /// Liaison broker does) until an answer's `grpc-accept-encoding` says
    /// otherwise; an upstream that does not is then sent plain requests
    /// from the next session on.
    gzip: Arc<std::sync::atomic::AtomicBool>,
}

impl Link {
    pub fn new(upstream: &str) -> Link {
        Link {
            status: Arc::new(Mutex::new(LinkStatus {
                state: LinkState::Connecting,
                last_contact: None,
                last_error: String::new(),
                reconnects: 0,
            })),
            upstream: upstream.into(),
            gzip: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// Whether requests upstream are gzip-compressed.
    pub fn upstream_accepts_gzip(&self) -> bool {
        self.gzip.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes what the headers of an answer to a publish say upstream
    /// accepts; headers that say nothing change nothing.
    pub fn note_accepted(&self, metadata: &tonic::metadata::MetadataMap) {
        if let Some(accepted) = metadata
            .get("grpc-accept-encoding")
            .and_then(|v| v.to_str().ok())
        {
            let gzip = accepted.split(',').any(|e| e.trim() == "gzip");
            self.gzip.store(gzip, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Upstream refused a compressed request (UNIMPLEMENTED, as gRPC
    /// answers an encoding it does not take): plain requests from now on.
    pub fn note_refused_compression(&self, status: &tonic::Status) {
        if status.code() == tonic::Code::Unimplemented
            && status.message().to_ascii_lowercase().contains("compress")
        {
            self.gzip.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn status(&self) -> LinkStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Something arrived from upstream: the link works.
    pub fn contact(&self) {
        let mut s = self.lock();
        s.last_contact = Some(SystemTime::now());
        if s.state != LinkState::Up {
            if matches!(s.state, LinkState::Down | LinkState::Refused) {
                s.reconnects += 1;
            }
            s.state = LinkState::Up;
            s.last_error.clear();
            info!(upstream = %self.upstream, "link up");
        }
    }

    /// An attempt failed; logs the transition once.
    pub fn failed(&self, problem: &Problem) {
        let (state, reason) = match problem {
            Problem::Down(r) => (LinkState::Down, r),
            Problem::Refused(r) => (LinkState::Refused, r),
            Problem::Local(r) => {
                warn!(reason = %r, "the agent cannot use its store; retrying");
                return;
            }
        };
        let mut s = self.lock();
        s.last_error.clone_from(reason);
        if s.state != state {
            s.state = state;
            match state {
                LinkState::Refused => error!(
                    upstream = %self.upstream, reason = %reason,
                    "the upstream broker refused this agent's certificate (or its own was refused); \
                     alerts stay queued; renew or fix the certificate"
                ),
                _ => {
                    warn!(upstream = %self.upstream, reason = %reason, "link down; alerts stay queued")
                }
            }
        }
    }
}

/// Exponential backoff with full jitter in [d/2, d].
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
    /// The cap while the network is down.
    down_max: Duration,
}

impl Backoff {
    pub fn new(config: &LinkConfig) -> Backoff {
        Backoff {
            next: config.backoff_min,
            min: config.backoff_min,
            max: config.backoff_max,
            down_max: config.down_retry_max.min(config.backoff_max),
        }
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay before the next attempt; a refusal waits the maximum.
    pub fn delay(&mut self, problem: &Problem) -> Duration {
        let base = match problem {
            Problem::Refused(_) => self.max,
            Problem::Down(_) => self.next.min(self.down_max),
            Problem::Local(_) => self.next,
        };
        self.next = (self.next * 2).min(self.max);
        let half = base / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let config = LinkConfig {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            down_retry_max: Duration::from_secs(2),
            ..LinkConfig::default()
        };
        let mut b = Backoff::new(&config);
        let down = Problem::Down("x".into());
        let delays: Vec<Duration> = (0..8).map(|_| b.delay(&down)).collect();
        for (i, d) in delays.iter().enumerate() {
            let nominal =
                (Duration::from_millis(100) * 2u32.pow(i as u32)).min(Duration::from_secs(2));
            assert!(
                *d >= nominal / 2 && *d <= nominal,
                "attempt {i}: {d:?} vs {nominal:?}"
            );
        }
        assert!(b.delay(&Problem::Refused("cert".into())) >= Duration::from_secs(1));
        b.reset();
        assert!(b.delay(&down) <= Duration::from_millis(100));
    }

    #[test]
    fn a_down_network_is_retried_often_and_a_refusal_rarely() {
        let config = LinkConfig {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(60),
            down_retry_max: Duration::from_secs(1),
            ..LinkConfig::default()
        };
        let mut b = Backoff::new(&config);
        let down = Problem::Down("no route".into());
        for _ in 0..12 {
            assert!(b.delay(&down) <= Duration::from_secs(1));
        }
        assert!(b.delay(&Problem::Refused("cert".into())) >= Duration::from_secs(30));
    }

    #[test]
    fn only_headers_that_list_encodings_decide_on_gzip() {
        let link = Link::new("https://upstream:7443");
        assert!(link.upstream_accepts_gzip(), "assumed until told otherwise");
        link.note_accepted(&tonic::metadata::MetadataMap::new());
        assert!(link.upstream_accepts_gzip(), "no header: nothing said");
        let mut plain = tonic::metadata::MetadataMap::new();
        plain.insert("grpc-accept-encoding", "identity".parse().unwrap());
        link.note_accepted(&plain);
        assert!(!link.upstream_accepts_gzip());
        let mut both = tonic::metadata::MetadataMap::new();
        both.insert("grpc-accept-encoding", "identity, gzip".parse().unwrap());
        link.note_accepted(&both);
        assert!(link.upstream_accepts_gzip());
        link.note_refused_compression(&tonic::Status::unimplemented(
            "Content is compressed with `gzip` which isn't supported",
        ));
        assert!(!link.upstream_accepts_gzip());
    }

    /// A status as tonic makes it from a transport error.
    fn transport(inner: std::io::Error) -> tonic::Status {
        tonic::Status::from_error(Box::new(inner))
    }

    #[test]
    fn certificate_trouble_is_a_refusal_not_a_network_problem() {
        let s = tonic::Status::unauthenticated("no identity");
        assert!(matches!(Problem::of(&s), Problem::Refused(_)));
        let expired = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired);
        let s = transport(std::io::Error::other(expired));
        assert!(matches!(Problem::of(&s), Problem::Refused(_)), "{s:?}");
        let untrusted = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(matches!(
            Problem::of(&transport(std::io::Error::other(untrusted))),
            Problem::Refused(_)
        ));
        // What h2 passes on: the kind and the text of the TLS layer's error.
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: UnknownCA",
        );
        assert!(matches!(
            Problem::of(&transport(alert)),
            Problem::Refused(_)
        ));
        // Words are not evidence: a message that mentions certificates is
        // still the network when nothing in the chain is a TLS refusal.
        let s = tonic::Status::unavailable("the certificate server is down");
        assert!(matches!(Problem::of(&s), Problem::Down(_)));
        let s = transport(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(Problem::of(&s), Problem::Down(_)));
    }
}
