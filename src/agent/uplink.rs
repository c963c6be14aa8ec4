//! The uplink: drains the outbox to the upstream broker over `PublishStream`.
//!
//! An entry leaves the outbox only when the broker acknowledged it (or it
//! expired, or the broker refused it for good — both counted and logged).
//! Alert ids are chosen at the source, so anything resent after a cut —
//! sent but unacknowledged — is recognised upstream as a duplicate.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{debug, error, warn};

use super::link::{self, Backoff, Link, LinkConfig, Problem};
use super::pacing::{Pacer, Stamp};
use crate::alert::Seq;
use crate::proto as pb;
use crate::proto::broker_client::BrokerClient;
use crate::store::{Outcome, Store, StoreError};

/// How often a waiting uplink looks for expired alerts.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Whether an error answer means "this alert will never be accepted", so
/// retrying it would block the queue forever. The broker says when an
/// alert may be accepted later unchanged (`retry_later`: its `sent` lies in
/// the broker's future, accepted once the clocks agree).
fn permanent(e: &pb::PublishError) -> bool {
    use tonic::Code;
    let final_codes = [
        Code::InvalidArgument,
        Code::PermissionDenied,
        Code::FailedPrecondition,
        Code::OutOfRange,
        Code::AlreadyExists,
    ];
    final_codes.iter().any(|c| *c as i32 == e.code) && !e.retry_later
}

