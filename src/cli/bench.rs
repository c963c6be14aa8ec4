//! `liaison bench`: a load generator to run against a deployment. Publishes
//! alerts of a given size with a fixed number in flight and reports the
//! acknowledged (durable) rate and latency percentiles from an HDR histogram.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::sync::Mutex;

use super::alert_args::AlertArgs;
use super::client_cmds::status_error;
use super::conn::ConnArgs;
use crate::proto as pb;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Alerts to publish (after the warm-up).
    #[arg(long, default_value_t = 20_000)]
    pub count: u64,
    /// Publishes in flight at once (1 = one after the other).
    #[arg(long, default_value_t = 64)]
    pub in_flight: u64,
    /// Approximate encoded size of each alert in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Alerts published first and not measured.
    #[arg(long, default_value_t = 1000)]
    pub warmup: u64,
    /// Print one JSON object with the results instead of a report.
    #[arg(long)]
    pub json: bool,
}

fn bench_alert(size: usize) -> Result<pb::Alert> {
    let args = AlertArgs {
        category: Some("other".into()),
        headline: Some("liaison bench".into()),
        status: "test".into(),
        msg_type: "alert".into(),
        severity: "minor".into(),
        urgency: "unknown".into(),
        certainty: "unknown".into(),
        tlp: "green".into(),
        ..AlertArgs::default()
    };
    let mut alert = args.to_alert()?;
    let base = prost::Message::encoded_len(&alert);
    alert.description = "x".repeat(size.saturating_sub(base + 3));
    Ok(alert)
}

pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    if args.in_flight == 0 || args.count == 0 {
        bail!("--count and --in-flight must be at least 1");
    }
    let template = bench_alert(args.size)?;
    let client = args.conn.connect().await?;
    let total = args.warmup + args.count;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} {per_sec} eta {eta}",
    )?);
    let started = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut workers = Vec::new();
    for _ in 0..args.in_flight {
        let (mut client, next, hist, bar, template, started) = (
            client.clone(),
            next.clone(),
            hist.clone(),
            bar.clone(),
            template.clone(),
            started.clone(),
        );
        let warmup = args.warmup;
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    break;
                }
                if n == warmup {
                    let _ = started.set(Instant::now());
                }
                let mut alert = template.clone();
                alert.id = uuid::Uuid::now_v7().to_string();
                let t = Instant::now();
                client
                    .publish(pb::PublishRequest { alert: Some(alert) })
                    .await
                    .map_err(status_error)?;
                if n >= warmup {
                    local.record(t.elapsed().as_micros().max(1) as u64)?;
                }
                bar.inc(1);
            }
            hist.lock().await.add(&local)?;
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let elapsed = started.get().map_or(Duration::ZERO, Instant::elapsed);
    bar.finish_and_clear();
    let h = hist.lock().await;
    let rate = h.len() as f64 / elapsed.as_secs_f64().max(1e-9);
    let q = |p: f64| h.value_at_quantile(p);
    let report = json!({
        "workload": "publish",
        "broker": args.conn.broker,
        "count": args.count,
        "in_flight": args.in_flight,
        "size": args.size,
        "msgs_per_s": rate.round(),
        "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999), "max_us": h.max(),
        "elapsed_s": elapsed.as_secs_f64(),
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "publish: {} alerts of ~{} B, {} in flight: {:.0} acknowledged alerts/s\n\
             latency p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            args.count,
            args.size,
            args.in_flight,
            rate,
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            h.max()
        );
    }
    Ok(ExitCode::SUCCESS)
}
