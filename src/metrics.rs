//! Prometheus metrics: the names we export, the recorder, and a minimal
//! HTTP endpoint that serves them (`--metrics ADDR`).
//!
//! The core records through the `metrics` facade; without an installed
//! recorder (in tests, in library use) every call is a no-op. The binary
//! installs one recorder per process.

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Publishes answered, by `result`: accepted, duplicate, invalid, denied,
/// id_conflict, outbox_full, failed.
pub const PUBLISHES: &str = "liaison_publishes_total";
/// First deliveries to feeds.
pub const DELIVERIES: &str = "liaison_deliveries_total";
/// Deliveries sent again after their deadline.
pub const REDELIVERIES: &str = "liaison_redeliveries_total";
/// Deliveries acknowledged by subscribers.
pub const ACKS: &str = "liaison_acks_total";
/// Per durable feed (`owner`, `feed`): alerts after the cursor, and
/// deliveries awaiting acknowledgement.
pub const FEED_BACKLOG: &str = "liaison_feed_backlog";
pub const FEED_IN_FLIGHT: &str = "liaison_feed_in_flight";
/// Commands committed per group commit, and the time of its flush.
pub const COMMIT_BATCH: &str = "liaison_commit_batch_size";
pub const COMMIT_FLUSH_SECONDS: &str = "liaison_commit_flush_seconds";
/// 1 while the store refuses new alerts, by `reason`: `low_disk` (below
/// the free-space reserve; lifts by itself) or `stopped` (a failure; needs a
/// restart).
pub const WRITES_REFUSED: &str = "liaison_store_writes_refused";
/// Free bytes on the data directory's disk, as last measured.
pub const DISK_FREE_BYTES: &str = "liaison_store_disk_free_bytes";
/// Nodes with an open connection.
pub const CONNECTED_NODES: &str = "liaison_connected_nodes";
/// Refused certificates, by `reason`.
pub const CERT_REFUSALS: &str = "liaison_certificate_refusals_total";
/// Connections closed after the TLS handshake because they sent no HTTP/2
/// preface in time (`reason="no_preface"`) or something else
/// (`reason="not_http2"`).
pub const IDLE_CONNECTIONS_CLOSED: &str = "liaison_idle_connections_closed_total";
/// Agent: link state (0 connecting, 1 up, 2 down, 3 refused), outbox depth
/// and age of its oldest alert, lifetime counters, reconnects.
pub const AGENT_LINK_STATE: &str = "liaison_agent_link_state";
pub const AGENT_OUTBOX_DEPTH: &str = "liaison_agent_outbox_depth";
pub const AGENT_OUTBOX_OLDEST_SECONDS: &str = "liaison_agent_outbox_oldest_age_seconds";
pub const AGENT_FORWARDED: &str = "liaison_agent_forwarded_total";
pub const AGENT_EXPIRED: &str = "liaison_agent_expired_total";
pub const AGENT_REJECTED: &str = "liaison_agent_rejected_total";
pub const AGENT_INBOX: &str = "liaison_agent_inbox_total";
pub const AGENT_RECONNECTS: &str = "liaison_agent_reconnects_total";
/// Federation, per `peer`: alerts the peer stored from us, alerts we
/// imported from it, refusals both ways, and alerts retention removed
/// before the link could export them.
pub const LINK_EXPORTED: &str = "liaison_link_exported_total";
pub const LINK_IMPORTED: &str = "liaison_link_imported_total";
pub const LINK_REFUSED: &str = "liaison_link_refused_total";
pub const LINK_REFUSED_BY_PEER: &str = "liaison_link_refused_by_peer_total";
pub const LINK_MISSED: &str = "liaison_link_missed_total";
/// Federation, per `peer`: 1 while the link is up, and alerts past its
/// export cursor.
pub const LINK_UP: &str = "liaison_link_up";
pub const LINK_BACKLOG: &str = "liaison_link_backlog";

/// Installs the process-wide Prometheus recorder.
///
/// # Errors
/// When a recorder is already installed.
pub fn install() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(COMMIT_BATCH.into()),
            &[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(COMMIT_FLUSH_SECONDS.into()),
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
                ],
            )
        })
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}

/// Serves `GET /metrics` (any path, in fact) on `listener` until shutdown.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, shutdown: CancellationToken) {
    let addr = listener.local_addr().ok();
    info!(?addr, "metrics endpoint listening");
    loop {
        let (mut conn, remote) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            // Read the request head (bounded); we answer every request alike.
            let mut buf = [0u8; 4096];
            let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
            if !matches!(read, Ok(Ok(n)) if n > 0) {
                return;
            }
            handle.run_upkeep();
            let body = handle.render();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if let Err(e) = async {
                conn.write_all(head.as_bytes()).await?;
                conn.write_all(body.as_bytes()).await?;
                conn.shutdown().await
            }
            .await
            {
                debug!(%remote, error = %e, "metrics client went away");
            }
        });
    }
}

/// Binds the metrics listener and starts serving; returns the bound address.
///
/// # Errors
/// When the address cannot be bound.
pub async fn start(
    addr: SocketAddr,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, handle, shutdown));
    Ok(bound)
}