pub(super) async fn run(
    store: Store,
    endpoint: Endpoint,
    link: Link,
    config: LinkConfig,
    shutdown: CancellationToken,
) {
    let mut learnt = Learnt {
        backoff: Backoff::new(&config),
        pacer: Pacer::new(config.min_in_flight_bytes, Instant::now().into_std()),
    };
    let mut meta = store.watch_meta();
    // What was learnt of the link (pacing.rs) outlives connections.
    // The connection, kept between sessions while it works: an alert
    // published at an idle post then leaves at once instead of after a TCP
    // and TLS handshake (three round trips: about two seconds on a
    // satellite link). After a failure the next session makes a new one,
    // so that a handshake hanging on a broken path is dropped with it.
    let mut channel: Option<tonic::transport::Channel> = None;
    loop {
        // No session is running here, so nothing is in flight: expire what
        // can no longer be sent.
        if let Err(e) = sweep_expired(&store).await {
            warn!(error = %e, "cannot sweep expired alerts from the outbox");
        }
        if store.meta().outbox_count == 0 {
            // Wait for something to forward (and sweep again now and then).
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = meta.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
            continue;
        }
        let mut client = BrokerClient::new(
            channel
                .get_or_insert_with(|| endpoint.connect_lazy())
                .clone(),
        );
        // Alerts are text: gzip-compressed unless upstream said it does
        // not take gzip (its answers, a few bytes each, are not).
        if config.compress && link.upstream_accepts_gzip() {
            client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        learnt.pacer.reconnected(Instant::now().into_std());
        let ends = session(&store, client, &link, &config, &shutdown, &mut learnt);
        if let Err(problem) = ends.await {
            channel = None;
            link.failed(&problem);
            let delay = learnt.backoff.delay(&problem);
            debug!(?delay, "uplink retrying");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// Removes queued alerts whose `expires` has passed (counted as expired).
async fn sweep_expired(store: &Store) -> Result<(), StoreError> {
    let now = SystemTime::now();
    let expired: Vec<Seq> = store
        .outbox_peek(&HashSet::new(), 10_000)?
        .iter()
        .filter(|r| r.alert.expired_at(now))
        .map(|r| {
            warn!(id = %r.alert.id, seq = r.seq.0, "alert expired before it could be forwarded; not sent");
            r.seq
        })
        .collect();
    if expired.is_empty() {
        return Ok(());
    }
    store.outbox_done(expired, Outcome::Expired).await
}

fn local(e: StoreError) -> Problem {
    Problem::Local(format!("the agent's store: {e}"))
}

/// Alerts sent and not yet answered, oldest first, with their send time.
struct InFlight {
    queue: VecDeque<Sent>,
    /// Their encoded bytes.
    bytes: usize,
    /// Requests sent on this stream so far (the index of the next one).
    sent: u64,
    /// Sent and not yet out of the outbox: unanswered, or answered with the
    /// removal still committing.
    seqs: HashSet<Seq>,
}

/// One request of the stream awaiting its answer.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// Its index in the stream, which its answer must carry.
    index: u64,
    seq: Seq,
    at: Instant,
    bytes: usize,
    stamp: Stamp,
}

impl InFlight {
    /// The outbox removal of `seqs` is durable.
    fn settled(&mut self, seqs: Vec<Seq>) {
        for seq in &seqs {
            self.seqs.remove(seq);
        }
    }
}

/// One PublishStream: sends queued alerts (at most `window` unacknowledged),
/// processes acknowledgements in order, and ends when the outbox is empty.
/// What the uplink learns across sessions: the retry delay, and the link
/// (pacing.rs).
struct Learnt {
    backoff: Backoff,
    pacer: Pacer,
}

/// Outbox removals of answered alerts, committing while the next alerts go
/// out.
type Settling = FuturesUnordered<BoxFuture<'static, Result<Vec<Seq>, StoreError>>>;

async fn session(
    store: &Store,
    client: BrokerClient<tonic::transport::Channel>,
    link: &Link,
    config: &LinkConfig,
    shutdown: &CancellationToken,
    learnt: &mut Learnt,
) -> Result<(), Problem> {
    let mut settling = Settling::new();
    let result = exchange(store, client, link, config, shutdown, learnt, &mut settling).await;
    // However the session ended (shutdown, a stall, a broken stream), the
    // removals of what upstream acknowledged still commit: dropping them
    // would send those alerts again in the next session.
    while let Some(settled) = settling.next().await {
        if let Err(e) = settled
            && result.is_ok()
        {
            return Err(local(e));
        }
    }
    result
}

async fn exchange(
    store: &Store,
    mut client: BrokerClient<tonic::transport::Channel>,
    link: &Link,
    config: &LinkConfig,
    shutdown: &CancellationToken,
    learnt: &mut Learnt,
    settling: &mut Settling,
) -> Result<(), Problem> {
    let Learnt { backoff, pacer } = learnt;
    let (tx, rx) = mpsc::channel(config.window);
    // The first alerts go out with the request, not after the answer's
    // headers: waiting for those would cost every new session a round trip
    // (600 ms on a satellite link) before its first alert left the post.
    let call = link::open_response(config, async {
        let opened = client.publish_stream(ReceiverStream::new(rx)).await;
        if let Err(status) = &opened {
            link.note_refused_compression(status);
        }
        opened
    });
    tokio::pin!(call);
    let mut responses = None;
    let mut meta = store.watch_meta();
    let mut in_flight = InFlight {
        queue: VecDeque::new(),
        bytes: 0,
        sent: 0,
        seqs: HashSet::new(),
    };
    // Until its first answer, the connection may still be in its handshake.
    let mut answered = false;
    // Waiting for each removal's flush before sending more would leave the
    // link idle for one local commit per round trip. The seqs of removals
    // in `settling` stay in `in_flight.seqs` until the removal is durable,
    // so they are not read from the outbox again.
    //
    // Slow start: a fresh connection sends a small first batch and doubles
    // it with every round of answers, up to the window, so that a link
    // that is up only briefly still carries some alerts all the way to an
    // acknowledgement instead of a whole window that is cut off unanswered.
    let mut window = config.first_window.clamp(1, config.window);
    loop {
        let room = window.saturating_sub(in_flight.queue.len());
        let mut found = false;
        if room > 0 && paced(&in_flight, pacer) {
            let batch = store.outbox_peek(&in_flight.seqs, room).map_err(local)?;
            let now = SystemTime::now();
            let mut expired = Vec::new();
            for record in batch {
                if !paced(&in_flight, pacer) {
                    break; // the rest waits for answers (peeked, not taken)
                }
                found = true;
                if record.alert.expired_at(now) {
                    warn!(id = %record.alert.id, seq = record.seq.0, "alert expired before it could be forwarded; not sent");
                    expired.push(record.seq);
                    continue;
                }
                let req = pb::PublishRequest {
                    alert: Some(record.alert.to_proto()),
                };
                let bytes = prost::Message::encoded_len(&req);
                tx.send(req)
                    .await
                    .map_err(|_| Problem::Down("upstream closed the publish stream".into()))?;
                in_flight.queue.push_back(Sent {
                    index: in_flight.sent,
                    seq: record.seq,
                    at: Instant::now(),
                    bytes,
                    stamp: pacer.sent(Instant::now().into_std(), in_flight.queue.is_empty()),
                });
                in_flight.bytes += bytes;
                in_flight.sent += 1;
                in_flight.seqs.insert(record.seq);
            }
            if !expired.is_empty() {
                store
                    .outbox_done(expired, Outcome::Expired)
                    .await
                    .map_err(local)?;
            }
        }
        let Some(oldest_sent) = in_flight.queue.front().map(|s| s.at) else {
            if found {
                continue; // everything in that batch had expired; look again
            }
            if let Some(settled) = settling.next().await {
                // Nothing unanswered, but removals still committing: what
                // they leave behind decides whether the outbox is empty.
                in_flight.settled(settled.map_err(local)?);
                backoff.reset();
                continue;
            }
            return Ok(()); // drained: close the stream
        };
        // The deadline runs from the oldest unanswered send, so wake-ups for
        // other reasons do not extend it.
        // Over a measured link, a stall is declared once the oldest alert
        // is well past when its answer was due (pacing.rs).
        let wait = pacer
            .stall_after(in_flight.bytes, !answered)
            .map_or(config.ack_timeout, |w| w.min(config.ack_timeout));
        let deadline = oldest_sent + wait;
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            changed = meta.changed(), if in_flight.queue.len() < window && paced(&in_flight, pacer) => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                debug!(in_flight = in_flight.queue.len(), bytes = in_flight.bytes, answered, ?pacer, "stall");
                return Err(Problem::Down(format!(
                    "no acknowledgement from upstream within {wait:?}: link stalled"
                )));
            }
            opened = &mut call, if responses.is_none() => {
                let opened = opened?;
                link.note_accepted(opened.metadata());
                responses = Some(opened.into_inner());
            }
            first = next_answer(&mut responses) => {
                let first = first.map_err(|s| Problem::of(&s))?;
                let Some(responses) = responses.as_mut() else {
                    continue; // not reached: answers come once it is open
                };
                let mut answers = vec![first.ok_or_else(|| Problem::Down("upstream ended the publish stream".into()))?];
                // Take every answer already there, so one commit covers them.
                while answers.len() < window {
                    match responses.message().now_or_never() {
                        Some(Ok(Some(r))) => answers.push(r),
                        _ => break,
                    }
                }
                link.contact();
                answered = true;
                let now = Instant::now().into_std();
                for (sent, _) in in_flight.queue.iter().zip(&answers) {
                    pacer.answered(now, sent.stamp, sent.bytes);
                }
                let (removals, transient) = settle(answers, &mut in_flight);
                window = (window * 2).min(config.window);
                for (seqs, outcome) in removals {
                    let store = store.clone();
                    settling.push(
                        async move {
                            let done = seqs.clone();
                            store.outbox_done(seqs, outcome).await.map(|()| done)
                        }
                        .boxed(),
                    );
                }
                if let Some(problem) = transient {
                    // What was answered before the failure still leaves the
                    // outbox (`session` waits for the removals).
                    return Err(problem);
                }
            }
            Some(settled) = settling.next(), if !settling.is_empty() => {
                // Real progress: alerts left the outbox for good.
                in_flight.settled(settled.map_err(local)?);
                backoff.reset();
            }
        }
    }
}

/// Whether more may be sent: always one alert, more while the bytes in
/// flight are under the pacer's limit.
fn paced(in_flight: &InFlight, pacer: &Pacer) -> bool {
    in_flight.queue.is_empty() || in_flight.bytes < pacer.limit()
}

/// The next answer once the stream is open; until then, never.
async fn next_answer(
    responses: &mut Option<tonic::Streaming<pb::PublishStreamResponse>>,
) -> Result<Option<pb::PublishStreamResponse>, tonic::Status> {
    match responses {
        Some(r) => r.message().await,
        None => std::future::pending().await,
    }
}

/// Outbox removals to commit: the seqs and why they leave.
type Removals = Vec<(Vec<Seq>, Outcome)>;

/// Applies answers to the in-flight queue (answers come in send order, each
/// naming its request's index): the outbox removals to commit, and the
/// transient failure that ends the session, if one was answered. An answer
/// for another request than the oldest unanswered one ends the session
/// without removing it: nothing leaves the outbox on a guess.
fn settle(
    answers: Vec<pb::PublishStreamResponse>,
    in_flight: &mut InFlight,
) -> (Removals, Option<Problem>) {
    let mut forwarded = Vec::new();
    let mut rejected = Vec::new();
    let mut transient = None;
    for answer in answers {
        let Some(sent) = in_flight.queue.front().copied() else {
            transient = Some(Problem::Down(
                "upstream answered more alerts than were sent".into(),
            ));
            break;
        };
        if answer.index != sent.index {
            transient = Some(Problem::Down(format!(
                "upstream answered request {} when request {} was due",
                answer.index, sent.index
            )));
            break;
        }
        in_flight.queue.pop_front();
        in_flight.bytes -= sent.bytes;
        let seq = sent.seq;
        match answer.result {
            Some(pb::publish_stream_response::Result::Ack(_)) => forwarded.push(seq),
            Some(pb::publish_stream_response::Result::Error(e)) if permanent(&e) => {
                error!(id = %e.id, seq = seq.0, reason = %e.message, "upstream refused the alert for good; it is not retried");
                rejected.push(seq);
            }
            Some(pb::publish_stream_response::Result::Error(e)) => {
                transient = Some(Problem::Down(format!(
                    "upstream could not take alert {}: {}",
                    e.id, e.message
                )));
                break;
            }
            None => {
                transient = Some(Problem::Down("upstream sent an empty answer".into()));
                break;
            }
        }
    }
    let removals = [
        (forwarded, Outcome::Forwarded),
        (rejected, Outcome::Rejected),
    ]
    .into_iter()
    .filter(|(seqs, _)| !seqs.is_empty())
    .collect();
    (removals, transient)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_flight(n: u64) -> InFlight {
        let mut f = InFlight {
            queue: VecDeque::new(),
            bytes: 0,
            sent: 0,
            seqs: HashSet::new(),
        };
        for i in 0..n {
            f.queue.push_back(Sent {
                index: i,
                seq: Seq(100 + i),
                at: Instant::now(),
                bytes: 1000,
                stamp: Pacer::new(0, std::time::Instant::now())
                    .sent(std::time::Instant::now(), true),
            });
            f.bytes += 1000;
            f.seqs.insert(Seq(100 + i));
            f.sent += 1;
        }
        f
    }

    fn ack(index: u64) -> pb::PublishStreamResponse {
        pb::PublishStreamResponse {
            index,
            result: Some(pb::publish_stream_response::Result::Ack(
                pb::PublishResponse::default(),
            )),
        }
    }

    #[test]
    fn answers_leave_the_outbox_only_for_the_request_they_name() {
        let mut f = in_flight(3);
        // Request 1 answered where 0 was due (a broker that skipped one):
        // nothing is removed on a guess.
        let (removals, problem) = settle(vec![ack(1)], &mut f);
        assert!(removals.is_empty());
        assert!(matches!(problem, Some(Problem::Down(_))));
        assert_eq!(f.queue.len(), 3);

        let mut f = in_flight(3);
        let (removals, problem) = settle(vec![ack(0), ack(1), ack(7)], &mut f);
        assert_eq!(
            removals,
            vec![(vec![Seq(100), Seq(101)], Outcome::Forwarded)]
        );
        assert!(problem.is_some(), "the stray answer ends the session");
        assert_eq!(f.queue.front().map(|s| s.index), Some(2));

        let mut f = in_flight(1);
        let (_, problem) = settle(vec![ack(0), ack(1)], &mut f);
        assert!(problem.is_some(), "more answers than requests");
    }
}
