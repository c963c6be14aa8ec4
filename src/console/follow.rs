//! The durable feed the console follows upstream, as the officer's node,
//! and the live buffer the page's event stream reads by sequence (durable
//! data upstream, a `watch` only to wake: a slow page misses nothing, and
//! one that fell behind the buffer is told to reload).
//!
//! Each delivery is acknowledged once it is in the buffer: the DELIVERED
//! receipt upstream means "on the officer's console"; the officer's own
//! acknowledgement is the ACKNOWLEDGED receipt (the page's button). What
//! the officer has not opened yet is unread (kept while the console runs).

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Console, lock, view};
use crate::proto as pb;

/// Alerts kept for live pages; older ones are in history upstream.
const KEPT: usize = 2000;

/// The live buffer and the state of the feed upstream.
pub(crate) struct Follow {
    /// Newest alerts received, oldest first, as the page is sent them.
    /// A std mutex: held to push or to copy a range.
    buffer: Mutex<VecDeque<(u64, Arc<Value>)>>,
    /// The newest sequence in the buffer; the event streams wait on it.
    head: watch::Sender<u64>,
    /// Ids received and not yet opened. A std mutex: held for an update.
    unread: Mutex<BTreeSet<String>>,
    /// Up or not, and why. A std mutex: held for a copy.
    link: Mutex<Link>,
}

impl Default for Follow {
    fn default() -> Self {
        Follow {
            buffer: Mutex::default(),
            head: watch::channel(0).0,
            unread: Mutex::default(),
            link: Mutex::default(),
        }
    }
}

/// The feed upstream, as the status view shows it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Link {
    pub up: bool,
    pub last_error: String,
    pub last_delivery: Option<SystemTime>,
}

/// What an event stream reads next.
pub(crate) enum Next {
    /// Alerts past the cursor, oldest first.
    Alerts(Vec<(u64, Arc<Value>)>),
    /// The cursor fell behind the buffer: the page reloads its list.
    Reload,
}

impl Follow {
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// Alerts after `cursor` (0: none, the page starts from now).
    pub fn after(&self, cursor: u64) -> Next {
        let buffer = lock(&self.buffer);
        if let Some((oldest, _)) = buffer.front()
            && cursor + 1 < *oldest
            && cursor != 0
        {
            return Next::Reload;
        }
        Next::Alerts(
            buffer
                .iter()
                .filter(|(seq, _)| *seq > cursor)
                .cloned()
                .collect(),
        )
    }

    pub fn is_unread(&self, id: &str) -> bool {
        lock(&self.unread).contains(id)
    }

    pub fn unread(&self) -> usize {
        lock(&self.unread).len()
    }

    /// The officer opened it.
    pub fn read(&self, id: &str) {
        lock(&self.unread).remove(id);
    }

    pub fn link(&self) -> Link {
        lock(&self.link).clone()
    }

    fn push(&self, seq: u64, summary: Value, unread: bool) {
        if unread && let Some(id) = summary["alert"]["id"].as_str() {
            let mut set = lock(&self.unread);
            set.insert(id.to_owned());
            while set.len() > KEPT {
                let first = set.iter().next().cloned();
                if let Some(first) = first {
                    set.remove(&first);
                }
            }
        }
        {
            let mut buffer = lock(&self.buffer);
            if buffer.back().is_some_and(|(last, _)| *last >= seq) {
                return; // a redelivery
            }
            buffer.push_back((seq, Arc::new(summary)));
            while buffer.len() > KEPT {
                buffer.pop_front();
            }
        }
        self.head.send_replace(seq);
    }

    fn set_link(&self, f: impl FnOnce(&mut Link)) {
        f(&mut lock(&self.link));
    }
}

/// Follows the feed until `shutdown`, reconnecting with backoff.
pub(crate) async fn run(console: Console, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(500);
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = once(&console) => r,
        };
        let follow = &console.inner.follow;
        match result {
            Ok(()) => follow.set_link(|l| {
                l.up = false;
                l.last_error = "the feed ended".into();
            }),
            Err(status) => {
                warn!(code = ?status.code(), message = %status.message(), "the console's feed is down; retrying");
                follow.set_link(|l| {
                    l.up = false;
                    l.last_error = status.message().to_owned();
                });
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}

/// One subscription: deliveries into the buffer, each acknowledged.
async fn once(console: &Console) -> Result<(), tonic::Status> {
    let me = console
        .broker()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .ok()
        .and_then(|r| r.into_inner().identity)
        .map(|o| o.urn)
        .unwrap_or_default();
    let (tx, rx) = mpsc::channel(64);
    let open = pb::OpenFeed {
        feed: console.config().feed.clone(),
        filter: Some(pb::Filter {
            include_exercise: true,
            include_test: true,
            ..Default::default()
        }),
        start: Some(pb::StartPosition {
            position: Some(pb::start_position::Position::All(true)),
        }),
        max_in_flight: 256,
        ack_wait: None,
    };
    let request = |r| pb::SubscribeRequest { request: Some(r) };
    tx.send(request(pb::subscribe_request::Request::Open(open)))
        .await
        .map_err(|_| tonic::Status::cancelled("closed"))?;
    let mut stream = console
        .broker()
        .subscribe(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let follow = &console.inner.follow;
    while let Some(msg) = stream.message().await? {
        match msg.event {
            Some(pb::subscribe_response::Event::Opened(o)) => {
                info!(feed = %o.feed, created = o.created, "the console follows its feed");
                follow.set_link(|l| {
                    l.up = true;
                    l.last_error.clear();
                });
            }
            Some(pb::subscribe_response::Event::Delivery(d)) => {
                let Some(record) = d.record else { continue };
                let seq = record.seq;
                let own = record
                    .alert
                    .as_ref()
                    .and_then(|a| a.origin.as_ref())
                    .is_some_and(|o| !me.is_empty() && o.urn == me);
                follow.push(seq, view::summary(&record), !own);
                follow.set_link(|l| l.last_delivery = Some(SystemTime::now()));
                debug!(seq, "delivered to the console");
                let ack = request(pb::subscribe_request::Request::Ack(pb::Ack {
                    seqs: vec![seq],
                }));
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
            None => {}
        }
    }
    Ok(())
}
