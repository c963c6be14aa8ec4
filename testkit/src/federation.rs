//! Federation test support: peer entries, a broker waiting for a peer to
//! dial it, and [`HandPlayedPeer`], a peer broker played by the test over
//! the link protocol, so that it can send what no honest broker sends.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use liaison::alert::{Limits, Record, Seq, validate};
use liaison::federation::PeerConfig;
use liaison::federation::attest::Signer;
use liaison::identity::NodeId;
use liaison::proto as pb;
use liaison::server::ServeConfig;
use liaison::tls::TlsFiles;
use pb::link_frame::Frame;
use tokio::sync::mpsc;

use crate::{PATIENCE, Pki, TestBroker, broker_of, trace};

/// A `[[peer]]` entry for `country`'s broker under the CA at `ca`; `url`
/// on the side that dials.
pub fn peer(name: &str, country: &str, ca: &Path, url: Option<String>) -> PeerConfig {
    PeerConfig {
        name: name.into(),
        broker: broker_of(country),
        ca: ca.to_owned(),
        crl: None,
        countries: vec![broker_of(country).country()],
        url,
    }
}

/// Links that come back within a test's patience.
pub fn fast_link(c: &mut ServeConfig) {
    c.federation.link.backoff_min = Duration::from_millis(50);
    c.federation.link.backoff_max = Duration::from_millis(500);
}

/// Writes `policy` beside the PKI; its path.
pub fn write_policy(pki: &Pki, policy: &str) -> PathBuf {
    let path = pki.path().join("policy.toml");
    std::fs::write(&path, policy).expect("policy");
    path
}

/// A broker under `pki` with `policy` and one peer, `country`'s broker
/// (whose CA is `ca`), that dials it.
pub async fn waiting_for(pki: Pki, policy: &str, country: &str, ca: &Path) -> TestBroker {
    trace();
    let policy = write_policy(&pki, policy);
    let peer = peer(&country.to_ascii_lowercase(), country, ca, None);
    TestBroker::start_in(pki, |c| {
        c.policy_file = Some(policy);
        c.federation.peers = vec![peer];
    })
    .await
}

/// An attestation by `signer` of `body` as published by `origin`.
pub fn attested(signer: &Signer, origin: &str, body: pb::Alert) -> pb::Attestation {
    let origin: NodeId = origin.parse().expect("urn");
    let alert = validate(body, &origin, &Limits::default(), SystemTime::now()).expect("valid");
    let record = Record {
        seq: Seq(1),
        received_at: SystemTime::now(),
        alert,
        provenance: None,
    };
    signer.attest(&record).expect("signs")
}

/// A peer broker played by the test: one link, frames sent and received by
/// hand.
pub struct HandPlayedPeer {
    out: mpsc::Sender<pb::LinkFrame>,
    inbound: tonic::Streaming<pb::LinkFrame>,
}

impl HandPlayedPeer {
    /// Dials `broker` with `files` (a peer broker's certificate, trusting
    /// `broker`'s CA) and sends the hello of `as_broker`.
    ///
    /// # Panics
    /// When the link does not open.
    pub async fn dial(broker: &TestBroker, files: &TlsFiles, as_broker: &str) -> HandPlayedPeer {
        let peer = Self::open(broker, files)
            .await
            .unwrap_or_else(|s| panic!("the link opens: {s}"));
        peer.send(Frame::Hello(pb::LinkHello {
            broker: as_broker.to_owned(),
            version: 1,
        }))
        .await;
        peer
    }

    /// Opens the link, without a hello.
    ///
    /// # Errors
    /// The status the broker refused it with.
    pub async fn open(
        broker: &TestBroker,
        files: &TlsFiles,
    ) -> Result<HandPlayedPeer, tonic::Status> {
        let channel = liaison::client::endpoint(&broker.url(), Some(files))
            .expect("endpoint")
            .connect()
            .await
            .expect("the peer broker's certificate passes the handshake");
        let (out, rx) = mpsc::channel(16);
        let inbound = pb::federation_client::FederationClient::new(channel)
            .link(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(HandPlayedPeer { out, inbound })
    }

    /// Sends one frame.
    pub async fn send(&self, frame: Frame) {
        self.out
            .send(pb::LinkFrame { frame: Some(frame) })
            .await
            .expect("the link takes a frame");
    }

    /// The next frame from the broker (`None`: it closed the link), within
    /// the test's patience.
    pub async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(PATIENCE, self.inbound.message())
            .await
            .expect("the broker sends or closes in time")
            .ok()
            .flatten()
            .and_then(|f| f.frame)
    }

    /// The next answer, skipping heartbeats and other frames.
    pub async fn answer(&mut self) -> pb::Answer {
        loop {
            match self.next().await {
                Some(Frame::Answer(a)) => return a,
                Some(_) => {}
                None => panic!("the link closed before an answer"),
            }
        }
    }
}
