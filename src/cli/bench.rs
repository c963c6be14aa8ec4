//! `liaison bench WORKLOAD`: runs one of the load generators of
//! [`crate::bench`] and prints its report (or one JSON object).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::conn::ConnArgs;
use crate::bench::{self, Target};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Durable publishes with W in flight; rate and acknowledgement latency.
    Publish {
        #[command(flatten)]
        common: Common,
        /// Publishes in flight at once (1 = one after the other).
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Seconds to measure (after a one-second warm-up).
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Use one PublishStream instead of unary calls.
        #[arg(long, conflicts_with = "unary")]
        stream: bool,
        /// Use unary Publish calls (the default).
        #[arg(long)]
        unary: bool,
    },
    /// Two national brokers linked on loopback: a backlog of N alerts
    /// crossing once the peer comes up, then post → foreign office latency
    /// at a fixed rate (local only).
    Federation {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Alerts per second of the latency phase.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds of the latency phase.
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// A post's agent and the broker on either end of an emulated link
    /// (satellite, 3g, radio; needs root): a backlog of N alerts draining
    /// upstream, an urgent alert in the middle of it, M alerts down into
    /// the post's inbox; rate, goodput, bytes on the wire (local only).
    Link {
        #[command(flatten)]
        common: Common,
        /// satellite (64 kbit/s, 600 ms, 5 % loss), 3g (384 kbit/s, 200 ms,
        /// 1 %), radio (9.6 kbit/s, 1 s, 10 %, up 5 min / down 10 min).
        #[arg(long, default_value = "satellite")]
        profile: String,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Alerts down to the post's inbox afterwards (0: none).
        #[arg(long, default_value_t = 100)]
        down: u64,
        /// Then the same backlog through NATS JetStream over the same
        /// profile (a leaf node at the post, its stream sourced by the
        /// hub's), with this nats-server binary; reports both and the
        /// ratios.
        #[arg(long, value_name = "NATS_SERVER")]
        jetstream: Option<PathBuf>,
        /// nats-server's write deadline for the JetStream run (its default
        /// is 10s: a leaf connection whose writes do not drain within it
        /// is closed as a slow consumer).
        #[arg(long, requires = "jetstream")]
        jetstream_write_deadline: Option<String>,
    },
    /// Publish → feed delivery latency at a fixed rate.
    E2e {
        #[command(flatten)]
        common: Common,
        /// Alerts per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// One publisher, K durable feeds each receiving everything.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        feeds: usize,
        /// Alerts published.
        #[arg(long, default_value_t = 2000)]
        count: u64,
    },
    /// An agent holding N queued alerts: time from link-up to all
    /// acknowledged upstream (local only).
    Drain {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
    },
    /// K idle durable feeds: resident memory per feed (local only; client
    /// and broker in one process, so an upper bound).
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        feeds: usize,
    },
    /// A broker holding N alerts is restarted: time until it serves again
    /// (local only).
    Restart {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
    },
    /// N mTLS nodes each publishing R alerts a second and F durable feeds
    /// following (one category each), for S seconds, on a broker run as a
    /// child process: its resident memory, publish and delivery p99 over
    /// time, errors and connections (local only).
    Soak {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = 100)]
        feeds: usize,
        /// Alerts per second per node.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        #[arg(long, default_value_t = 600)]
        secs: u64,
        /// Seconds between samples.
        #[arg(long, default_value_t = 30)]
        sample: u64,
    },
}

#[derive(Debug, Args)]
pub struct Common {
    /// Target a deployment instead of a broker started here (publish, e2e
    /// and fanout), with a node certificate (--certs D --name N).
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// PKI directory of the node certificate (with --broker).
    #[arg(long)]
    pub certs: Option<std::path::PathBuf>,
    /// Node name inside --certs.
    #[arg(long)]
    pub name: Option<String>,
    /// Approximate encoded size of each alert in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Print one JSON object instead of a report.
    #[arg(long)]
    pub json: bool,
    /// The broker (and agent) started here encrypt their stores at rest
    /// (key files in the bench's directory): what encryption costs.
    #[arg(long, conflicts_with = "broker")]
    pub encrypt: bool,
}

async fn target(common: &Common) -> Result<Target> {
    match &common.broker {
        Some(url) => {
            let conn = ConnArgs {
                broker: url.clone(),
                certs: common.certs.clone(),
                name: common.name.clone(),
                ca: None,
                cert: None,
                key: None,
            };
            Ok(Target::remote(url.clone(), conn.tls_files()?))
        }
        None => Target::local(common.encrypt)
            .await
            .map_err(|e| anyhow!("cannot start a local broker: {e}")),
    }
}

