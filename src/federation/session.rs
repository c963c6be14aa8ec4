//! One session of a federation link, the same on both sides: each sends
//! what its policy releases to the other from its export cursor, and
//! answers what the other offers, in order.
//!
//! Export: the cursor (`exported_through`, in the store) says which local
//! sequences are done; records past it are read in order, each released
//! one is offered (signed by this broker for its own alerts; imported ones
//! keep their origin's attestation), at most `window` unanswered. Answers
//! come in offer order; the cursor moves past each answered offer, and past
//! records not released to the peer. A session that ends — the link cut,
//! a broker killed — leaves the cursor at most a second behind (it is
//! saved with the store's checkpoints); the next session offers again from
//! there and the peer answers what it has as duplicates.
//!
//! Import: an offer's attestation is verified against the origin state's
//! CA ([`super::attest`]); the origin must be a country the peer speaks
//! for, or one whose own broker signed it (a relay); the alert must pass
//! validation and this broker's policy (the same rule, seen from the
//! peer's side). A refusal is answered with its reason, counted and
//! audited, and the link goes on. A storage failure is not a refusal: the
//! session ends, and the peer offers the alert again on the next one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Federation, PeerLink, attest};
use crate::agent::Problem;
use crate::alert::{self, AlertId, Record, Seq, micros};
use crate::audit::{AuditEvent, AuditKind};
use crate::broker::BrokerError;
use crate::policy::Destination;
use crate::proto as pb;
use crate::store::StoredLink;
use pb::link_frame::Frame;

/// Protocol version spoken.
pub const VERSION: u32 = 1;
/// Records read from the log at a time.
const SCAN: usize = 256;
/// Answers between two saves of the export cursor.
const SAVE_EVERY: u64 = 256;

fn frame(f: Frame) -> pb::LinkFrame {
    pb::LinkFrame { frame: Some(f) }
}

async fn send(out: &mpsc::Sender<pb::LinkFrame>, f: Frame) -> Result<(), Problem> {
    out.send(frame(f))
        .await
        .map_err(|_| Problem::Down("the link's outgoing stream closed".into()))
}

fn local_problem(e: BrokerError) -> Problem {
    Problem::Local(e.to_string())
}

/// Runs one session over an established stream until it fails, the peer
/// closes it, or `shutdown`. `inbound` is what the peer sends; `out` what
/// this side sends.
///
/// # Errors
/// Why the session ended, classified like the agent's link problems.
pub async fn run<S, E>(
    fed: &Federation,
    peer: &Arc<PeerLink>,
    mut inbound: S,
    out: mpsc::Sender<pb::LinkFrame>,
    shutdown: CancellationToken,
) -> Result<(), Problem>
where
    S: Stream<Item = Result<pb::LinkFrame, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    let config = &fed.inner.link;
    send(
        &out,
        Frame::Hello(pb::LinkHello {
            broker: fed.broker_id().to_string(),
            version: VERSION,
        }),
    )
    .await?;
    let hello = tokio::time::timeout(config.ack_timeout, inbound.next())
        .await
        .map_err(|_| Problem::Down("no hello from the peer".into()))?;
    match hello {
        Some(Ok(pb::LinkFrame {
            frame: Some(Frame::Hello(h)),
        })) if h.broker == peer.config.broker.to_string() => {}
        Some(Ok(f)) => {
            return Err(Problem::Refused(format!(
                "the peer's first frame is not the hello of {}: {f:?}",
                peer.config.broker
            )));
        }
        Some(Err(e)) => return Err(Problem::Down(e.to_string())),
        None => return Err(Problem::Down("the peer closed the link".into())),
    }
    peer.link.contact();
    let broker = &fed.inner.broker;
    broker
        .audit_event(AuditEvent::new(
            AuditKind::Link,
            peer.config.broker.to_string(),
            None,
            format!("link with {} up", peer.config.name),
        ))
        .await;
    let state = Arc::new(std::sync::Mutex::new(
        broker.load_link(&peer.config.name).map_err(local_problem)?,
    ));
    let mut exporter = Exporter::new(fed, peer, state.clone());
    let mut importer = Importer::new(fed, peer, state);
    let result = session_loop(
        fed,
        peer,
        &mut inbound,
        &out,
        &mut exporter,
        &mut importer,
        shutdown,
    )
    .await;
    exporter.save();
    let detail = match &result {
        Ok(()) => format!("link with {} closed", peer.config.name),
        Err(p) => format!("link with {} down: {p:?}", peer.config.name),
    };
    broker
        .audit_event(AuditEvent::new(
            AuditKind::Link,
            peer.config.broker.to_string(),
            None,
            detail,
        ))
        .await;
    result
}

