//! Feeds: at-least-once delivery from the log to one subscriber.
//!
//! A feed task owns the delivery state of one open subscription:
//!
//! - `next_read`: the next sequence to examine in the log;
//! - `in_flight`: deliveries sent and not yet acknowledged, each with its
//!   attempt count and redelivery deadline (at most `max_in_flight`);
//! - `floor`: every sequence up to it is acknowledged or unwanted, and
//!   `acked`: acknowledged sequences above the floor.
//!
//! `floor` and `acked` are the persisted cursor of a durable feed; after a
//! reconnect or a broker restart the feed re-reads from `floor + 1` and skips
//! what `acked` lists. Records are always read from the store; the head
//! `watch` only says that there is something new, so a slow subscriber never
//! loses anything and a lost wake-up costs nothing.
//!
//! One durable feed has at most one live task: a newer subscription cancels
//! the older one and waits for its lock, so the two never write the cursor
//! concurrently.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{OwnedMutexGuard, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use super::{Broker, BrokerError};
use crate::alert::{Record, Seq, micros};
use crate::audit::AuditEvent;
use crate::filter::Filter;
use crate::identity::NodeId;
use crate::policy::Policy;
use crate::receipt::{Receipt, ReceiptKind};
use crate::store::{Store, StoredFeed};

pub(super) mod offline;
mod spec;
pub use offline::Pending;
pub use spec::{FeedSpec, Start};

/// What the subscriber is told when the feed opens.
#[derive(Debug, Clone)]
pub struct FeedOpened {
    pub name: Option<String>,
    pub created: bool,
    pub ack_floor: Seq,
    pub head: Seq,
    pub max_in_flight: u32,
    pub ack_wait: Duration,
}

