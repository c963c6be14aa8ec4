//! `liaison bench link`: a post's agent and the national broker on either
//! end of an emulated link ([`liaison::linkem`]; needs root).
//!
//! 1. Uplink: with the link down, N alerts are queued at the agent; the
//!    link comes up and the backlog drains to the broker, where an office's
//!    feed times each arrival. At a quarter, half and three quarters of
//!    the drain, an IMMEDIATE alert is published at the post; its time to
//!    the broker is how long an urgent alert waits behind the backlog
//!    (median and worst of the three). Bytes are counted at the link (IP packets, both
//!    directions: TCP, TLS, HTTP/2, gRPC and protobuf together).
//! 2. Downlink: M alerts published at the broker for the post, timed into
//!    the agent's inbox.
//!
//! 3. With `--jetstream PATH`: the same backlog through NATS JetStream over
//!    the same profile ([`super::link_jetstream`]), and the ratios.
//!
//! The alerts' text is words ([`words_alert`]), not one repeated letter, so
//! that compression is measured as it would be on real alerts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{BenchResult, Report};
use liaison::linkem::bed::{Bed, words_alert};
use liaison::linkem::{self, EmulatedLink};
use liaison::proto as pb;

/// Runs both phases over the profile; see the module documentation.
///
/// # Errors
/// When not root, or the test bed cannot be set up.
pub async fn link(
    profile: &str,
    count: u64,
    down: u64,
    size: usize,
    jetstream: Option<(&Path, Option<Duration>)>,
) -> BenchResult<Report> {
    let p = linkem::profile(profile)
        .ok_or_else(|| format!("--profile {profile}: one of {}", linkem::PROFILES))?;
    let mut report = Report::new(
        "link",
        json!({"profile": profile, "count": count, "down": down, "size": size,
               "jetstream": jetstream.is_some()}),
    );
    let capacity_bps = p.rate_bps;
    let link = EmulatedLink::create(p.clone())?;
    link.set_up(false);
    let exe = std::env::current_exe()?;
    let mut bed = Bed::start(link, &exe)?;
    bed.start_agent(&exe, &["--include-test"])?;

    // The office's feed at the broker times every arrival.
    let arrivals = bed.follow("bench").await?;

    // The backlog, queued at the post while the link is down.
    let mut rng = rand::rng();
    let backlog: Vec<pb::Alert> = (0..count)
        .map(|_| words_alert(size, false, &mut rng))
        .collect();
    let payload: usize = backlog.iter().map(prost::Message::encoded_len).sum();
    let mut agent = bed.agent_client()?;
    let mut answers = agent
        .publish_stream(tokio_stream::iter(
            backlog
                .iter()
                .map(|a| pb::PublishRequest {
                    alert: Some(a.clone()),
                })
                .collect::<Vec<_>>(),
        ))
        .await?
        .into_inner();
    while answers.message().await?.is_some() {}

    let counters = bed.link.counters();
    let (up0, down0) = (
        counters.up_bytes.load(Ordering::Relaxed),
        counters.down_bytes.load(Ordering::Relaxed),
    );
    let t_up = Instant::now();
    bed.link.set_up(true);
    let budget =
        Duration::from_secs_f64((payload as f64 * 8.0 / capacity_bps as f64) * 4.0 + 120.0);
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut arrivals = arrivals;
    let mut urgent: Vec<(String, Instant)> = Vec::new();
    let urgent_at = [count / 4, count / 2, count * 3 / 4];
    let mut first = None;
    while seen.len() < backlog.len() + urgent.len() {
        let remaining = budget.saturating_sub(t_up.elapsed());
        let Ok(Some((id, at))) = tokio::time::timeout(remaining, arrivals.recv()).await else {
            return Err(format!(
                "only {} of {} alerts arrived within {budget:?}",
                seen.len(),
                backlog.len()
            )
            .into());
        };
        first.get_or_insert(at);
        seen.insert(id, at);
        if urgent_at
            .get(urgent.len())
            .is_some_and(|&n| seen.len() as u64 >= n.max(1))
        {
            let a = words_alert(size, true, &mut rng);
            let id = a.id.clone();
            agent.publish(pb::PublishRequest { alert: Some(a) }).await?;
            urgent.push((id, Instant::now()));
        }
    }
    let last = seen.values().max().copied().unwrap_or(t_up);
    let drain = last.duration_since(t_up);
    let up_bytes = counters.up_bytes.load(Ordering::Relaxed) - up0;
    let down_bytes = counters.down_bytes.load(Ordering::Relaxed) - down0;
    report.count = count;
    report.elapsed = drain;
    let mut x = |k: &str, v: serde_json::Value| {
        report.extra.insert(k.into(), v);
    };
    x("capacity_bps", json!(capacity_bps));
    x("rtt_ms", json!(p.rtt.as_millis()));
    x("loss", json!(p.loss));
    x(
        "payload_bytes_per_alert",
        json!(payload as u64 / count.max(1)),
    );
    x("wire_bytes_up", json!(up_bytes));
    x("wire_bytes_down", json!(down_bytes));
    x(
        "wire_bytes_per_alert",
        json!((up_bytes + down_bytes) / count.max(1)),
    );
    x(
        "overhead_up_pct",
        json!(((up_bytes as f64 / payload as f64) - 1.0) * 100.0),
    );
    x(
        "goodput_pct",
        json!(payload as f64 * 8.0 / drain.as_secs_f64() / capacity_bps as f64 * 100.0),
    );
    // The same from the first acknowledged alert on: the link busy, its
    // reconnection and handshake left out.
    if let Some(f) = first {
        let busy = last.duration_since(f).as_secs_f64();
        x(
            "goodput_after_first_pct",
            json!(payload as f64 * 8.0 / busy / capacity_bps as f64 * 100.0),
        );
        x(
            "wire_utilisation_after_first_pct",
            json!(up_bytes as f64 * 8.0 / busy / capacity_bps as f64 * 100.0),
        );
    }
    x(
        "first_alert_after_link_up_ms",
        json!(first.map(|f| f.duration_since(t_up).as_millis())),
    );
    let mut waits: Vec<u128> = urgent
        .iter()
        .filter_map(|(id, at)| seen.get(id).map(|t| t.duration_since(*at).as_millis()))
        .collect();
    waits.sort_unstable();
    x("urgent_mid_drain_ms", json!(waits.get(waits.len() / 2)));
    x("urgent_mid_drain_max_ms", json!(waits.last()));
    x(
        "dropped_packets",
        json!(counters.dropped.load(Ordering::Relaxed)),
    );

    // The downlink: alerts for the post, into its inbox.
    if down > 0 {
        let figures = downlink(&bed, down, size).await?;
        report.extra.extend(figures);
    }
    drop(bed);

    // The peer, same backlog, same profile, same sitting.
    if let Some((nats, write_deadline)) = jetstream {
        // Three times our time and a minute more, then what arrived.
        let budget = drain * 3 + Duration::from_secs(60);
        let theirs =
            super::link_jetstream::jetstream(nats, write_deadline, &p, count, size, budget).await?;
        let ours_rate = count as f64 / drain.as_secs_f64();
        if let Some(r) = theirs["jetstream_alerts_per_s"].as_f64() {
            report
                .extra
                .insert("ratio_alerts_per_s".into(), json!(ours_rate / r));
        }
        if let Some(b) = theirs["jetstream_wire_bytes_per_alert"].as_u64() {
            let ours = (up_bytes + down_bytes) as f64 / count.max(1) as f64;
            report
                .extra
                .insert("ratio_wire_bytes_per_alert".into(), json!(ours / b as f64));
        }
        report.extra.extend(theirs);
    }
    Ok(report)
}

