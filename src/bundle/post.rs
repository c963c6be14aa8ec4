//! The post's side of offline bundles, on its agent's store (the agent
//! stopped: the store is one process's). Exporting changes nothing: the
//! alerts stay queued, so the link may still carry them if it comes back
//! first (the broker stores each once). Only the broker's signed receipt
//! takes them out of the outbox, exactly those it names.

use std::collections::HashSet;
use std::time::SystemTime;

use tracing::warn;

use crate::alert::{Alert, AlertId};
use crate::broker::{Broker, BrokerError};
use crate::proto as pb;
use crate::proto::bundle_body::Content;
use crate::proto::bundle_item::Outcome;
use crate::store::{Outcome as Left, Store, StoreError};

use super::{BundleError, Counts, Opened, Party, Peer, kind_label, refuse_replay};

/// What an outbox export wrote.
#[derive(Debug)]
pub struct Exported {
    pub id: uuid::Uuid,
    pub file: Vec<u8>,
    pub alerts: u64,
    /// Queued alerts left out (limits reached): export again after the
    /// receipt.
    pub remaining: u64,
    /// Queued alerts seen to have expired, left out (the agent drops them).
    pub expired: u64,
}

/// Queued records read from the outbox at a time.
const PEEK: usize = 1024;

/// Checks that the broker certificate the post was given is its CA's.
fn check_broker(party: &Party, broker: &Peer) -> Result<(), BundleError> {
    party
        .check(broker)
        .map_err(|e| BundleError::Refused(format!("the broker certificate: {e}")))
}

/// Opens a bundle and checks that the broker whose certificate the post
/// holds signed it.
fn open_from_broker(party: &Party, broker: &Peer, file: &[u8]) -> Result<Opened, BundleError> {
    check_broker(party, broker)?;
    let opened = party.open(file)?;
    if opened.signer.key_sha256 != broker.key_sha256 {
        return Err(BundleError::Signer(format!(
            "{} signed it, not the broker ({})",
            opened.signer.name(),
            broker.name()
        )));
    }
    Ok(opened)
}

/// Writes the post's queued alerts, in forwarding order (priority first),
/// into a bundle signed by the post and encrypted to `broker`'s
/// certificate; at most `max_alerts` and about `max_bytes` of them.
///
/// # Errors
/// When the broker certificate is not valid under the post's CA, or the
/// store cannot be read.
pub fn export(
    store: &Store,
    party: &Party,
    broker: &Peer,
    max_alerts: usize,
    max_bytes: u64,
) -> Result<Exported, BundleError> {
    check_broker(party, broker)?;
    let depth = store.outbox_stats()?.depth;
    let now = SystemTime::now();
    let mut alerts = Vec::new();
    let (mut bytes, mut expired) = (0u64, 0u64);
    // Read in forwarding order, a chunk at a time, only as far as the
    // bundle fills: the rest is counted, not read.
    let mut seen = HashSet::new();
    'read: loop {
        let chunk = store.outbox_peek(&seen, PEEK)?;
        if chunk.is_empty() {
            break;
        }
        for record in chunk {
            seen.insert(record.seq);
            if record.alert.expired_at(now) {
                expired += 1;
                continue;
            }
            let size = prost::Message::encoded_len(&record.alert.body) as u64;
            if alerts.len() >= max_alerts || (!alerts.is_empty() && bytes + size > max_bytes) {
                break 'read;
            }
            bytes += size;
            alerts.push(record.alert.to_proto());
        }
    }
    let remaining = depth.saturating_sub(alerts.len() as u64 + expired);
    let count = alerts.len() as u64;
    let (id, file) = party.seal(broker, Content::Outbox(pb::BundleAlerts { alerts }))?;
    Ok(Exported {
        id,
        file,
        alerts: count,
        remaining,
        expired,
    })
}

/// What applying a receipt did.
#[derive(Debug)]
pub struct Acked {
    pub id: uuid::Uuid,
    pub from: String,
    /// What the receipt says.
    pub counts: Counts,
    /// Alerts that left the outbox (forwarded or refused for good).
    pub removed: u64,
}