/// Events of an open feed, in order.
#[derive(Debug)]
pub enum FeedEvent {
    Delivery {
        record: Arc<Record>,
        attempt: u32,
    },
    /// The last event: why the feed closed.
    Ended(FeedEnd),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEnd {
    TakenOver,
    ShuttingDown,
    /// The policy in force no longer lets the owner subscribe.
    Denied(String),
    Failed(String),
}

/// The subscriber's side of an open feed. Dropping `acks` (the subscriber
/// went away) or `events` ends the feed task.
pub struct FeedHandle {
    pub opened: FeedOpened,
    /// Deliveries; the feed task holds the sender.
    pub events: mpsc::Receiver<FeedEvent>,
    /// Acknowledged sequences; the feed task holds the receiver.
    pub acks: mpsc::Sender<Vec<u64>>,
}

/// Registry entry of a durable feed: its lock (held by the live task) and
/// the token that cancels the live task.
pub(super) struct Slot {
    lock: Arc<tokio::sync::Mutex<()>>,
    takeover: CancellationToken,
    pub(super) live: Arc<LiveFeed>,
}

/// What the admin view shows of a durable feed's live subscription; the
/// feed task writes it, readers only load.
#[derive(Debug, Default)]
pub struct LiveFeed {
    pub connected: std::sync::atomic::AtomicBool,
    pub in_flight: std::sync::atomic::AtomicU32,
}

/// How many acknowledged sequences above the floor a feed may accumulate,
/// in multiples of its window, before it stops reading ahead (one delivery
/// that is never acknowledged must not make the cursor grow without bound).
const ACKED_SPAN_FACTOR: usize = 16;
/// Records read from the store per step.
const READ_CHUNK: usize = 256;

pub(super) async fn open(
    broker: &Broker,
    owner: NodeId,
    spec: FeedSpec,
) -> Result<FeedHandle, BrokerError> {
    let takeover = CancellationToken::new();
    let (guard, live) = match &spec.name {
        Some(name) => {
            let (guard, live) = claim(broker, &owner, name, &takeover).await?;
            (Some(guard), Some(live))
        }
        None => (None, None),
    };
    let store = broker.store().clone();
    let head = store.head();
    let stored = match &spec.name {
        Some(name) => store.load_feed(&owner.to_string(), name)?,
        None => None,
    };
    let created = stored.is_none();
    let (floor, acked) = match &stored {
        Some(s) => (Seq(s.ack_floor), s.acked.iter().map(|s| Seq(*s)).collect()),
        None => (start_floor(&store, spec.start, head)?, BTreeSet::new()),
    };
    let window = spec.max_in_flight as usize;
    let (events_tx, events) = mpsc::channel(window * 2 + 1);
    let (acks, acks_rx) = mpsc::channel(64);
    let opened = FeedOpened {
        name: spec.name.clone(),
        created,
        ack_floor: floor,
        head,
        max_in_flight: spec.max_in_flight,
        ack_wait: spec.ack_wait,
    };
    let span =
        info_span!("feed", owner = %owner, feed = spec.name.as_deref().unwrap_or("(ephemeral)"));
    let mut task = FeedTask {
        store,
        owner,
        name: spec.name,
        filter: spec.filter,
        created_us: stored
            .as_ref()
            .map_or_else(|| micros(SystemTime::now()), |s| s.created_us),
        last_ack_us: stored.as_ref().map_or(0, |s| s.last_ack_us),
        live,
        unaudited: Vec::new(),
        window,
        ack_wait: spec.ack_wait,
        next_read: floor.next(),
        floor,
        in_flight: BTreeMap::new(),
        acked,
        events: events_tx,
        acks: acks_rx,
        head: broker.store().watch_head(),
        policy: broker.watch_policy(),
        shutdown: broker.shutdown_token().clone(),
        takeover,
        _guard: guard,
    };
    task.persist();
    tokio::spawn(task.run().instrument(span));
    Ok(FeedHandle {
        opened,
        events,
        acks,
    })
}

/// Cancels the live task of a durable feed, if any, and waits for its lock.
async fn claim(
    broker: &Broker,
    owner: &NodeId,
    name: &str,
    takeover: &CancellationToken,
) -> Result<(OwnedMutexGuard<()>, Arc<LiveFeed>), BrokerError> {
    let (lock, live) = {
        let mut feeds = broker.feeds();
        let slot = feeds
            .entry((owner.clone(), name.to_owned()))
            .or_insert_with(|| Slot {
                lock: Arc::new(tokio::sync::Mutex::new(())),
                takeover: CancellationToken::new(),
                live: Arc::default(),
            });
        let older = std::mem::replace(&mut slot.takeover, takeover.clone());
        older.cancel();
        (slot.lock.clone(), slot.live.clone())
    };
    let guard = tokio::select! {
        g = lock.lock_owned() => g,
        () = broker.shutdown_token().cancelled() => return Err(BrokerError::ShuttingDown),
    };
    if takeover.is_cancelled() {
        return Err(BrokerError::TakenOver);
    }
    Ok((guard, live))
}

fn start_floor(store: &Store, start: Start, head: Seq) -> Result<Seq, BrokerError> {
    Ok(match start {
        Start::NewOnly => head,
        Start::All => store.first_seq()?.map_or(head, |first| Seq(first.0 - 1)),
        Start::FromSeq(s) => Seq(s.0.saturating_sub(1)),
        Start::FromTime(t) => Seq(store.seq_at_time(t)?.0.saturating_sub(1)),
    })
}

struct InFlight {
    record: Arc<Record>,
    attempt: u32,
    deadline: Instant,
}

struct FeedTask {
    store: Store,
    owner: NodeId,
    name: Option<String>,
    filter: Filter,
    created_us: u64,
    window: usize,
    ack_wait: Duration,
    next_read: Seq,
    floor: Seq,
    in_flight: BTreeMap<Seq, InFlight>,
    acked: BTreeSet<Seq>,
    /// Deliveries to the subscriber, who holds the receiver.
    events: mpsc::Sender<FeedEvent>,
    /// Acks from the subscriber, who holds the sender.
    acks: mpsc::Receiver<Vec<u64>>,
    head: watch::Receiver<Seq>,
    /// The policy in force; the broker holds the sender.
    policy: watch::Receiver<Arc<Policy>>,
    shutdown: CancellationToken,
    takeover: CancellationToken,
    /// Held for the task's life: the feed's lock (durable feeds only).
    _guard: Option<OwnedMutexGuard<()>>,
    /// Last acknowledgement (µs since the epoch; 0: never).
    last_ack_us: u64,
    /// The admin view of this subscription (durable feeds only).
    live: Option<Arc<LiveFeed>>,
    /// First deliveries not yet in the audit trail (seq, alert).
    unaudited: Vec<(Seq, crate::alert::AlertId)>,
}

/// Why the loop stopped; `None` when the subscriber went away.
type Stop = Option<FeedEnd>;

impl FeedTask {
    async fn run(mut self) {
        self.set_connected(true);
        let end = loop {
            if let Err(stop) = self.step().await {
                break stop;
            }
        };
        self.audit_deliveries().await;
        // The subscriber may drop what it acknowledged once its stream
        // ends, so the cursor is on disk before the stream ends (acks of an
        // open stream become durable with the next checkpoint).
        self.persist();
        if self.name.is_some()
            && let Err(e) = self.store.flush().await
        {
            debug!(error = %e, "the feed cursor could not be flushed as the feed closed");
        }
        self.set_connected(false);
        match end {
            Some(end) => {
                debug!(?end, "feed closed");
                // Bounded: a subscriber that stopped reading gets its stream
                // dropped instead.
                let ended = self.events.send(FeedEvent::Ended(end));
                let _ = tokio::time::timeout(Duration::from_secs(1), ended).await;
            }
            None => debug!("subscriber went away"),
        }
    }

