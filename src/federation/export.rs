//! The export half of a link's session: the durable cursor over the local
//! log, the offers in flight, and the peer's answers
//! ([`super::session`] describes the protocol).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::warn;

use super::session::{Shared, local_problem, lock, send};
use super::{Federation, PeerLink};
use crate::agent::Problem;
use crate::alert::{AlertId, Record, Seq, micros};
use crate::audit::{AuditEvent, AuditKind};
use crate::policy::Destination;
use crate::proto as pb;
use pb::link_frame::Frame;

/// Records read from the log at a time.
const SCAN: usize = 256;
/// Answers between two saves of the export cursor.
const SAVE_EVERY: u64 = 256;
/// This broker's own alerts signed under one signature at most
/// ([`super::attest::Signer::attest_batch`]): a batch's proofs grow by a
/// hash per doubling, its signature is shared.
const SIGN_BATCH: usize = 64;

/// The export half: cursor, offers in flight, counters.
pub(super) struct Exporter {
    fed: Federation,
    peer: Arc<PeerLink>,
    /// The link's durable state, shared with the importer.
    state: Shared,
    /// The next local sequence to read from the store.
    next: u64,
    /// Records read and not yet decided, oldest first.
    ahead: VecDeque<Arc<Record>>,
    /// The newest sequence decided (offered, or not for the peer).
    passed: u64,
    /// Offers sent and not yet answered, oldest first.
    pending: VecDeque<(u64, AlertId)>,
    /// Nothing past `next` to read (wait for the head to move).
    pub(super) caught_up: bool,
    /// When the oldest pending offer was sent or last answered.
    progress: Instant,
    unsaved: u64,
    stored: Vec<(Seq, AlertId)>,
}

impl Exporter {
    pub(super) fn new(fed: &Federation, peer: &Arc<PeerLink>, state: Shared) -> Exporter {
        let through = lock(&state).exported_through;
        Exporter {
            next: through + 1,
            ahead: VecDeque::new(),
            passed: through,
            state,
            fed: fed.clone(),
            peer: peer.clone(),
            pending: VecDeque::new(),
            caught_up: false,
            progress: Instant::now(),
            unsaved: 0,
            stored: Vec::new(),
        }
    }

    fn destination(&self) -> (crate::identity::CountryCode, String) {
        (
            self.peer.config.broker.country(),
            self.peer.config.broker.to_string(),
        )
    }

    /// Offers released records while the window has room.
    /// While offers are in flight, it waits until a batch's worth of the
    /// window is free, so that a busy link signs in batches rather than
    /// one alert per answer.
    pub(super) async fn fill(&mut self, out: &mpsc::Sender<pb::LinkFrame>) -> Result<(), Problem> {
        let window = self.fed.inner.link.window.max(1);
        let batch = SIGN_BATCH.min(window);
        while self.pending.len() < window {
            if !self.pending.is_empty() && window - self.pending.len() < batch {
                return Ok(());
            }
            if self.ahead.is_empty() && !self.read_ahead()? {
                self.caught_up = true;
                self.publish_live();
                return Ok(());
            }
            self.caught_up = false;
            let room = (window - self.pending.len()).min(SIGN_BATCH);
            let offers = self.next_offers(room)?;
            if self.pending.is_empty() && !offers.is_empty() {
                self.progress = Instant::now();
            }
            // In flight before they are sent: the cursor stays before them
            // if the link fails while sending.
            self.pending
                .extend(offers.iter().map(|(offer, id)| (offer.seq, *id)));
            for (offer, _) in offers {
                send(out, Frame::Offer(offer)).await?;
            }
            self.publish_live();
        }
        Ok(())
    }

    /// Decides records from `ahead` until `room` are released to the peer;
    /// their offers, this broker's own alerts signed as one batch. The
    /// records passed over are not for the peer.
    fn next_offers(&mut self, room: usize) -> Result<Vec<(pb::Offer, AlertId)>, Problem> {
        let mut released = Vec::new();
        let mut passed = self.passed;
        while released.len() < room
            && let Some(record) = self.ahead.pop_front()
        {
            passed = record.seq.0;
            if self.releases(&record) {
                released.push(record);
            }
        }
        let own: Vec<&Record> = released
            .iter()
            .filter(|r| r.provenance.is_none())
            .map(|r| r.as_ref())
            .collect();
        let mut signed = self
            .fed
            .inner
            .signer
            .attest_batch(&own)
            .map_err(Problem::Local)?
            .into_iter();
        let local = self.fed.broker_id().to_string();
        let offers = released
            .iter()
            .map(|record| {
                let (attestation, mut path) = match &record.provenance {
                    Some(p) => (p.attestation.clone(), p.path.clone()),
                    None => (signed.next(), Vec::new()),
                };
                path.push(local.clone());
                let offer = pb::Offer {
                    seq: record.seq.0,
                    attestation,
                    path,
                };
                (offer, record.alert.id)
            })
            .collect();
        self.passed = passed;
        Ok(offers)
    }

