//! The `liaison` command line: argument definitions and the commands behind
//! them. `main.rs` only parses, sets up logging and calls [`run`].

mod admin;
mod agent;
mod alert_args;
mod bench;
mod bundle;
mod cap;
mod client_cmds;
pub mod config;
mod conn;
mod console;
mod peers;
mod serve;
mod sharing;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use client_cmds::{GetArgs, HistoryArgs, PublishArgs, SubscribeArgs};
pub use serve::ServeArgs;

/// Liaison: a message broker for cross-border alert sharing between border
/// agencies (mutual-TLS gRPC publish/subscribe with durable feeds).
#[derive(Debug, Parser)]
#[command(
    name = "liaison",
    version,
    propagate_version = true,
    args_override_self = true
)]
pub struct Cli {
    /// Log format on standard error (filter with RUST_LOG, e.g. RUST_LOG=liaison=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LIAISON_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a broker. With no flags: listens on 127.0.0.1:7443, keeps data in
    /// ./data and creates a development PKI in ./certs if none exists.
    Serve(ServeArgs),
    /// Development PKI: a CA, the broker's certificate and node certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Run the store-and-forward agent of a post (`agent status` shows a
    /// running agent's link and queues).
    Agent(Box<agent::AgentArgs>),
    /// Publish one alert and print the acknowledgement as JSON.
    Publish(Box<PublishArgs>),
    /// Follow a feed: print each alert, then acknowledge it.
    Subscribe(SubscribeArgs),
    /// Fetch one alert by id.
    Get(GetArgs),
    /// List stored alerts by filter and time range.
    History(HistoryArgs),
    /// Acknowledge an alert as an officer (a receipt for the originator).
    Ack(sharing::AckArgs),
    /// The receipts of one of your agency's alerts: who received and who
    /// acknowledged it.
    Receipts(sharing::ReceiptsArgs),
    /// Sharing policy files.
    #[command(subcommand)]
    Policy(sharing::PolicyCommand),
    /// The tamper-evident audit trail.
    #[command(subcommand)]
    Audit(sharing::AuditCommand),
    /// Configuration files of `serve` and `agent`.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Offline bundles: alerts on removable media between a post with no
    /// link and its national broker, and the receipts that come back.
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// Administrator views: feeds, connected nodes, totals.
    #[command(subcommand)]
    Admin(admin::AdminView),
    /// Check that a broker or agent is serving (gRPC health; exit 0 when it is).
    Health(admin::HealthArgs),
    /// The liaison officer's web page, on loopback: live feed, map, detail,
    /// acknowledge, search, compose (prints the address to open, with a
    /// one-time token).
    Console(console::ConsoleArgs),
    /// A simulated region: a broker (or, with --federated, one per country,
    /// linked along the borders), six countries' posts behind flaky links,
    /// liaison offices' feeds; ends with `verdict: published N, delivered N,
    /// lost N, leaked N` (exit status 0 only when nothing was lost or
    /// leaked and no broker stored an alert twice).
    Demo(DemoArgs),
    /// Measure publish throughput and latency against a broker.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long the region publishes before the verdict.
    #[arg(long, default_value = "60s")]
    pub duration: String,
    /// Posts (each behind its own agent and flaky link) per country.
    #[arg(long, default_value_t = 3)]
    pub posts_per_country: usize,
    /// Alerts per second across the region.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// One national broker per country, each with its own PKI and policy,
    /// linked to its neighbours' over flaky federation links.
    #[arg(long)]
    pub federated: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file; every error is explained with its line.
    Check {
        /// The file (TOML).
        file: PathBuf,
        /// Which command it configures (guessed: a file with `upstream` is an agent's).
        #[arg(long, value_enum)]
        kind: Option<ConfigKind>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConfigKind {
    Serve,
    Agent,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create D/ca.crt, D/ca.key, D/broker.crt and D/broker.key.
    Init {
        /// Directory to write into.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Extra DNS name or IP address for the broker certificate (repeatable);
        /// localhost, 127.0.0.1 and ::1 are always included.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// The state whose national PKI this is (ISO 3166-1 alpha-2, e.g.
        /// TJ): the CA is named after it and the broker's certificate carries
        /// urn:liaison:<CC>:liaison:broker, which federation links need.
        #[arg(long, value_parser = parse_country)]
        country: Option<liaison::identity::CountryCode>,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue D/NAME.crt and D/NAME.key for a node, signed by D/ca.key.
    Issue {
        /// Directory holding ca.crt and ca.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The node's identity, urn:liaison:<CC>:<agency>:<node>.
        #[arg(long)]
        node: liaison::identity::NodeId,
        /// File name for the certificate and key (NAME.crt, NAME.key).
        #[arg(long)]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Revoke D/NAME.crt: add it to D/ca.crl, signed by D/ca.key. A running
    /// broker using D re-reads the list within seconds (or at SIGHUP),
    /// refuses the certificate and closes its open connections.
    Revoke {
        /// Directory holding ca.crt, ca.key and NAME.crt.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The certificate's file name (NAME.crt).
        #[arg(long)]
        name: String,
    },
}

/// Runs a parsed command line.
///
/// # Errors
/// Any failure of the command, to be printed by `main`.
/// Writes a status line that scripts wait for on standard output. A reader
/// that went away (a closed pipe) must not bring the server down.
pub(crate) fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Starts the Prometheus endpoint unless `spec` is "off"; a busy address
/// is reported and the command goes on without metrics.
async fn start_metrics(
    spec: &str,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    if spec == "off" {
        return Ok(());
    }
    let addr: std::net::SocketAddr = spec.parse().map_err(|_| {
        anyhow::anyhow!("--metrics: `{spec}` is not an address such as 127.0.0.1:9464 (or \"off\")")
    })?;
    let handle = liaison::metrics::install().map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    match liaison::metrics::start(addr, handle, shutdown.clone()).await {
        Ok(bound) => announce(&format!("liaison: metrics on http://{bound}/metrics")),
        Err(e) => {
            tracing::warn!(%addr, error = %e, "metrics endpoint not available; running without it")
        }
    }
    Ok(())
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Certs(cmd) => certs(cmd),
        Command::Agent(args) => agent::run(*args).await,
        Command::Publish(args) => client_cmds::publish(*args).await,
        Command::Subscribe(args) => client_cmds::subscribe(args).await,
        Command::Get(args) => client_cmds::get(args).await,
        Command::History(args) => client_cmds::history(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Demo(args) => demo(args).await,
        Command::Ack(args) => sharing::ack(args).await,
        Command::Admin(args) => admin::run(args).await,
        Command::Config(ConfigCommand::Check { file, kind }) => check_config(&file, kind),
        Command::Health(args) => admin::health(args).await,
        Command::Console(args) => console::run(args).await,
        Command::Receipts(args) => sharing::receipts(args).await,
        Command::Policy(cmd) => sharing::policy(cmd).await,
        Command::Audit(cmd) => sharing::audit(cmd).await,
        Command::Bundle(cmd) => bundle::run(cmd).await,
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.posts_per_country == 0 || args.rate <= 0.0 {
        anyhow::bail!("--posts-per-country and --rate must be more than 0");
    }
    let config = crate::demo::DemoConfig {
        duration: alert_args::parse_duration(&args.duration)?,
        posts_per_country: args.posts_per_country,
        rate: args.rate,
        summary_every: std::time::Duration::from_secs(2),
        federated: args.federated,
    };
    let verdict = crate::demo::run(config, |line| announce(&line))
        .await
        .map_err(|e| anyhow::anyhow!("the demo could not run: {e}"))?;
    announce(&match verdict.stored_twice {
        0 => format!(
            "demo: every alert stored once per broker ({} broker(s) checked)",
            verdict.brokers
        ),
        n => format!("demo: {n} alert(s) stored twice by a broker"),
    });
    announce(&verdict.to_string());
    Ok(if verdict.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check_config(file: &std::path::Path, kind: Option<ConfigKind>) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let kind = match kind {
        Some(ConfigKind::Serve) => config::Kind::Serve,
        Some(ConfigKind::Agent) => config::Kind::Agent,
        None => config::kind_of(&text),
    };
    let settings = match config::settings(&text, kind, |_| false) {
        Ok(settings) => settings,
        Err(errors) => {
            for e in &errors {
                eprintln!("{}:{}: {}", file.display(), e.line, e.message);
            }
            eprintln!("{}: {} error(s); not valid", file.display(), errors.len());
            return Ok(ExitCode::FAILURE);
        }
    };
    // The values must also be what the command's flags accept: each setting
    // is tried alone, so that an error points at its line.
    let sub = match kind {
        config::Kind::Serve => "serve",
        config::Kind::Agent => "agent",
    };
    let mut errors = 0;
    for setting in &settings {
        let argv = ["liaison", sub]
            .into_iter()
            .map(String::from)
            .chain(setting.flags.iter().cloned());
        if let Err(e) = <Cli as clap::Parser>::try_parse_from(argv)
            && e.kind() != clap::error::ErrorKind::MissingRequiredArgument
        {
            let rendered = e.render().to_string();
            let reason = rendered
                .lines()
                .next()
                .unwrap_or("invalid")
                .trim_start_matches("error: ");
            eprintln!(
                "{}:{}: {}: {reason}",
                file.display(),
                setting.line,
                setting.key
            );
            errors += 1;
        }
    }
    let mut peers = 0;
    if kind == config::Kind::Serve {
        match peers::parse(&text, std::path::Path::new(".")) {
            Ok((p, _)) => peers = p.len(),
            Err(problems) => {
                for e in &problems {
                    eprintln!("{}:{}: {}", file.display(), e.line, e.message);
                }
                errors += problems.len();
            }
        }
    }
    if errors > 0 {
        eprintln!("{}: {errors} error(s); not valid", file.display());
        return Ok(ExitCode::FAILURE);
    }
    match peers {
        0 => println!("{}: valid `{sub}` configuration", file.display()),
        n => println!(
            "{}: valid `{sub}` configuration ({n} federation peer(s))",
            file.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_country(s: &str) -> Result<liaison::identity::CountryCode, String> {
    liaison::identity::CountryCode::parse(s).map_err(str::to_owned)
}

fn certs(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    let written = match cmd {
        CertsCommand::Init {
            dir,
            hosts,
            country,
            force,
        } => liaison::pki::init_for(&dir, &hosts, country, force)?,
        CertsCommand::Issue {
            dir,
            node,
            name,
            days,
            force,
        } => liaison::pki::issue_node(&dir, &node, &name, days, force)?,
        CertsCommand::Revoke { dir, name } => {
            let r = liaison::pki::revoke(&dir, &name)?;
            if r.already {
                println!("{name}.crt (serial {}) was already revoked", r.serial);
            } else {
                println!("revoked {name}.crt (serial {})", r.serial);
            }
            println!(
                "wrote {} ({} revoked); a running broker applies it within seconds, or at SIGHUP",
                r.crl.display(),
                r.listed
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    for f in written.files {
        println!("wrote {}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}