async fn session_loop<S, E>(
    fed: &Federation,
    peer: &Arc<PeerLink>,
    inbound: &mut S,
    out: &mpsc::Sender<pb::LinkFrame>,
    exporter: &mut Exporter,
    importer: &mut Importer,
    shutdown: CancellationToken,
) -> Result<(), Problem>
where
    S: Stream<Item = Result<pb::LinkFrame, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    let config = &fed.inner.link;
    let mut head = fed.inner.broker.watch_head();
    let mut policy = fed.inner.broker.watch_policy();
    let mut heartbeat = tokio::time::interval(config.keepalive_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        exporter.fill(out).await?;
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = inbound.next() => {
                let f = match next {
                    None => return Err(Problem::Down("the peer closed the link".into())),
                    Some(Err(e)) => return Err(Problem::Down(e.to_string())),
                    Some(Ok(pb::LinkFrame { frame: Some(f) })) => f,
                    Some(Ok(_)) => return Err(Problem::Down("an empty frame from the peer".into())),
                };
                peer.link.contact();
                match f {
                    Frame::Offer(offer) => importer.offer(offer).await,
                    Frame::Answer(answer) => exporter.answer(&answer).await?,
                    Frame::Receipt(_) | Frame::Heartbeat(_) => {}
                    Frame::Hello(_) => return Err(Problem::Down("a second hello from the peer".into())),
                }
            }
            Some(answer) = importer.pending.next(), if !importer.pending.is_empty() => {
                send(out, Frame::Answer(answer?)).await?;
                importer.flush_audit().await;
            }
            _ = head.changed(), if exporter.caught_up => {}
            _ = policy.changed() => {}
            _ = heartbeat.tick() => {
                send(out, Frame::Heartbeat(pb::Heartbeat {})).await?;
                exporter.check_stall(config.ack_timeout)?;
                exporter.flush_audit().await;
                importer.flush_audit().await;
            }
        }
    }
}

/// The export half: cursor, offers in flight, counters.
struct Exporter {
    fed: Federation,
    peer: Arc<PeerLink>,
    /// The link's durable state, shared with the importer.
    state: Shared,
    /// The next local sequence to read.
    next: u64,
    /// Offers sent and not yet answered, oldest first.
    pending: VecDeque<(u64, AlertId)>,
    /// Nothing past `next` to read (wait for the head to move).
    caught_up: bool,
    /// When the oldest pending offer was sent or last answered.
    progress: Instant,
    unsaved: u64,
    stored: Vec<(Seq, AlertId)>,
}