    /// Reads the next records past the cursor into `ahead` (read once,
    /// offered as the window allows); false when there are none.
    fn read_ahead(&mut self) -> Result<bool, Problem> {
        let broker = &self.fed.inner.broker;
        if let Some(first) = broker.first_seq().map_err(local_problem)?
            && first.0 > self.next
        {
            let missed = first.0 - self.next;
            warn!(peer = %self.peer.config.name, missed, "retention removed alerts before the link could export them");
            metrics::counter!(crate::metrics::LINK_MISSED, "peer" => self.peer.config.name.clone())
                .increment(missed);
            lock(&self.state).missed += missed;
            self.next = first.0;
            self.passed = self.passed.max(first.0 - 1);
        }
        let records = broker
            .records_from(Seq(self.next), SCAN)
            .map_err(local_problem)?;
        let Some(last) = records.last() else {
            return Ok(false);
        };
        self.next = last.seq.0 + 1;
        self.ahead.extend(records);
        Ok(true)
    }

    /// Whether the policy releases `record` to the peer: itself, and for an
    /// update or cancel, each earlier alert it references that is stored
    /// here (so that a cancel cannot reveal an alert the peer never got).
    fn releases(&self, record: &Record) -> bool {
        let policy = self.fed.inner.broker.policy();
        let (country, broker) = self.destination();
        let to = Destination {
            local: self.fed.broker_id().country(),
            country,
            broker: &broker,
        };
        let allowed = |r: &Record| {
            policy
                .may_export(&r.alert, r.provenance.as_deref(), to)
                .is_ok()
        };
        if !allowed(record) {
            return false;
        }
        record.alert.body.references.iter().all(|reference| {
            let Ok(uuid) = uuid::Uuid::parse_str(reference) else {
                return false;
            };
            match self.fed.inner.broker.record_by_id(&AlertId(uuid)) {
                Ok(Some(earlier)) => allowed(&earlier),
                Ok(None) => true,
                Err(_) => false,
            }
        })
    }

    /// Takes the peer's answer to the oldest offer.
    pub(super) async fn answer(&mut self, answer: &pb::Answer) -> Result<(), Problem> {
        let Some(&(seq, id)) = self.pending.front() else {
            return Err(Problem::Down(format!(
                "the peer answered offer {} that was not sent",
                answer.seq
            )));
        };
        if answer.seq != seq {
            return Err(Problem::Down(format!(
                "the peer answered offer {} while {seq} was the oldest unanswered",
                answer.seq
            )));
        }
        self.pending.pop_front();
        self.progress = Instant::now();
        let name = self.peer.config.name.clone();
        match pb::AnswerKind::try_from(answer.kind) {
            Ok(pb::AnswerKind::Stored) => {
                lock(&self.state).exported += 1;
                self.stored.push((Seq(seq), id));
                metrics::counter!(crate::metrics::LINK_EXPORTED, "peer" => name).increment(1);
            }
            Ok(pb::AnswerKind::Duplicate) => lock(&self.state).duplicates += 1,
            _ => {
                lock(&self.state).refused_by_peer += 1;
                metrics::counter!(crate::metrics::LINK_REFUSED_BY_PEER, "peer" => name)
                    .increment(1);
                warn!(peer = %self.peer.config.name, %id, reason = %answer.reason, "the peer refused an exported alert");
                self.fed
                    .inner
                    .broker
                    .audit_event(AuditEvent::new(
                        AuditKind::Refused,
                        self.peer.config.broker.to_string(),
                        Some(id),
                        format!(
                            "refused by peer {}: {}",
                            self.peer.config.name, answer.reason
                        ),
                    ))
                    .await;
            }
        }
        self.unsaved += 1;
        if self.unsaved >= SAVE_EVERY || self.pending.is_empty() {
            self.save();
        }
        Ok(())
    }

    fn cursor(&self) -> u64 {
        self.pending.front().map_or(self.passed, |(s, _)| s - 1)
    }

    fn publish_live(&self) {
        let through = self.cursor();
        self.peer.set_live(|l| l.exported_through = through);
        let head = self.fed.inner.broker.head().0;
        metrics::gauge!(crate::metrics::LINK_BACKLOG, "peer" => self.peer.config.name.clone())
            .set(head.saturating_sub(through) as f64);
    }

    /// Saves the cursor and counters (durable with the next checkpoint).
    pub(super) fn save(&mut self) {
        let cursor = self.cursor();
        let state = {
            let mut state = lock(&self.state);
            state.exported_through = cursor.max(state.exported_through);
            state.last_contact_us = micros(SystemTime::now());
            state.clone()
        };
        self.unsaved = 0;
        self.publish_live();
        if let Err(e) = self
            .fed
            .inner
            .broker
            .save_link(&self.peer.config.name, &state)
        {
            warn!(peer = %self.peer.config.name, error = %e, "cannot save the link's cursor; it is saved again with the next answers");
        }
    }

    /// An offer unanswered for `limit` means the link stalled.
    pub(super) fn check_stall(&self, limit: Duration) -> Result<(), Problem> {
        if !self.pending.is_empty() && self.progress.elapsed() > limit {
            return Err(Problem::Down(format!(
                "the peer answered nothing for {limit:?}: the link stalled"
            )));
        }
        Ok(())
    }

    /// Audits what the peer stored since the last time: when `force`d, or
    /// once a batch has gathered or nothing is left in flight.
    pub(super) async fn flush_audit(&mut self, force: bool) {
        let due =
            force || self.stored.len() >= super::import::AUDIT_BATCH || self.pending.is_empty();
        if self.stored.is_empty() || !due {
            return;
        }
        let batch = std::mem::take(&mut self.stored);
        self.fed
            .inner
            .broker
            .audit_event(AuditEvent::link_batch(
                AuditKind::Exported,
                self.peer.config.broker.to_string(),
                &format!("stored by peer {}", self.peer.config.name),
                &batch,
            ))
            .await;
    }
}
