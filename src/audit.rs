//! The audit trail: an append-only, hash-chained log of every accepted
//! publish, delivery, policy refusal, authentication failure, receipt and
//! policy reload.
//!
//! Each record carries the SHA-256 of the record before it; its own hash
//! covers that and all of its fields, in a fixed canonical encoding (not the
//! storage encoding), so `verify` can recompute the chain from the records
//! alone and name the first one that was altered, removed or inserted.
//! Records are sequenced by the store's single writer, in the same commits as
//! the events they describe.

use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::alert::{AlertId, Seq, from_micros};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// An alert was accepted and stored.
    Published,
    /// An alert was sent to a feed (first attempt of a subscription).
    Delivered,
    /// A receipt was recorded (delivered or acknowledged).
    Receipt,
    /// The policy refused an action (publish, subscribe).
    Refused,
    /// A connection or call was refused for its certificate.
    AuthFailure,
    /// A new policy took effect.
    PolicyReloaded,
    /// A new policy file was refused; the old one stays in force.
    PolicyRejected,
    /// The store opened after accepting damage to its write-ahead log (an
    /// operator's `--wal-recovery` choice), or moved its sequence numbers
    /// past records a crash may have cut.
    Recovery,
    /// Alerts a federation peer stored (actor: the peer broker).
    Exported,
    /// Alerts received from a federation peer and stored.
    Imported,
    /// An alert from a federation peer was refused (the link goes on).
    ImportRefused,
    /// A federation link came up or went down.
    Link,
    /// An offline bundle was imported (actor: its sender) or exported
    /// (actor: its recipient), or a bundle was refused (actor: the caller).
    Bundle,
    BundleRefused,
}

impl AuditKind {
    pub fn name(self) -> &'static str {
        match self {
            AuditKind::Published => "published",
            AuditKind::Delivered => "delivered",
            AuditKind::Receipt => "receipt",
            AuditKind::Refused => "refused",
            AuditKind::AuthFailure => "auth_failure",
            AuditKind::PolicyReloaded => "policy_reloaded",
            AuditKind::PolicyRejected => "policy_rejected",
            AuditKind::Recovery => "recovery",
            AuditKind::Exported => "exported",
            AuditKind::Imported => "imported",
            AuditKind::ImportRefused => "import_refused",
            AuditKind::Link => "link",
            AuditKind::Bundle => "bundle",
            AuditKind::BundleRefused => "bundle_refused",
        }
    }
}

/// An event to be recorded; the store gives it a sequence, a time and its
/// place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub kind: AuditKind,
    /// Who acted: a node URN, or the remote address of an unauthenticated peer.
    pub actor: String,
    pub alert: Option<AlertId>,
    /// Free text: the feed, the reason, the policy digest…
    pub detail: String,
}

impl AuditEvent {
    /// The alerts of one origin that one commit accepted.
    pub fn published(origin: impl Into<String>, alerts: &[(Seq, AlertId)]) -> Self {
        let (alert, detail) = listing("", alerts);
        Self::new(AuditKind::Published, origin, alert, detail)
    }

    /// The first deliveries of one read of a feed.
    pub fn delivered(owner: impl Into<String>, feed: &str, alerts: &[(Seq, AlertId)]) -> Self {
        let (alert, detail) = listing(&format!("feed {feed}; "), alerts);
        Self::new(AuditKind::Delivered, owner, alert, detail)
    }

    /// Receipts of one kind, recipient and feed recorded together; `what`
    /// says which ("delivered; feed main", "acknowledged; note …").
    pub fn receipts(recipient: impl Into<String>, what: &str, alerts: &[AlertId]) -> Self {
        let (alert, detail) = match alerts {
            [one] => (Some(*one), what.to_owned()),
            many => {
                let ids: Vec<String> = many.iter().map(ToString::to_string).collect();
                (
                    None,
                    format!("{what}; {} alerts {}", many.len(), ids.join(" ")),
                )
            }
        };
        Self::new(AuditKind::Receipt, recipient, alert, detail)
    }

    /// Alerts of one answered batch of a federation link: exported to the
    /// peer (`Exported`) or imported from it (`Imported`).
    pub fn link_batch(
        kind: AuditKind,
        peer: impl Into<String>,
        what: &str,
        alerts: &[(Seq, AlertId)],
    ) -> Self {
        let (alert, detail) = listing(&format!("{what}; "), alerts);
        Self::new(kind, peer, alert, detail)
    }

    pub fn new(
        kind: AuditKind,
        actor: impl Into<String>,
        alert: Option<AlertId>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            actor: actor.into(),
            alert,
            detail: detail.into(),
        }
    }
}

/// The detail of an event about several alerts: one alert is named in the
/// record's alert field (`prefix` + "seq N"); several are listed as
/// `seq:id` pairs.
fn listing(prefix: &str, alerts: &[(Seq, AlertId)]) -> (Option<AlertId>, String) {
    match alerts {
        [(seq, id)] => (Some(*id), format!("{prefix}seq {seq}")),
        many => {
            let items: Vec<String> = many.iter().map(|(seq, id)| format!("{seq}:{id}")).collect();
            (
                None,
                format!("{prefix}{} alerts (seq:id) {}", many.len(), items.join(" ")),
            )
        }
    }
}

/// A stored audit record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuditRecord {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(uint64, tag = "2")]
    pub time_us: u64,
    #[prost(string, tag = "3")]
    pub kind: String,
    #[prost(string, tag = "4")]
    pub actor: String,
    #[prost(string, tag = "5")]
    pub alert_id: String,
    #[prost(string, tag = "6")]
    pub detail: String,
    #[prost(bytes = "vec", tag = "7")]
    pub prev_hash: Vec<u8>,
    #[prost(bytes = "vec", tag = "8")]
    pub hash: Vec<u8>,
}