    /// One round: read and deliver what fits, then wait for the next thing
    /// to do.
    async fn step(&mut self) -> Result<(), Stop> {
        self.fill().await?;
        let has_room = self.has_room();
        let caught_up = self.next_read > self.store.head();
        if has_room && !caught_up {
            // More to read: take pending acks and stops, then go on reading.
            while let Ok(seqs) = self.acks.try_recv() {
                self.ack(&seqs).await;
            }
            return self.check_cancelled();
        }
        let deadline = self.in_flight.values().map(|f| f.deadline).min();
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return Err(Some(FeedEnd::ShuttingDown)),
            () = self.takeover.cancelled() => return Err(Some(FeedEnd::TakenOver)),
            acks = self.acks.recv() => match acks {
                Some(seqs) => self.ack(&seqs).await,
                None => return Err(None),
            },
            changed = self.head.changed(), if has_room => {
                if changed.is_err() {
                    return Err(Some(FeedEnd::ShuttingDown));
                }
            }
            () = sleep_until(deadline), if deadline.is_some() => self.redeliver().await?,
            // A new policy ends the feed of a node it no longer lets
            // subscribe at once, even one whose window is full.
            changed = self.policy.changed() => {
                if changed.is_err() {
                    return Err(Some(FeedEnd::ShuttingDown));
                }
                let policy = self.policy.borrow_and_update().clone();
                if let Err(denied) = policy.may_subscribe(&self.owner) {
                    return Err(Some(FeedEnd::Denied(denied.to_string())));
                }
            }
        }
        Ok(())
    }

    fn check_cancelled(&self) -> Result<(), Stop> {
        if self.shutdown.is_cancelled() {
            return Err(Some(FeedEnd::ShuttingDown));
        }
        if self.takeover.is_cancelled() {
            return Err(Some(FeedEnd::TakenOver));
        }
        Ok(())
    }

    fn has_room(&self) -> bool {
        // The acked-span bound only applies while something is in flight: with
        // nothing in flight, reading on is what moves the floor past `acked`.
        self.in_flight.len() < self.window
            && (self.in_flight.is_empty() || self.acked.len() < self.window * ACKED_SPAN_FACTOR)
    }

