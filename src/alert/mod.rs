//! The alert as the core sees it: a validated protobuf message plus the typed
//! fields that routing needs (id, origin, category, severity, status,
//! markings), and the stored form [`Record`].
//!
//! The protobuf message is the contract with clients in every language and
//! also our storage encoding, so the core keeps it as the alert's body instead
//! of mirroring ~60 fields in a parallel struct. What the core decides on is
//! lifted out into typed fields once, at validation ([`validate`]) or when a
//! stored record is read back ([`Alert::from_stored`]).

mod validate;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

pub use validate::{Limits, Rejection, validate};

use crate::identity::{CountryCode, NodeId};
use crate::proto as pb;

/// An alert's id: a UUID chosen by the originating client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlertId(pub Uuid);

impl AlertId {
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for AlertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl std::str::FromStr for AlertId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(AlertId)
    }
}

/// The broker's sequence number of a stored alert: unique, increasing in
/// acceptance order, never reused. 0 means "before the first alert".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Seq(pub u64);

impl Seq {
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who may receive an AMBER alert beyond the originating agency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Releasee {
    Country(CountryCode),
    Agency(CountryCode, String),
}

impl Releasee {
    pub fn admits(&self, node: &NodeId) -> bool {
        match self {
            Releasee::Country(cc) => node.country() == *cc,
            Releasee::Agency(cc, agency) => node.country() == *cc && node.agency() == agency,
        }
    }
}

/// The markings that bound who may ever see an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marking {
    pub tlp: pb::Tlp,
    pub releasable_to: Vec<Releasee>,
    pub recipients: Vec<NodeId>,
}

/// A validated alert with its origin set.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub id: AlertId,
    pub origin: NodeId,
    pub status: pb::Status,
    pub category: pb::Category,
    pub severity: pb::Severity,
    pub urgency: pb::Urgency,
    pub marking: Marking,
    pub expires: Option<SystemTime>,
    /// The full message, normalised (canonical id, origin filled in).
    pub body: pb::Alert,
}

impl Alert {
    /// Re-reads the typed fields of an alert that passed validation before it
    /// was stored.
    ///
    /// # Errors
    /// Only when stored data is corrupt; the rejection names the field.
    pub fn from_stored(body: pb::Alert) -> Result<Alert, Rejection> {
        validate::lift(body)
    }

    pub fn to_proto(&self) -> pb::Alert {
        self.body.clone()
    }

    /// Whether the alert jumps the queue when a link comes back: urgency
    /// IMMEDIATE or severity EXTREME.
    pub fn is_priority(&self) -> bool {
        self.urgency == pb::Urgency::Immediate || self.severity == pb::Severity::Extreme
    }

    /// Whether `expires` has passed at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

/// An alert as the broker stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: Seq,
    pub received_at: SystemTime,
    pub alert: Alert,
    /// Set for an alert imported from a peer broker.
    pub provenance: Option<Arc<pb::Provenance>>,
}

impl Record {
    pub fn to_proto(&self) -> pb::AlertRecord {
        pb::AlertRecord {
            seq: self.seq.0,
            received_at: Some(timestamp(self.received_at)),
            alert: Some(self.alert.to_proto()),
            provenance: self.provenance.as_deref().cloned(),
        }
    }
}

/// Converts a time to a protobuf timestamp (times before 1970 clamp to it).
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Converts a protobuf timestamp to a time; `None` when out of range or
/// before 1970.
pub fn system_time(ts: &prost_types::Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Microseconds since the Unix epoch (the store's time unit).
pub fn micros(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros()).unwrap_or(u64::MAX)
}

/// Inverse of [`micros`].
pub fn from_micros(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

/// The protobuf form of a node identity.
pub fn origin_proto(node: &NodeId) -> pb::Origin {
    pb::Origin {
        urn: node.to_string(),
        country: node.country().to_string(),
        agency: node.agency().to_owned(),
        node: node.node().to_owned(),
    }
}
