//! The national broker's side of offline bundles (behind
//! `Admin.ImportBundle` and `Admin.ExportBundle`): a post's alerts are
//! stored under the post's identity with the usual validation and policy,
//! deduplicated against what came by link, and answered with a signed
//! receipt; what the post's inbox feed owes it goes out in a bundle, and
//! the post's receipt acknowledges those deliveries.

use crate::broker::{Broker, BrokerError};
use crate::identity::NodeId;
use crate::proto as pb;
use crate::proto::bundle_body::Content;
use crate::proto::bundle_item::Outcome;
use crate::store::StoreError;

use super::{BundleError, Counts, Opened, Party, Peer, kind_label, refuse_replay};

/// What an import did.
#[derive(Debug)]
pub struct Imported {
    pub id: uuid::Uuid,
    pub from: String,
    pub counts: Counts,
    /// The receipt bundle to carry back (for a bundle of alerts).
    pub receipt: Option<Vec<u8>>,
    /// Feed deliveries a post's receipt acknowledged.
    pub acknowledged: u64,
}

/// What the caller of an import expects the bundle to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Alerts,
    Receipt,
    Either,
}

impl Expect {
    /// `ImportBundleRequest.expect`.
    ///
    /// # Errors
    /// Any other value.
    pub fn parse(s: &str) -> Result<Expect, BundleError> {
        match s {
            "alerts" => Ok(Expect::Alerts),
            "receipt" => Ok(Expect::Receipt),
            "" => Ok(Expect::Either),
            other => Err(BundleError::Refused(format!(
                "expect: must be \"alerts\", \"receipt\" or empty, not {other:?}"
            ))),
        }
    }
}

/// The sender of a bundle to a broker: a node with an identity.
fn sender(opened: &Opened) -> Result<NodeId, BundleError> {
    opened.signer.identity.clone().ok_or_else(|| {
        BundleError::Signer(format!(
            "{} carries no liaison identity; bundles come from nodes",
            opened.signer.name()
        ))
    })
}

/// Imports a bundle from a post: its alerts (answered with a receipt
/// bundle), or its receipt for an inbox bundle. A refused bundle stores
/// nothing; a replayed one is refused.
///
/// # Errors
/// Why the bundle is refused ([`BundleError`]); storage errors.
pub async fn import(
    broker: &Broker,
    party: &Party,
    file: &[u8],
    expect: Expect,
) -> Result<Imported, BundleError> {
    let opened = party.open(file)?;
    let from = sender(&opened)?;
    let wanted = matches!(
        (expect, &opened.body.content),
        (Expect::Either, _)
            | (Expect::Alerts, Some(Content::Outbox(_)))
            | (Expect::Receipt, Some(Content::Receipt(_)))
    );
    if !wanted {
        return Err(BundleError::WrongKind {
            found: super::kind_of(&opened.body),
            expected: match expect {
                Expect::Alerts => "a post's alerts",
                _ => "a post's receipt",
            },
            command: match expect {
                Expect::Alerts => "bundle import",
                _ => "bundle ack",
            },
        });
    }
    refuse_replay(broker.store(), &opened)?;
    let kind = kind_label(&opened.body);
    let (counts, receipt, acknowledged) = match opened.body.content.clone() {
        Some(Content::Outbox(alerts)) => {
            let items = store_alerts(broker, &from, alerts.alerts).await?;
            let counts = Counts::of(&items);
            let receipt = pb::BundleReceipt {
                bundle: opened.id.to_string(),
                items,
                feed: String::new(),
            };
            let (_, file) = party.seal(&opened.signer, Content::Receipt(receipt))?;
            (counts, Some(file), 0)
        }
        Some(Content::Receipt(receipt)) => {
            // Everything the post has settled leaves its feed; RETRY stays.
            let seqs: Vec<u64> = receipt
                .items
                .iter()
                .filter(|i| i.outcome() != Outcome::Retry)
                .map(|i| i.seq)
                .collect();
            let acknowledged = broker.feed_acknowledge(&from, &receipt.feed, &seqs).await?;
            (Counts::of(&receipt.items), None, acknowledged)
        }
        other => {
            return Err(BundleError::WrongKind {
                found: other.map_or("nothing", |_| "alerts for a post (inbox)"),
                expected: "a post's alerts or its receipt",
                command: "bundle import",
            });
        }
    };
    let store = broker.store();
    store.remember_bundle(&opened.id, &counts.remembered(&opened.signer, kind))?;
    store.flush().await?;
    Ok(Imported {
        id: opened.id,
        from: from.to_string(),
        counts,
        receipt,
        acknowledged,
    })
}

