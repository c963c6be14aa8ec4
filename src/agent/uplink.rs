//! The uplink: drains the outbox to the upstream broker over `PublishStream`.
//!
//! An entry leaves the outbox only when the broker acknowledged it (or it
//! expired, or the broker refused it for good — both counted and logged).
//! Alert ids are chosen at the source, so anything resent after a cut —
//! sent but unacknowledged — is recognised upstream as a duplicate.

use std::collections::{HashSet, VecDeque};
use std::time::SystemTime;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{debug, error, warn};

use super::link::{Backoff, Link, LinkConfig, Problem};
use crate::alert::Seq;
use crate::proto as pb;
use crate::proto::broker_client::BrokerClient;
use crate::store::{Outcome, Store, StoreError};

/// Codes meaning "this alert will never be accepted": retrying is useless.
fn permanent(code: i32) -> bool {
    use tonic::Code;
    [
        Code::InvalidArgument,
        Code::PermissionDenied,
        Code::FailedPrecondition,
        Code::OutOfRange,
    ]
    .iter()
    .any(|c| *c as i32 == code)
}

pub(super) async fn run(
    store: Store,
    channel: Channel,
    link: Link,
    config: LinkConfig,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(&config);
    let mut meta = store.watch_meta();
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
        let client = BrokerClient::new(channel.clone());
        match session(&store, client, &link, &config, &shutdown, &mut backoff).await {
            Ok(()) => {}
            Err(problem) => {
                link.failed(&problem);
                let delay = backoff.delay(&problem);
                debug!(?delay, "uplink retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// How often a waiting uplink looks for expired alerts.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

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

fn store_problem(e: StoreError) -> Problem {
    Problem::Down(format!("local store: {e}"))
}

/// One PublishStream: sends queued alerts (at most `window` unacknowledged),
/// processes acknowledgements in order, and ends when the outbox is empty.
async fn session(
    store: &Store,
    mut client: BrokerClient<Channel>,
    link: &Link,
    config: &LinkConfig,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), Problem> {
    let (tx, rx) = mpsc::channel(config.window);
    let mut responses = client
        .publish_stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| Problem::of(&s))?
        .into_inner();
    let mut meta = store.watch_meta();
    let mut in_flight: VecDeque<Seq> = VecDeque::new();
    let mut sent: HashSet<Seq> = HashSet::new();
    loop {
        let room = config.window - in_flight.len();
        let mut queued_more = false;
        if room > 0 {
            let batch = store.outbox_peek(&sent, room).map_err(store_problem)?;
            let now = SystemTime::now();
            let mut expired = Vec::new();
            for record in batch {
                queued_more = true;
                if record.alert.expired_at(now) {
                    warn!(id = %record.alert.id, seq = record.seq.0, "alert expired before it could be forwarded; not sent");
                    expired.push(record.seq);
                    continue;
                }
                let req = pb::PublishRequest {
                    alert: Some(record.alert.to_proto()),
                };
                tx.send(req)
                    .await
                    .map_err(|_| Problem::Down("upstream closed the publish stream".into()))?;
                in_flight.push_back(record.seq);
                sent.insert(record.seq);
            }
            if !expired.is_empty() {
                store
                    .outbox_done(expired, Outcome::Expired)
                    .await
                    .map_err(store_problem)?;
            }
        }
        if in_flight.is_empty() {
            if queued_more {
                continue; // everything in that batch had expired; look again
            }
            return Ok(()); // drained: close the stream
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            changed = meta.changed(), if in_flight.len() < config.window => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            first = tokio::time::timeout(config.ack_timeout, responses.message()) => {
                let first = match first {
                    Err(_) => return Err(Problem::Down(format!(
                        "no acknowledgement from upstream within {:?}: link stalled", config.ack_timeout
                    ))),
                    Ok(r) => r.map_err(|s| Problem::of(&s))?,
                };
                let mut answers = vec![first.ok_or_else(|| Problem::Down("upstream ended the publish stream".into()))?];
                // Take every answer already there, so one commit covers them.
                while answers.len() < config.window {
                    match responses.message().now_or_never() {
                        Some(Ok(Some(r))) => answers.push(r),
                        _ => break,
                    }
                }
                link.contact();
                backoff.reset();
                settle(store, answers, &mut in_flight, &mut sent).await?;
            }
        }
    }
}

/// Applies answers to the in-flight queue (answers come in send order).
async fn settle(
    store: &Store,
    answers: Vec<pb::PublishStreamResponse>,
    in_flight: &mut VecDeque<Seq>,
    sent: &mut HashSet<Seq>,
) -> Result<(), Problem> {
    let mut forwarded = Vec::new();
    let mut rejected = Vec::new();
    let mut transient = None;
    for answer in answers {
        let Some(seq) = in_flight.pop_front() else {
            return Err(Problem::Down(
                "upstream answered more alerts than were sent".into(),
            ));
        };
        match answer.result {
            Some(pb::publish_stream_response::Result::Ack(_)) => forwarded.push(seq),
            Some(pb::publish_stream_response::Result::Error(e)) if permanent(e.code) => {
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
    let done: Vec<Seq> = forwarded.iter().chain(&rejected).copied().collect();
    if !forwarded.is_empty() {
        store
            .outbox_done(forwarded, Outcome::Forwarded)
            .await
            .map_err(store_problem)?;
    }
    if !rejected.is_empty() {
        store
            .outbox_done(rejected, Outcome::Rejected)
            .await
            .map_err(store_problem)?;
    }
    for seq in done {
        sent.remove(&seq);
    }
    transient.map_or(Ok(()), Err)
}
