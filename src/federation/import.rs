//! The import half of a link's session: each offer verified, checked and
//! stored, and answered in order ([`super::session`] describes the
//! protocol).

use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use tracing::{debug, warn};

use super::session::{Shared, answer, local_problem, lock};
use super::{Federation, PeerLink, attest};
use crate::agent::Problem;
use crate::alert::{self, AlertId, Seq};
use crate::audit::{AuditEvent, AuditKind};
use crate::broker::BrokerError;
use crate::policy::Destination;
use crate::proto as pb;
use crate::store::StoredLink;

/// Alerts gathered into one audit record at most.
pub(super) const AUDIT_BATCH: usize = 256;

/// The answer to one offer, or a failure that ends the session.
type Answering = BoxFuture<'static, Result<pb::Answer, Problem>>;

/// The import half: offers being stored, answered in order.
pub(super) struct Importer {
    fed: Federation,
    peer: Arc<PeerLink>,
    pub(super) pending: FuturesOrdered<Answering>,
    stored: Arc<std::sync::Mutex<Vec<(Seq, AlertId)>>>,
    state: Shared,
}

impl Importer {
    pub(super) fn new(fed: &Federation, peer: &Arc<PeerLink>, state: Shared) -> Importer {
        Importer {
            fed: fed.clone(),
            peer: peer.clone(),
            pending: FuturesOrdered::new(),
            stored: Arc::default(),
            state,
        }
    }

    /// Checks one offer and hands it to the store, in the order offered
    /// (so per-origin order holds); its answer joins the queue once the
    /// store has it on disk. The check is a few hashes, a decode and the
    /// validation: a batch's signature is verified once
    /// ([`attest::verify`]).
    ///
    /// # Errors
    /// When the store cannot take the alert (it is closing): the session
    /// ends, and the peer offers it again on the next one.
    pub(super) async fn offer(&mut self, offer: pb::Offer) -> Result<(), Problem> {
        let seq = offer.seq;
        let (fed, peer) = (self.fed.clone(), self.peer.clone());
        let (alert, provenance) = match check(&fed, &peer, offer) {
            Ok(ok) => ok,
            Err(reason) => {
                let state = self.state.clone();
                self.pending.push_back(Box::pin(async move {
                    refused(&fed, &peer, &state, seq, &reason).await;
                    Ok(answer(seq, pb::AnswerKind::Refused, reason))
                }));
                return Ok(());
            }
        };
        let id = alert.id;
        let stored = self.stored.clone();
        let on_disk = fed
            .inner
            .broker
            .submit_import(alert, provenance)
            .await
            .map_err(local_problem)?;
        self.pending.push_back(Box::pin(async move {
            match on_disk.await {
                Ok(ack) if ack.duplicate => Ok(answer(seq, pb::AnswerKind::Duplicate, String::new())),
                Ok(ack) => {
                    lock(&stored).push((ack.seq, id));
                    metrics::counter!(crate::metrics::LINK_IMPORTED, "peer" => peer.config.name.clone())
                        .increment(1);
                    Ok(answer(seq, pb::AnswerKind::Stored, String::new()))
                }
                Err(BrokerError::Store(crate::store::StoreError::IdConflict)) => Ok(answer(
                    seq,
                    pb::AnswerKind::Refused,
                    "alert.id: already used by another origin's alert".into(),
                )),
                Err(e) => Err(local_problem(e)),
            }
        }));
        Ok(())
    }
}

/// Verifies an offer; the alert and its provenance, or why not.
fn check(
    fed: &Federation,
    peer: &PeerLink,
    offer: pb::Offer,
) -> Result<(alert::Alert, pb::Provenance), String> {
    let inner = &fed.inner;
    let attestation = offer.attestation.ok_or("offer.attestation: required")?;
    let attested = attest::verify(&attestation, &inner.origins).map_err(|e| e.to_string())?;
    let origin_country = attested.origin.country();
    let speaks_for = peer.config.countries.contains(&origin_country);
    if !speaks_for && offer.path.len() < 2 {
        return Err(format!(
            "origin country {origin_country}: peer {} may not speak for it, and the alert was not relayed from its own broker",
            peer.config.name
        ));
    }
    let local = fed.broker_id().to_string();
    match (offer.path.first(), offer.path.last()) {
        (Some(first), Some(last))
            if *first == attested.signer.to_string() && *last == peer.config.broker.to_string() => {
        }
        _ => {
            return Err(format!(
                "offer.path: must run from the origin broker {} to the peer {}",
                attested.signer, peer.config.broker
            ));
        }
    }
    if offer.path.contains(&local) {
        return Err("offer.path: this broker is on it already (a loop)".into());
    }
    let statement = attested.statement;
    let body = statement
        .alert
        .ok_or("attestation: the statement holds no alert")?;
    let alert = alert::validate(
        body.clone(),
        &attested.origin,
        &inner.broker.config().limits,
        SystemTime::now(),
    )
    .map_err(|e| e.to_string())?;
    if alert.body != body {
        return Err("attestation: the alert is not in the form its origin broker stores".into());
    }
    let provenance = pb::Provenance {
        origin_broker: attested.signer.to_string(),
        origin_received_at: statement.received_at,
        path: offer.path,
        attestation: Some(attestation),
    };
    // This broker's policy, as the peer's side applies it: seen from
    // the peer, could it release this alert to us?
    let from = Destination {
        local: peer.config.broker.country(),
        country: fed.broker_id().country(),
        broker: &local,
    };
    inner
        .broker
        .policy()
        .may_export(&alert, Some(&provenance), from)
        .map_err(|w| format!("policy: {w}"))?;
    Ok((alert, provenance))
}

/// A refused offer: logged, counted and audited (the link goes on).
async fn refused(fed: &Federation, peer: &PeerLink, state: &Shared, seq: u64, reason: &str) {
    let name = peer.config.name.clone();
    warn!(peer = %name, offer = seq, %reason, "refused an alert from a federation peer");
    metrics::counter!(crate::metrics::LINK_REFUSED, "peer" => name.clone()).increment(1);
    lock(state).refused += 1;
    fed.inner
        .broker
        .audit_event(AuditEvent::new(
            AuditKind::ImportRefused,
            peer.config.broker.to_string(),
            None,
            format!("from peer {name}, offer {seq}: {reason}"),
        ))
        .await;
}

impl Importer {
    /// Counts in the link's state (saved with the exporter's next save).
    fn count(&self, f: impl FnOnce(&mut StoredLink)) {
        f(&mut lock(&self.state));
    }

    /// Audits (and counts) the alerts stored since the last time: when
    /// `force`d, or once 256 have gathered or nothing is left in flight, so
    /// that a busy link writes one record per batch, not per alert.
    pub(super) async fn flush_audit(&mut self, force: bool) {
        let batch = {
            let mut stored = lock(&self.stored);
            let due = force || stored.len() >= AUDIT_BATCH || self.pending.is_empty();
            if stored.is_empty() || !due {
                return;
            }
            std::mem::take(&mut *stored)
        };
        let n = batch.len() as u64;
        self.count(|s| s.imported += n);
        debug!(peer = %self.peer.config.name, alerts = n, "imported");
        self.fed
            .inner
            .broker
            .audit_event(AuditEvent::link_batch(
                AuditKind::Imported,
                self.peer.config.broker.to_string(),
                &format!("from peer {}", self.peer.config.name),
                &batch,
            ))
            .await;
    }
}
