//! A durable feed served by offline bundle instead of a subscription
//! (docs/bundles.md): what the feed holds past its cursor is read without
//! delivering it, and the post's receipt acknowledges those sequences as a
//! subscriber's acks would. Both hold the feed's lock, and refuse while a
//! subscription holds the feed (the post is online: its link serves it).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::{Start, claim, start_floor};
use crate::alert::{Record, Seq, micros};
use crate::broker::{Broker, BrokerError};
use crate::filter::Filter;
use crate::identity::NodeId;
use crate::proto as pb;
use crate::receipt::{Receipt, ReceiptKind};
use crate::store::StoredFeed;

/// What a feed holds for its owner, oldest first.
#[derive(Debug)]
pub struct Pending {
    pub records: Vec<Arc<Record>>,
    /// Entitled alerts past the last one taken (limits reached).
    pub remaining: u64,
}

/// Records read from the store per step.
const CHUNK: usize = 512;

/// The feed `name` of `owner`, locked: a live subscription refuses.
async fn lock(
    broker: &Broker,
    owner: &NodeId,
    name: &str,
) -> Result<tokio::sync::OwnedMutexGuard<()>, BrokerError> {
    let busy = broker
        .feeds()
        .get(&(owner.clone(), name.to_owned()))
        .is_some_and(|slot| {
            slot.live
                .connected
                .load(std::sync::atomic::Ordering::Relaxed)
        });
    if busy {
        return Err(BrokerError::FeedBusy {
            owner: owner.to_string(),
            feed: name.to_owned(),
        });
    }
    Ok(claim(broker, owner, name, &CancellationToken::new())
        .await?
        .0)
}

/// The feed's state; a feed that does not exist yet is created as the
/// agent's inbox would be (its own alerts left out), starting from the
/// oldest alert the broker holds: a post that never connected is owed
/// everything it may see.
fn load_or_create(broker: &Broker, owner: &NodeId, name: &str) -> Result<StoredFeed, BrokerError> {
    let store = broker.store();
    if let Some(feed) = store.load_feed(&owner.to_string(), name)? {
        return Ok(feed);
    }
    let filter = pb::Filter {
        exclude_own: true,
        ..pb::Filter::default()
    };
    let feed = StoredFeed {
        filter: Some(filter),
        ack_floor: start_floor(store, Start::All, store.head())?.0,
        acked: Vec::new(),
        created_us: micros(SystemTime::now()),
        last_ack_us: 0,
    };
    store.save_feed(&owner.to_string(), name, &feed)?;
    Ok(feed)
}

/// Up to `max_alerts` records (and about `max_bytes` of alerts) that the
/// feed owes its owner: past its cursor, not acknowledged, matching its
/// filter, and entitled under the policy in force. Nothing is delivered:
/// the cursor moves when the owner's receipt comes back.
///
/// # Errors
/// [`BrokerError::FeedBusy`] while a subscription holds the feed; storage
/// errors; a stored filter that no longer reads.
pub async fn pending(
    broker: &Broker,
    owner: &NodeId,
    name: &str,
    max_alerts: usize,
    max_bytes: u64,
) -> Result<Pending, BrokerError> {
    let _guard = lock(broker, owner, name).await?;
    let feed = load_or_create(broker, owner, name)?;
    let filter = Filter::from_proto("feed.filter", &feed.filter.clone().unwrap_or_default())?;
    let acked: BTreeSet<u64> = feed.acked.iter().copied().collect();
    let policy = broker.policy();
    policy.may_subscribe(owner)?;
    let store = broker.store();
    let head = store.head();
    let mut next = Seq(feed.ack_floor).next();
    let mut out = Pending {
        records: Vec::new(),
        remaining: 0,
    };
    let mut bytes = 0u64;
    while next <= head {
        let chunk = store.scan(next, CHUNK)?;
        let Some(last) = chunk.last() else {
            break;
        };
        next = last.seq.next();
        for record in chunk {
            if acked.contains(&record.seq.0)
                || !filter.matches(&record.alert, owner)
                || !policy.entitled(&record.alert, owner)
            {
                continue;
            }
            let size = prost::Message::encoded_len(&record.alert.body) as u64;
            let full = out.records.len() >= max_alerts
                || (!out.records.is_empty() && bytes + size > max_bytes);
            if full {
                out.remaining += 1;
            } else {
                bytes += size;
                out.records.push(record);
            }
        }
        tokio::task::yield_now().await;
    }
    Ok(out)
}

/// Acknowledges `seqs` of the feed as delivered (the owner's receipt for
/// a bundle): they join the acknowledged set, the floor moves over what
/// is acknowledged without a gap, and each becomes a DELIVERED receipt
/// for its originator. Sequences at or below the floor, or not in the
/// store, are ignored. Returns how many were newly acknowledged.
///
/// # Errors
/// [`BrokerError::FeedBusy`] while a subscription holds the feed; storage
/// errors.
pub async fn acknowledge(
    broker: &Broker,
    owner: &NodeId,
    name: &str,
    seqs: &[u64],
) -> Result<u64, BrokerError> {
    let _guard = lock(broker, owner, name).await?;
    let store = broker.store();
    let Some(mut feed) = store.load_feed(&owner.to_string(), name)? else {
        return Ok(0);
    };
    let mut acked: BTreeSet<u64> = feed.acked.iter().copied().collect();
    let mut receipts = Vec::new();
    let now = SystemTime::now();
    for &seq in seqs {
        if seq <= feed.ack_floor || acked.contains(&seq) {
            continue;
        }
        let Some(record) = store.get(Seq(seq))? else {
            continue;
        };
        acked.insert(seq);
        receipts.push(Receipt {
            alert: record.alert.id,
            kind: ReceiptKind::Delivered,
            recipient: owner.clone(),
            feed: name.to_owned(),
            at: now,
            note: "offline bundle".into(),
        });
    }
    let newly = receipts.len() as u64;
    // The floor moves over what is acknowledged and over what the feed
    // does not want (as a live feed's does when nothing is in flight), up
    // to the first alert still owed.
    let filter = Filter::from_proto("feed.filter", &feed.filter.clone().unwrap_or_default())?;
    let policy = broker.policy();
    'walk: while let Some(&last) = acked.last() {
        let chunk = store.scan(Seq(feed.ack_floor).next(), CHUNK)?;
        if chunk.is_empty() {
            break;
        }
        for record in chunk {
            let seq = record.seq.0;
            if seq > last {
                break 'walk;
            }
            let owed =
                filter.matches(&record.alert, owner) && policy.entitled(&record.alert, owner);
            if owed && !acked.remove(&seq) {
                break 'walk;
            }
            feed.ack_floor = seq;
        }
    }
    acked.retain(|s| *s > feed.ack_floor);
    feed.acked = acked.into_iter().collect();
    if newly > 0 {
        feed.last_ack_us = micros(now);
    }
    store.save_feed(&owner.to_string(), name, &feed)?;
    store.record_receipts_nowait(receipts).await;
    store.flush().await?;
    Ok(newly)
}