/// A record as the `Admin.Audit` stream sends it (`None`: the stored record
/// under `seq` no longer decodes).
pub fn to_entry(seq: u64, record: Option<AuditRecord>) -> crate::proto::AuditEntry {
    match record {
        Some(r) => crate::proto::AuditEntry {
            seq,
            time_us: r.time_us,
            kind: r.kind,
            actor: r.actor,
            alert_id: r.alert_id,
            detail: r.detail,
            prev_hash: r.prev_hash,
            hash: r.hash,
            undecodable: false,
        },
        None => crate::proto::AuditEntry {
            seq,
            undecodable: true,
            ..Default::default()
        },
    }
}

/// The record an `Admin.Audit` entry carries, with its sequence number, as
/// [`verify`] takes it.
pub fn from_entry(e: crate::proto::AuditEntry) -> (u64, Option<AuditRecord>) {
    let record = (!e.undecodable).then_some(AuditRecord {
        seq: e.seq,
        time_us: e.time_us,
        kind: e.kind,
        actor: e.actor,
        alert_id: e.alert_id,
        detail: e.detail,
        prev_hash: e.prev_hash,
        hash: e.hash,
    });
    (e.seq, record)
}

impl AuditRecord {
    /// Builds the record that follows `prev_hash` and computes its hash.
    pub fn chain(seq: u64, time_us: u64, event: &AuditEvent, prev_hash: &[u8]) -> AuditRecord {
        let mut r = AuditRecord {
            seq,
            time_us,
            kind: event.kind.name().to_owned(),
            actor: event.actor.clone(),
            alert_id: event.alert.map(|a| a.to_string()).unwrap_or_default(),
            detail: event.detail.clone(),
            prev_hash: prev_hash.to_vec(),
            hash: Vec::new(),
        };
        r.hash = r.compute_hash();
        r
    }

    /// SHA-256 over the previous hash and every field, length-prefixed.
    pub fn compute_hash(&self) -> Vec<u8> {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(&self.prev_hash);
        field(&self.seq.to_be_bytes());
        field(&self.time_us.to_be_bytes());
        field(self.kind.as_bytes());
        field(self.actor.as_bytes());
        field(self.alert_id.as_bytes());
        field(self.detail.as_bytes());
        h.finalize().to_vec()
    }

    pub fn time(&self) -> SystemTime {
        from_micros(self.time_us)
    }
}

/// Where a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit record {seq} is broken: {reason}")]
pub struct Broken {
    pub seq: u64,
    pub reason: String,
}

/// Walks records in order and checks every link. Returns the number of
/// records and the last hash.
///
/// # Errors
/// The first broken record: altered content, a wrong link, or a gap.
pub fn verify(
    records: impl IntoIterator<Item = (u64, Option<AuditRecord>)>,
) -> Result<(u64, Vec<u8>), Broken> {
    let mut prev: Vec<u8> = Vec::new();
    let mut count = 0;
    for (expected_seq, (key, record)) in (1..).zip(records) {
        if key != expected_seq {
            return Err(Broken {
                seq: expected_seq,
                reason: format!("missing: the next record found is {key}"),
            });
        }
        let broken = |reason: &str| Broken {
            seq: key,
            reason: reason.to_owned(),
        };
        let Some(r) = record else {
            return Err(broken("it cannot be decoded (altered)"));
        };
        if r.seq != key {
            return Err(broken(
                "its sequence number does not match its place (altered)",
            ));
        }
        if r.prev_hash != prev {
            return Err(broken("it does not link to the record before it"));
        }
        if r.compute_hash() != r.hash {
            return Err(broken("its content does not match its hash (altered)"));
        }
        prev.clone_from(&r.hash);
        count += 1;
    }
    Ok((count, prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(records: Vec<AuditRecord>) -> Vec<(u64, Option<AuditRecord>)> {
        records.into_iter().map(|r| (r.seq, Some(r))).collect()
    }

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = Vec::new();
        (1..=n)
            .map(|seq| {
                let e = AuditEvent::new(
                    AuditKind::Published,
                    "urn:liaison:TJ:a:b",
                    None,
                    format!("#{seq}"),
                );
                let r = AuditRecord::chain(seq, 1000 + seq, &e, &prev);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(keyed(chain(5))).map(|(n, _)| n), Ok(5));
    }

    #[test]
    fn altering_removing_or_relinking_a_record_is_detected_at_that_record() {
        let mut altered = chain(5);
        altered[2].detail = "nothing to see".into();
        assert_eq!(verify(keyed(altered)).unwrap_err().seq, 3);

        let mut removed = chain(5);
        removed.remove(3);
        assert_eq!(verify(keyed(removed)).unwrap_err().seq, 4);

        let mut rehashed = chain(5);
        rehashed[1].detail = "forged".into();
        rehashed[1].hash = rehashed[1].compute_hash();
        assert_eq!(
            verify(keyed(rehashed)).unwrap_err().seq,
            3,
            "the next record no longer links"
        );

        let mut renumbered = keyed(chain(5));
        if let Some(r) = renumbered[4].1.as_mut() {
            r.seq = 1;
        }
        assert_eq!(verify(renumbered).unwrap_err().seq, 5);
        let mut garbled = keyed(chain(5));
        garbled[1].1 = None;
        assert_eq!(verify(garbled).unwrap_err().seq, 2);
    }
}