/// Stores a post's alerts under its identity, in bundle order, each
/// through the same validation, policy and deduplication as a publish over
/// the link; one receipt item per alert.
async fn store_alerts(
    broker: &Broker,
    from: &NodeId,
    alerts: Vec<pb::Alert>,
) -> Result<Vec<pb::BundleItem>, BundleError> {
    let origin = from.to_string();
    let mut pending = Vec::with_capacity(alerts.len());
    for alert in alerts {
        let alert_id = alert.id.clone();
        let claimed = alert
            .origin
            .as_ref()
            .map(|o| o.urn.as_str())
            .unwrap_or_default();
        if !claimed.is_empty() && claimed != origin {
            pending.push((
                alert_id,
                Err(BundleItemError::Refused(format!(
                    "alert.origin: names {claimed}, but {origin} signed the bundle"
                ))),
            ));
            continue;
        }
        let submitted = match broker.submit(from, alert).await {
            Ok(ack) => Ok(ack),
            Err(e) => Err(item_error(e)?),
        };
        pending.push((alert_id, submitted));
    }
    let mut items = Vec::with_capacity(pending.len());
    for (alert_id, submitted) in pending {
        let answer = match submitted {
            Ok(ack) => match ack.await {
                Ok(ack) => Ok(ack),
                Err(e) => Err(item_error(e)?),
            },
            Err(e) => Err(e),
        };
        items.push(match answer {
            Ok(ack) => pb::BundleItem {
                alert_id: ack.id.to_string(),
                seq: ack.seq.0,
                outcome: if ack.duplicate {
                    Outcome::Duplicate
                } else {
                    Outcome::Stored
                } as i32,
                reason: String::new(),
            },
            Err(e) => {
                let (outcome, reason) = match e {
                    BundleItemError::Refused(r) => (Outcome::Refused, r),
                    BundleItemError::Retry(r) => (Outcome::Retry, r),
                };
                pb::BundleItem {
                    alert_id,
                    seq: 0,
                    outcome: outcome as i32,
                    reason,
                }
            }
        });
    }
    Ok(items)
}

enum BundleItemError {
    Refused(String),
    Retry(String),
}

/// What one alert's failure means for the post: refused for good, or to
/// be sent again. A broker shutting down fails the whole import.
fn item_error(e: BrokerError) -> Result<BundleItemError, BundleError> {
    Ok(match e {
        BrokerError::Rejected(r) => BundleItemError::Refused(r.to_string()),
        BrokerError::Denied(d) => BundleItemError::Refused(d.to_string()),
        BrokerError::Store(e @ StoreError::IdConflict) => {
            BundleItemError::Refused(format!("alert.id: {e}"))
        }
        BrokerError::Store(e) if e.is_resource_exhausted() => BundleItemError::Retry(e.to_string()),
        e @ (BrokerError::ShuttingDown | BrokerError::Store(StoreError::Closed)) => {
            return Err(e.into());
        }
        e => BundleItemError::Retry(e.to_string()),
    })
}

/// What an inbox export wrote.
#[derive(Debug)]
pub struct Exported {
    pub id: uuid::Uuid,
    pub file: Vec<u8>,
    pub alerts: u64,
    pub remaining: u64,
}

/// Writes what `post`'s durable feed `feed` owes it into a bundle
/// encrypted to `post`'s certificate. The cursor does not move: it moves
/// when the post's receipt is imported, so a lost bundle loses nothing.
///
/// # Errors
/// When the certificate is not valid under this broker's CA or names no
/// node; [`BrokerError::FeedBusy`] while the post is connected.
pub async fn export(
    broker: &Broker,
    party: &Party,
    post: &Peer,
    feed: &str,
    max_alerts: usize,
    max_bytes: u64,
) -> Result<Exported, BundleError> {
    party
        .check(post)
        .map_err(|e| BundleError::Refused(format!("recipient_certificate: {e}")))?;
    let owner = post.identity.clone().ok_or_else(|| {
        BundleError::Refused(format!(
            "recipient_certificate: {} carries no liaison identity",
            post.name()
        ))
    })?;
    let pending = broker
        .feed_pending(&owner, feed, max_alerts, max_bytes)
        .await?;
    let records: Vec<pb::AlertRecord> = pending.records.iter().map(|r| r.to_proto()).collect();
    let alerts = records.len() as u64;
    let (id, file) = party.seal(
        post,
        Content::Inbox(pb::BundleRecords {
            feed: feed.to_owned(),
            records,
        }),
    )?;
    Ok(Exported {
        id,
        file,
        alerts,
        remaining: pending.remaining,
    })
}