    /// Reads one chunk from `next_read` and delivers what the subscriber
    /// wants and may see, as far as the window allows.
    async fn fill(&mut self) -> Result<(), Stop> {
        if !self.has_room() || self.next_read > self.store.head() {
            return Ok(());
        }
        let room = self.window - self.in_flight.len();
        let chunk = self
            .store
            .scan(self.next_read, READ_CHUNK.min(room * 4).max(1))
            .map_err(|e| Some(FeedEnd::Failed(e.to_string())))?;
        if let Some(first) = chunk.first()
            && first.seq > self.next_read
        {
            warn!(
                missed = first.seq.0 - self.next_read.0,
                from_seq = self.next_read.0,
                "alerts removed by retention before this feed received them"
            );
        }
        if chunk.is_empty() {
            // Everything up to the head was pruned.
            self.next_read = self.store.head().next();
        }
        let policy = self.policy.borrow().clone();
        if let Err(denied) = policy.may_subscribe(&self.owner) {
            return Err(Some(FeedEnd::Denied(denied.to_string())));
        }
        for record in chunk {
            self.next_read = record.seq.next();
            if self.acked.contains(&record.seq) {
                continue;
            }
            if self.filter.matches(&record.alert, &self.owner)
                && policy.entitled(&record.alert, &self.owner)
            {
                let seq = record.seq;
                self.send(FeedEvent::Delivery {
                    record: record.clone(),
                    attempt: 1,
                })
                .await?;
                metrics::counter!(crate::metrics::DELIVERIES).increment(1);
                self.unaudited.push((seq, record.alert.id));
                self.in_flight.insert(
                    seq,
                    InFlight {
                        record,
                        attempt: 1,
                        deadline: Instant::now() + self.ack_wait,
                    },
                );
                if let Some(live) = &self.live {
                    live.in_flight.store(
                        self.in_flight.len() as u32,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                if !self.has_room() {
                    break;
                }
            }
        }
        self.advance_floor();
        self.audit_deliveries().await;
        // A catch-up over a long backlog that the filter mostly skips would
        // otherwise never yield to the runtime.
        tokio::task::yield_now().await;
        Ok(())
    }

    async fn send(&self, event: FeedEvent) -> Result<(), Stop> {
        tokio::select! {
            sent = self.events.send(event) => sent.map_err(|_| None),
            () = self.shutdown.cancelled() => Err(Some(FeedEnd::ShuttingDown)),
            () = self.takeover.cancelled() => Err(Some(FeedEnd::TakenOver)),
        }
    }

    async fn redeliver(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        let due: Vec<Seq> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        let policy = self.policy.borrow().clone();
        if let Err(denied) = policy.may_subscribe(&self.owner) {
            return Err(Some(FeedEnd::Denied(denied.to_string())));
        }
        for seq in due {
            let Some(f) = self.in_flight.get_mut(&seq) else {
                continue;
            };
            if !policy.entitled(&f.record.alert, &self.owner) {
                // The policy changed since the first delivery: no more copies.
                debug!(seq = seq.0, "no longer entitled; not redelivered");
                self.in_flight.remove(&seq);
                self.advance_floor();
                continue;
            }
            f.attempt += 1;
            f.deadline = now + self.ack_wait;
            let event = FeedEvent::Delivery {
                record: f.record.clone(),
                attempt: f.attempt,
            };
            debug!(seq = seq.0, attempt = f.attempt, "redelivering");
            metrics::counter!(crate::metrics::REDELIVERIES).increment(1);
            self.send(event).await?;
        }
        Ok(())
    }

    fn set_connected(&self, connected: bool) {
        if let Some(live) = &self.live {
            live.connected
                .store(connected, std::sync::atomic::Ordering::Relaxed);
            if !connected {
                live.in_flight
                    .store(0, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Records the first deliveries sent since the last call as one audit
    /// record (one per read chunk, not one per alert: at high fan-out the
    /// audit trail would otherwise double the writes of every delivery).
    async fn audit_deliveries(&mut self) {
        if self.unaudited.is_empty() {
            return;
        }
        let event =
            AuditEvent::delivered(self.owner.to_string(), self.feed_label(), &self.unaudited);
        self.unaudited.clear();
        self.store.audit(event).await;
    }

    fn feed_label(&self) -> &str {
        self.name.as_deref().unwrap_or("(ephemeral)")
    }

    /// Takes acknowledgements: each acknowledged delivery leaves the window
    /// and becomes a DELIVERED receipt for the originator.
    async fn ack(&mut self, seqs: &[u64]) {
        let mut changed = false;
        let mut receipts = Vec::new();
        for seq in seqs.iter().map(|s| Seq(*s)) {
            if let Some(delivered) = self.in_flight.remove(&seq) {
                self.acked.insert(seq);
                changed = true;
                metrics::counter!(crate::metrics::ACKS).increment(1);
                self.last_ack_us = micros(SystemTime::now());
                receipts.push(Receipt {
                    alert: delivered.record.alert.id,
                    kind: ReceiptKind::Delivered,
                    recipient: self.owner.clone(),
                    feed: self.name.clone().unwrap_or_default(),
                    at: SystemTime::now(),
                    note: String::new(),
                });
            }
        }
        self.store.record_receipts_nowait(receipts).await;
        if changed {
            self.advance_floor();
            self.persist();
        }
    }

    /// Moves the floor up to just below the oldest unacknowledged delivery
    /// (or everything read), and forgets acks at or below it.
    fn advance_floor(&mut self) {
        let floor = match self.in_flight.keys().next() {
            Some(oldest) => Seq(oldest.0 - 1),
            None => Seq(self.next_read.0 - 1),
        };
        if floor > self.floor {
            self.floor = floor;
            self.acked = self.acked.split_off(&floor.next());
        }
    }

    fn persist(&mut self) {
        let Some(name) = &self.name else {
            return;
        };
        let state = StoredFeed {
            filter: Some(self.filter.to_proto()),
            ack_floor: self.floor.0,
            acked: self.acked.iter().map(|s| s.0).collect(),
            created_us: self.created_us,
            last_ack_us: self.last_ack_us,
        };
        let labels = [("owner", self.owner.to_string()), ("feed", name.clone())];
        let backlog = self.store.head().0.saturating_sub(self.floor.0);
        metrics::gauge!(crate::metrics::FEED_BACKLOG, &labels).set(backlog as f64);
        metrics::gauge!(crate::metrics::FEED_IN_FLIGHT, &labels).set(self.in_flight.len() as f64);
        if let Some(live) = &self.live {
            live.in_flight.store(
                self.in_flight.len() as u32,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        if let Err(e) = self.store.save_feed(&self.owner.to_string(), name, &state) {
            // The feed keeps working; the cursor is saved with the next ack.
            warn!(error = %e, "cannot save the feed cursor");
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