/// `count` alerts published at the broker for the post, timed into the
/// agent's inbox.
async fn downlink(
    bed: &Bed,
    count: u64,
    size: usize,
) -> BenchResult<serde_json::Map<String, serde_json::Value>> {
    let mut status = bed.agent_status_client()?;
    let before = status
        .status(pb::AgentStatusRequest {})
        .await?
        .into_inner()
        .inbox_total;
    let counters = bed.link.counters();
    let (up0, down0) = (
        counters.up_bytes.load(Ordering::Relaxed),
        counters.down_bytes.load(Ordering::Relaxed),
    );
    let mut office = bed.broker_client("office")?;
    let mut rng = rand::rng();
    let alerts: Vec<pb::Alert> = (0..count)
        .map(|_| words_alert(size, false, &mut rng))
        .collect();
    let payload: usize = alerts.iter().map(prost::Message::encoded_len).sum();
    let t0 = Instant::now();
    let mut answers = office
        .publish_stream(tokio_stream::iter(
            alerts
                .into_iter()
                .map(|a| pb::PublishRequest { alert: Some(a) })
                .collect::<Vec<_>>(),
        ))
        .await?
        .into_inner();
    while answers.message().await?.is_some() {}
    let capacity = bed.link.profile.rate_bps as f64;
    let deadline = t0 + Duration::from_secs_f64(payload as f64 * 8.0 / capacity * 4.0 + 120.0);
    loop {
        let now = status
            .status(pb::AgentStatusRequest {})
            .await?
            .into_inner()
            .inbox_total;
        if now >= before + count {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the post's inbox got {} of {count}", now - before).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = t0.elapsed();
    let up = counters.up_bytes.load(Ordering::Relaxed) - up0;
    let down = counters.down_bytes.load(Ordering::Relaxed) - down0;
    let mut m = serde_json::Map::new();
    m.insert(
        "down_alerts_per_s".into(),
        json!(count as f64 / took.as_secs_f64()),
    );
    m.insert(
        "down_wire_bytes_per_alert".into(),
        json!((up + down) / count.max(1)),
    );
    m.insert(
        "down_goodput_pct".into(),
        json!(payload as f64 * 8.0 / took.as_secs_f64() / bed.link.profile.rate_bps as f64 * 100.0),
    );
    Ok(m)
}
