//! The request to open a feed, validated: its name, filter, start position
//! and delivery limits, each refused with the field it names.

use std::time::{Duration, SystemTime};

use crate::alert::{Rejection, Seq, system_time};
use crate::broker::{DEFAULT_ACK_WAIT, DEFAULT_MAX_IN_FLIGHT};
use crate::filter::Filter;
use crate::proto as pb;

/// Where a new feed starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    NewOnly,
    All,
    FromSeq(Seq),
    FromTime(SystemTime),
}

/// A validated request to open a feed.
#[derive(Debug, Clone)]
pub struct FeedSpec {
    /// `None` for an ephemeral feed.
    pub name: Option<String>,
    pub filter: Filter,
    pub start: Start,
    pub max_in_flight: u32,
    pub ack_wait: Duration,
}

impl FeedSpec {
    /// Validates an `OpenFeed` request.
    ///
    /// # Errors
    /// A [`Rejection`] naming the field (`open.feed`, `open.max_in_flight`, …).
    pub fn from_proto(open: &pb::OpenFeed) -> Result<FeedSpec, Rejection> {
        let bad = |field: &str, rule: &str| Rejection::new(format!("open.{field}"), rule);
        let name = match open.feed.as_str() {
            "" => None,
            n if (1..=64).contains(&n.len())
                && n.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b)
                }) =>
            {
                Some(n.to_owned())
            }
            _ => {
                return Err(bad(
                    "feed",
                    "must match [a-z0-9_.-]{1,64} (or be empty for an ephemeral feed)",
                ));
            }
        };
        let filter = Filter::from_proto("open.filter", &open.filter.clone().unwrap_or_default())?;
        let start = match open.start.as_ref().and_then(|s| s.position.as_ref()) {
            None | Some(pb::start_position::Position::NewOnly(_)) => Start::NewOnly,
            Some(pb::start_position::Position::All(_)) => Start::All,
            Some(pb::start_position::Position::FromSeq(s)) => Start::FromSeq(Seq(*s)),
            Some(pb::start_position::Position::FromTime(t)) => Start::FromTime(
                system_time(t)
                    .ok_or_else(|| bad("start.from_time", "must be a valid time after 1970"))?,
            ),
        };
        let max_in_flight = match open.max_in_flight {
            0 => DEFAULT_MAX_IN_FLIGHT,
            n @ 1..=1024 => n,
            _ => return Err(bad("max_in_flight", "must be between 1 and 1024")),
        };
        let ack_wait = match &open.ack_wait {
            None => DEFAULT_ACK_WAIT,
            Some(d) if d.seconds == 0 && d.nanos == 0 => DEFAULT_ACK_WAIT,
            Some(d) => {
                let wait = u64::try_from(d.seconds)
                    .ok()
                    .zip(u32::try_from(d.nanos).ok())
                    .map(|(s, n)| Duration::new(s, n))
                    .filter(|w| {
                        (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(w)
                    });
                wait.ok_or_else(|| bad("ack_wait", "must be between 100 ms and 1 h"))?
            }
        };
        Ok(FeedSpec {
            name,
            filter,
            start,
            max_in_flight,
            ack_wait,
        })
    }
}