impl Exporter {
    fn new(fed: &Federation, peer: &Arc<PeerLink>, state: Shared) -> Exporter {
        let next = lock(&state).exported_through + 1;
        Exporter {
            next,
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
    async fn fill(&mut self, out: &mpsc::Sender<pb::LinkFrame>) -> Result<(), Problem> {
        let broker = &self.fed.inner.broker;
        let window = self.fed.inner.link.window.max(1);
        while self.pending.len() < window {
            if let Some(first) = broker.first_seq().map_err(local_problem)?
                && first.0 > self.next
            {
                let missed = first.0 - self.next;
                warn!(peer = %self.peer.config.name, missed, "retention removed alerts before the link could export them");
                metrics::counter!(crate::metrics::LINK_MISSED, "peer" => self.peer.config.name.clone()).increment(missed);
                lock(&self.state).missed += missed;
                self.next = first.0;
            }
            let records = broker
                .records_from(Seq(self.next), SCAN)
                .map_err(local_problem)?;
            if records.is_empty() {
                self.caught_up = true;
                self.publish_live();
                return Ok(());
            }
            self.caught_up = false;
            for record in records {
                if self.pending.len() >= window {
                    break;
                }
                self.next = record.seq.0 + 1;
                if let Some(offer) = self.offer_for(&record)? {
                    if self.pending.is_empty() {
                        self.progress = Instant::now();
                    }
                    self.pending.push_back((record.seq.0, record.alert.id));
                    send(out, Frame::Offer(offer)).await?;
                }
            }
            self.publish_live();
        }
        Ok(())
    }

    /// The offer of `record`, if the policy releases it to the peer.
    fn offer_for(&self, record: &Record) -> Result<Option<pb::Offer>, Problem> {
        if !self.releases(record) {
            return Ok(None);
        }
        let local = self.fed.broker_id().to_string();
        let (attestation, mut path) = match &record.provenance {
            Some(p) => (p.attestation.clone(), p.path.clone()),
            None => (
                Some(
                    self.fed
                        .inner
                        .signer
                        .attest(record)
                        .map_err(Problem::Local)?,
                ),
                Vec::new(),
            ),
        };
        path.push(local);
        Ok(Some(pb::Offer {
            seq: record.seq.0,
            attestation,
            path,
        }))
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
    async fn answer(&mut self, answer: &pb::Answer) -> Result<(), Problem> {
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
        self.pending
            .front()
            .map_or(self.next.saturating_sub(1), |(s, _)| s - 1)
    }

    fn publish_live(&self) {
        let (through, in_flight) = (self.cursor(), self.pending.len());
        self.peer.set_live(|l| {
            l.exported_through = through;
            l.in_flight = in_flight;
        });
    }

    /// Saves the cursor and counters (durable with the next checkpoint).
    fn save(&mut self) {
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
    fn check_stall(&self, limit: Duration) -> Result<(), Problem> {
        if !self.pending.is_empty() && self.progress.elapsed() > limit {
            return Err(Problem::Down(format!(
                "the peer answered nothing for {limit:?}: the link stalled"
            )));
        }
        Ok(())
    }

    async fn flush_audit(&mut self) {
        if self.stored.is_empty() {
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

/// The durable state of a link during a session, shared by its two
/// halves. A std mutex: held for a field update or a copy.
type Shared = Arc<std::sync::Mutex<StoredLink>>;

/// The answer to one offer, or a failure that ends the session.
type Answering = BoxFuture<'static, Result<pb::Answer, Problem>>;

/// The import half: offers being stored, answered in order.
struct Importer {
    fed: Federation,
    peer: Arc<PeerLink>,
    pending: FuturesOrdered<Answering>,
    stored: Arc<std::sync::Mutex<Vec<(Seq, AlertId)>>>,
    state: Shared,
}

impl Importer {
    fn new(fed: &Federation, peer: &Arc<PeerLink>, state: Shared) -> Importer {
        Importer {
            fed: fed.clone(),
            peer: peer.clone(),
            pending: FuturesOrdered::new(),
            stored: Arc::default(),
            state,
        }
    }

    /// Checks and stores one offer; its answer joins the queue.
    async fn offer(&mut self, offer: pb::Offer) {
        let seq = offer.seq;
        let checked = self.check(offer);
        let answering: Answering = match checked {
            Err(reason) => {
                self.refused(seq, &reason).await;
                Box::pin(async move { Ok(answer(seq, pb::AnswerKind::Refused, reason)) })
            }
            Ok((alert, provenance)) => {
                let id = alert.id;
                match self.fed.inner.broker.submit_import(alert, provenance).await {
                    Err(e) => Box::pin(async move { Err(local_problem(e)) }),
                    Ok(pending) => {
                        let stored = self.stored.clone();
                        let peer = self.peer.config.name.clone();
                        Box::pin(async move {
                            match pending.await {
                                Ok(ack) if ack.duplicate => {
                                    Ok(answer(seq, pb::AnswerKind::Duplicate, String::new()))
                                }
                                Ok(ack) => {
                                    lock(&stored).push((ack.seq, id));
                                    metrics::counter!(crate::metrics::LINK_IMPORTED, "peer" => peer).increment(1);
                                    Ok(answer(seq, pb::AnswerKind::Stored, String::new()))
                                }
                                Err(BrokerError::Store(crate::store::StoreError::IdConflict)) => {
                                    Ok(answer(
                                        seq,
                                        pb::AnswerKind::Refused,
                                        "alert.id: already used by another origin's alert".into(),
                                    ))
                                }
                                Err(e) => Err(local_problem(e)),
                            }
                        })
                    }
                }
            }
        };
        self.pending.push_back(answering);
    }

    /// Verifies an offer; the alert and its provenance, or why not.
    fn check(&self, offer: pb::Offer) -> Result<(alert::Alert, pb::Provenance), String> {
        let inner = &self.fed.inner;
        let attestation = offer.attestation.ok_or("offer.attestation: required")?;
        let attested = attest::verify(&attestation, &inner.origins).map_err(|e| e.to_string())?;
        let origin_country = attested.origin.country();
        let speaks_for = self.peer.config.countries.contains(&origin_country);
        if !speaks_for && offer.path.len() < 2 {
            return Err(format!(
                "origin country {origin_country}: peer {} may not speak for it, and the alert was not relayed from its own broker",
                self.peer.config.name
            ));
        }
        let local = self.fed.broker_id().to_string();
        match (offer.path.first(), offer.path.last()) {
            (Some(first), Some(last))
                if *first == attested.signer.to_string()
                    && *last == self.peer.config.broker.to_string() => {}
            _ => {
                return Err(format!(
                    "offer.path: must run from the origin broker {} to the peer {}",
                    attested.signer, self.peer.config.broker
                ));
            }
        }
        if offer.path.contains(&local) {
            return Err("offer.path: this broker is on it already (a loop)".into());
        }
        let statement = attested.statement;
        let body = statement
            .alert
            .ok_or("attestation: the statement holds no alert")?;
        let alert = alert::validate(
            body.clone(),
            &attested.origin,
            &inner.broker.config().limits,
            SystemTime::now(),
        )
        .map_err(|e| e.to_string())?;
        if alert.body != body {
            return Err(
                "attestation: the alert is not in the form its origin broker stores".into(),
            );
        }
        let provenance = pb::Provenance {
            origin_broker: attested.signer.to_string(),
            origin_received_at: statement.received_at,
            path: offer.path,
            attestation: Some(attestation),
        };
        // This broker's policy, as the peer's side applies it: seen from
        // the peer, could it release this alert to us?
        let from = Destination {
            local: self.peer.config.broker.country(),
            country: self.fed.broker_id().country(),
            broker: &local,
        };
        inner
            .broker
            .policy()
            .may_export(&alert, Some(&provenance), from)
            .map_err(|w| format!("policy: {w}"))?;
        Ok((alert, provenance))
    }

    async fn refused(&mut self, seq: u64, reason: &str) {
        let name = self.peer.config.name.clone();
        warn!(peer = %name, offer = seq, %reason, "refused an alert from a federation peer");
        metrics::counter!(crate::metrics::LINK_REFUSED, "peer" => name.clone()).increment(1);
        self.fed
            .inner
            .broker
            .audit_event(AuditEvent::new(
                AuditKind::ImportRefused,
                self.peer.config.broker.to_string(),
                None,
                format!("from peer {name}, offer {seq}: {reason}"),
            ))
            .await;
        self.count(|s| s.refused += 1);
    }

    /// Counts in the link's state (saved with the exporter's next save).
    fn count(&self, f: impl FnOnce(&mut StoredLink)) {
        f(&mut lock(&self.state));
    }

    async fn flush_audit(&mut self) {
        let batch = std::mem::take(&mut *lock(&self.stored));
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        self.count(|s| s.imported += n);
        info!(peer = %self.peer.config.name, alerts = n, "imported");
        self.fed
            .inner
            .broker
            .audit_event(AuditEvent::link_batch(
                AuditKind::Imported,
                self.peer.config.broker.to_string(),
                &format!("from peer {}", self.peer.config.name),
                &batch,
            ))
            .await;
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn answer(seq: u64, kind: pb::AnswerKind, reason: String) -> pb::Answer {
    pb::Answer {
        seq,
        kind: kind as i32,
        reason,
    }
}
