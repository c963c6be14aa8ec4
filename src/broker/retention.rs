//! Retention: the background loop that removes the oldest alerts once they
//! are older than the age limit or the log exceeds the size limit. What it
//! removes is counted and logged; feeds that had not yet received a removed
//! alert say so when they pass the gap (see `feed`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::Store;

/// Retention limits; `None` means unlimited.
#[derive(Debug, Clone)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    /// How often the limits are applied.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Some(Duration::from_secs(365 * 24 * 3600)),
            max_bytes: None,
            interval: Duration::from_secs(60),
        }
    }
}

pub(super) async fn run(store: Store, r: Retention, shutdown: CancellationToken) {
    let mut total = 0u64;
    let mut tick = tokio::time::interval(r.interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.prune(r.max_age, r.max_bytes).await {
            Ok(p) if p.alerts > 0 => {
                total += p.alerts;
                info!(
                    removed = p.alerts,
                    bytes = p.bytes,
                    through_seq = ?p.through.map(|s| s.0),
                    removed_total = total,
                    "retention removed the oldest alerts"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "retention pass failed; will retry"),
        }
    }
}