/// Applies the broker's receipt for an outbox bundle: each alert it names
/// as stored (or already there) leaves the outbox as forwarded, each it
/// refused for good leaves as rejected; RETRY ones stay queued. Alerts not
/// this post's, or no longer queued, are left alone.
///
/// # Errors
/// Why the receipt is refused ([`BundleError`]); storage errors.
pub async fn ack(
    store: &Store,
    party: &Party,
    broker: &Peer,
    file: &[u8],
) -> Result<Acked, BundleError> {
    let opened = open_from_broker(party, broker, file)?;
    refuse_replay(store, &opened)?;
    let Some(Content::Receipt(receipt)) = &opened.body.content else {
        return Err(BundleError::WrongKind {
            found: super::kind_of(&opened.body),
            expected: "a receipt",
            command: "bundle ack",
        });
    };
    let me = party.me().identity.clone();
    let (mut forwarded, mut rejected) = (Vec::new(), Vec::new());
    for item in &receipt.items {
        let Ok(id) = item.alert_id.parse::<AlertId>() else {
            continue;
        };
        let Some(record) = store.get_by_id(&id)? else {
            continue;
        };
        if Some(&record.alert.origin) != me.as_ref() {
            continue;
        }
        match item.outcome() {
            Outcome::Stored | Outcome::Duplicate => forwarded.push(record.seq),
            Outcome::Refused => {
                warn!(%id, reason = %item.reason, "the broker refused this alert for good (bundle receipt); it leaves the outbox");
                rejected.push(record.seq);
            }
            Outcome::Retry | Outcome::Unspecified => {}
        }
    }
    let before = store.outbox_stats()?.depth;
    store.outbox_done(forwarded, Left::Forwarded).await?;
    store.outbox_done(rejected, Left::Rejected).await?;
    let removed = before.saturating_sub(store.outbox_stats()?.depth);
    let counts = Counts::of(&receipt.items);
    store.remember_bundle(
        &opened.id,
        &counts.remembered(&opened.signer, kind_label(&opened.body)),
    )?;
    store.flush().await?;
    Ok(Acked {
        id: opened.id,
        from: opened.signer.name(),
        counts,
        removed,
    })
}

/// What an inbox import did.
#[derive(Debug)]
pub struct Imported {
    pub id: uuid::Uuid,
    pub from: String,
    pub counts: Counts,
    /// The receipt bundle to carry back to the broker.
    pub receipt: Vec<u8>,
}

/// Imports alerts the broker sent for this post into its inbox (as the
/// downlink would, provenance kept) and answers with a receipt bundle
/// signed by the post and encrypted to the broker.
///
/// # Errors
/// Why the bundle is refused ([`BundleError`]); storage errors.
pub async fn import(
    agent: &Broker,
    party: &Party,
    broker: &Peer,
    file: &[u8],
) -> Result<Imported, BundleError> {
    let opened = open_from_broker(party, broker, file)?;
    let store = agent.store();
    refuse_replay(store, &opened)?;
    let Some(Content::Inbox(inbox)) = opened.body.content.clone() else {
        return Err(BundleError::WrongKind {
            found: super::kind_of(&opened.body),
            expected: "alerts for this post (an inbox bundle)",
            command: "bundle import",
        });
    };
    let mut pending = Vec::with_capacity(inbox.records.len());
    for record in inbox.records {
        let seq = record.seq;
        let alert_id = record
            .alert
            .as_ref()
            .map(|a| a.id.clone())
            .unwrap_or_default();
        let alert = match record.alert.map(Alert::from_stored) {
            Some(Ok(alert)) => alert,
            Some(Err(e)) => {
                pending.push((seq, alert_id, Err((Outcome::Refused, e.to_string()))));
                continue;
            }
            None => {
                pending.push((
                    seq,
                    alert_id,
                    Err((Outcome::Refused, "alert: missing".into())),
                ));
                continue;
            }
        };
        let submitted = agent
            .submit_from_upstream(alert, record.provenance)
            .await
            .map_err(|e| outcome_of(&e));
        pending.push((seq, alert_id, submitted));
    }
    let mut items = Vec::with_capacity(pending.len());
    for (seq, alert_id, submitted) in pending {
        let answer = match submitted {
            Ok(ack) => ack.await.map_err(|e| outcome_of(&e)),
            Err(e) => Err(e),
        };
        let (outcome, reason) = match answer {
            Ok(ack) if ack.duplicate => (Outcome::Duplicate, String::new()),
            Ok(_) => (Outcome::Stored, String::new()),
            Err(e) => e,
        };
        items.push(pb::BundleItem {
            alert_id,
            seq,
            outcome: outcome as i32,
            reason,
        });
    }
    let counts = Counts::of(&items);
    let (_, receipt) = party.seal(
        &opened.signer,
        Content::Receipt(pb::BundleReceipt {
            bundle: opened.id.to_string(),
            items,
            feed: inbox.feed,
        }),
    )?;
    store.remember_bundle(
        &opened.id,
        &counts.remembered(&opened.signer, kind_label(&opened.body)),
    )?;
    store.flush().await?;
    Ok(Imported {
        id: opened.id,
        from: opened.signer.name(),
        counts,
        receipt,
    })
}

/// How the inbox answers one alert it could not store.
fn outcome_of(e: &BrokerError) -> (Outcome, String) {
    match e {
        BrokerError::Store(StoreError::IdConflict) => (
            Outcome::Refused,
            "alert.id: a local alert of another origin uses it".into(),
        ),
        BrokerError::Rejected(r) => (Outcome::Refused, r.to_string()),
        e => (Outcome::Retry, e.to_string()),
    }
}