/// A spinner with the elapsed time while the workload runs (hidden with --json).
fn progress(common: &Common, what: &str) -> ProgressBar {
    if common.json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

pub async fn run(cmd: BenchCommand) -> Result<ExitCode> {
    let common = match &cmd {
        BenchCommand::Publish { common, .. }
        | BenchCommand::E2e { common, .. }
        | BenchCommand::Federation { common, .. }
        | BenchCommand::Link { common, .. }
        | BenchCommand::Fanout { common, .. }
        | BenchCommand::Drain { common, .. }
        | BenchCommand::Idle { common, .. }
        | BenchCommand::Restart { common, .. }
        | BenchCommand::Soak { common, .. } => common,
    };
    // Workloads with brokers of their own.
    match &cmd {
        BenchCommand::Soak {
            nodes,
            feeds,
            rate,
            secs,
            sample,
            ..
        } => {
            let soak = bench::soak(bench::Soak {
                nodes: *nodes,
                feeds: *feeds,
                rate: *rate,
                secs: *secs,
                sample: Duration::from_secs((*sample).max(1)),
                size: common.size,
            });
            return own_brokers(
                common,
                "the soak starts its own broker",
                "soaking a broker",
                soak,
            )
            .await;
        }
        BenchCommand::Federation {
            count, rate, secs, ..
        } => {
            let federation = bench::federation(*count, *rate, *secs, common.size);
            return own_brokers(
                common,
                "the federation bench starts its own two brokers",
                "two brokers and a link",
                federation,
            )
            .await;
        }
        BenchCommand::Link {
            profile,
            count,
            down,
            jetstream,
            jetstream_write_deadline,
            ..
        } => {
            let deadline = jetstream_write_deadline
                .as_deref()
                .map(super::alert_args::parse_duration)
                .transpose()?;
            let link = bench::link(
                profile,
                *count,
                *down,
                common.size,
                jetstream.as_deref().map(|j| (j, deadline)),
            );
            return own_brokers(
                common,
                "the link bench starts its own broker and agent",
                &format!("a post on a {profile} link"),
                link,
            )
            .await;
        }
        _ => {}
    }
    let mut target = target(common).await?;
    let bar = progress(common, &format!("running against {}", target.url));
    let size = common.size;
    let result = match &cmd {
        BenchCommand::Publish {
            window,
            secs,
            stream,
            ..
        } => bench::publish(&target, *window, size, *secs, *stream).await,
        BenchCommand::E2e { rate, secs, .. } => bench::e2e(&target, *rate, size, *secs).await,
        BenchCommand::Fanout { feeds, count, .. } => {
            bench::fanout(&target, *feeds, *count, size).await
        }
        BenchCommand::Drain { count, .. } => bench::drain(&mut target, *count, size).await,
        BenchCommand::Restart { count, .. } => bench::restart(&mut target, *count, size).await,
        BenchCommand::Idle { feeds, .. } => bench::idle(&target, *feeds).await,
        // Run above, with brokers of their own.
        BenchCommand::Soak { .. } => Err("the soak starts its own broker".into()),
        BenchCommand::Federation { .. } => {
            Err("the federation bench starts its own brokers".into())
        }
        BenchCommand::Link { .. } => Err("the link bench starts its own broker and agent".into()),
    };
    bar.finish_and_clear();
    target.finish().await;
    let mut report = result.map_err(|e| anyhow!("the workload failed: {e}"))?;
    if common.encrypt {
        report.params.insert("encrypt".into(), true.into());
    }
    print(common, &report);
    Ok(ExitCode::SUCCESS)
}

/// Runs a workload that starts its own brokers (`starts`: why `--broker`
/// is refused), behind a progress bar, and prints its report.
async fn own_brokers(
    common: &Common,
    starts: &str,
    what: &str,
    workload: impl std::future::Future<Output = bench::BenchResult<bench::Report>>,
) -> Result<ExitCode> {
    if common.broker.is_some() {
        return Err(anyhow!("{starts}; --broker is not for it"));
    }
    let bar = progress(common, what);
    let report = workload
        .await
        .map_err(|e| anyhow!("the workload failed: {e}"));
    bar.finish_and_clear();
    print(common, &report?);
    Ok(ExitCode::SUCCESS)
}

fn print(common: &Common, report: &bench::Report) {
    if common.json {
        println!("{}", report.json());
    } else {
        println!("{}", report.text());
    }
}
