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

use std::sync::Arc;

use futures::stream::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::export::Exporter;
use super::import::Importer;
use super::receipts::{ReceiptReceiver, ReceiptSender};
use super::{Federation, PeerLink};
use crate::agent::Problem;
use crate::audit::{AuditEvent, AuditKind};
use crate::broker::BrokerError;
use crate::proto as pb;
use crate::store::StoredLink;
use pb::link_frame::Frame;

/// Protocol version spoken.
pub const VERSION: u32 = 1;
fn frame(f: Frame) -> pb::LinkFrame {
    pb::LinkFrame { frame: Some(f) }
}

pub(super) async fn send(out: &mpsc::Sender<pb::LinkFrame>, f: Frame) -> Result<(), Problem> {
    out.send(frame(f))
        .await
        .map_err(|_| Problem::Down("the link's outgoing stream closed".into()))
}

pub(super) fn local_problem(e: BrokerError) -> Problem {
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
    let up = metrics::gauge!(crate::metrics::LINK_UP, "peer" => peer.config.name.clone());
    up.set(1.0);
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
    let mut halves = Halves {
        exporter: Exporter::new(fed, peer, state.clone()),
        importer: Importer::new(fed, peer, state.clone()),
        sender: ReceiptSender::new(fed, peer, state.clone()),
        receiver: ReceiptReceiver::new(fed, peer, state),
    };
    let result = session_loop(fed, peer, &mut inbound, &out, &mut halves, shutdown).await;
    up.set(0.0);
    halves.importer.flush_audit(true).await;
    halves.exporter.flush_audit(true).await;
    halves.exporter.save();
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

/// The four parts of a session: alerts out and in, receipts out and in.
struct Halves {
    exporter: Exporter,
    importer: Importer,
    sender: ReceiptSender,
    receiver: ReceiptReceiver,
}

async fn session_loop<S, E>(
    fed: &Federation,
    peer: &Arc<PeerLink>,
    inbound: &mut S,
    out: &mpsc::Sender<pb::LinkFrame>,
    halves: &mut Halves,
    shutdown: CancellationToken,
) -> Result<(), Problem>
where
    S: Stream<Item = Result<pb::LinkFrame, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    let config = &fed.inner.link;
    let mut head = fed.inner.broker.watch_head();
    let mut policy = fed.inner.broker.watch_policy();
    let mut receipts = fed.inner.broker.watch_receipts();
    let Halves {
        exporter,
        importer,
        sender,
        receiver,
    } = halves;
    let mut heartbeat = tokio::time::interval(config.keepalive_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Each reads the store only when there may be news for it.
        if !exporter.caught_up {
            exporter.fill(out).await?;
        }
        if !sender.caught_up {
            sender.fill(out).await?;
        }
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
                    Frame::Offer(offer) => importer.offer(offer).await?,
                    Frame::Answer(answer) => {
                        exporter.answer(&answer).await?;
                        exporter.flush_audit(false).await;
                    }
                    Frame::Receipt(r) => receiver.receive(r),
                    Frame::ReceiptsStored(s) => {
                        sender.stored(s.through);
                        exporter.save();
                    }
                    Frame::Heartbeat(_) => {}
                    Frame::Hello(_) => return Err(Problem::Down("a second hello from the peer".into())),
                }
            }
            Some(answer) = importer.pending.next(), if !importer.pending.is_empty() => {
                send(out, Frame::Answer(answer?)).await?;
                importer.flush_audit(false).await;
            }
            Some(stored) = receiver.pending.next(), if !receiver.pending.is_empty() => {
                send(out, Frame::ReceiptsStored(pb::ReceiptsStored { through: stored? })).await?;
            }
            _ = head.changed(), if exporter.caught_up => exporter.caught_up = false,
            _ = receipts.changed(), if sender.caught_up => sender.caught_up = false,
            // A new policy may release what the old one did not; records
            // already passed stay passed (the cursor does not go back).
            _ = policy.changed() => {}
            _ = heartbeat.tick() => {
                send(out, Frame::Heartbeat(pb::Heartbeat {})).await?;
                exporter.check_stall(config.ack_timeout)?;
                exporter.flush_audit(true).await;
                importer.flush_audit(true).await;
            }
        }
    }
}

/// The durable state of a link during a session, shared by its two
/// halves. A std mutex: held for a field update or a copy.
pub(super) type Shared = Arc<std::sync::Mutex<StoredLink>>;

pub(super) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn answer(seq: u64, kind: pb::AnswerKind, reason: String) -> pb::Answer {
    pb::Answer {
        seq,
        kind: kind as i32,
        reason,
    }
}
