//! What the broker core tells an operator about its feeds.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::{Broker, BrokerError};
use crate::alert::from_micros;

/// One durable feed as the admin view shows it.
#[derive(Debug, Clone)]
pub struct FeedView {
    pub owner: String,
    pub name: String,
    pub ack_floor: u64,
    pub backlog: u64,
    pub in_flight: u32,
    pub connected: bool,
    pub last_ack: Option<SystemTime>,
    pub created: SystemTime,
}

impl Broker {
    /// Every durable feed with its cursor and, when subscribed now, its
    /// live state.
    ///
    /// # Errors
    /// Storage errors.
    pub fn feed_views(&self) -> Result<Vec<FeedView>, BrokerError> {
        let head = self.store().head().0;
        let live = self.feeds();
        let views = self
            .store()
            .list_feeds()?
            .into_iter()
            .map(|(owner, name, state)| {
                let slot = owner
                    .parse()
                    .ok()
                    .and_then(|node| live.get(&(node, name.clone())));
                let (connected, in_flight) = slot.map_or((false, 0), |s| {
                    (
                        s.live.connected.load(Ordering::Relaxed),
                        s.live.in_flight.load(Ordering::Relaxed),
                    )
                });
                FeedView {
                    backlog: head.saturating_sub(state.ack_floor),
                    ack_floor: state.ack_floor,
                    in_flight,
                    connected,
                    last_ack: (state.last_ack_us > 0).then(|| from_micros(state.last_ack_us)),
                    created: from_micros(state.created_us),
                    owner,
                    name,
                }
            })
            .collect();
        Ok(views)
    }
}
