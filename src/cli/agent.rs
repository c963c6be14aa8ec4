//! `liaison agent` (run the store-and-forward agent of a post) and
//! `liaison agent status`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::alert_args::parse_duration;
use super::client_cmds::{FilterArgs, status_error};
use super::serve::on_signal;
use liaison::agent::{self, AgentConfig};
use liaison::json::time_json;
use liaison::proto as pb;
use liaison::store::OutboxLimits;
use liaison::tls::TlsFiles;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    #[command(flatten)]
    pub run: AgentRunArgs,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Show the link state, outbox and inbox of a running agent.
    Status(AgentStatusArgs),
    /// Emergency wipe (a post about to be overrun): destroys the store's
    /// keys first — the key file and the wrapped data key, overwritten and
    /// removed, after which nothing sealed can be read —, stops an agent
    /// running on the directory, then removes the data directory. No
    /// questions asked.
    Wipe(AgentWipeArgs),
    /// Change what unlocks an encrypted store (a new key file, or a new
    /// passphrase): the data key is wrapped anew, the data is not
    /// rewritten (docs/security.md#changing-the-key).
    Rekey(AgentRekeyArgs),
}

#[derive(Debug, Args)]
pub struct AgentRekeyArgs {
    /// The data directory (an agent's or a broker's).
    #[arg(long, env = "LIAISON_AGENT_DATA", default_value = "agent-data")]
    pub data: PathBuf,
    /// What opens the store now.
    #[command(flatten)]
    pub key: super::serve::StoreKeyArgs,
    /// The new key file (made, mode 0600, when it does not exist).
    #[arg(long, value_name = "FILE", conflicts_with = "new_passphrase")]
    pub new_key_file: Option<PathBuf>,
    /// A new passphrase ($LIAISON_NEW_PASSPHRASE, or asked).
    #[arg(long)]
    pub new_passphrase: bool,
}

#[derive(Debug, Args)]
pub struct AgentWipeArgs {
    /// The agent's data directory.
    #[arg(long, env = "LIAISON_AGENT_DATA", default_value = "agent-data")]
    pub data: PathBuf,
    /// The store's key file (destroyed first).
    #[arg(long, env = "LIAISON_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AgentRunArgs {
    /// Configuration file (TOML; see agent.example.toml). Environment
    /// variables and flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The upstream broker, https://HOST:PORT.
    #[arg(long, env = "LIAISON_UPSTREAM", required = true)]
    pub upstream: Option<String>,
    /// PKI directory with ca.crt and this post's NAME.crt/NAME.key.
    #[arg(long, env = "LIAISON_CERTS", default_value = "certs")]
    pub certs: PathBuf,
    /// This post's certificate name in --certs (its identity upstream).
    #[arg(long, env = "LIAISON_NAME", required = true)]
    pub name: Option<String>,
    /// Local listener for the post's software. Plaintext is allowed only on
    /// loopback; any other address needs --listen-cert and --listen-key.
    #[arg(long, env = "LIAISON_AGENT_LISTEN", default_value = "127.0.0.1:7444")]
    pub listen: SocketAddr,
    /// Server certificate for a non-loopback listener (clients need
    /// certificates from the same CA).
    #[arg(long, requires = "listen_key")]
    pub listen_cert: Option<PathBuf>,
    #[arg(long, requires = "listen_cert")]
    pub listen_key: Option<PathBuf>,
    /// Data directory (outbox and inbox).
    #[arg(long, env = "LIAISON_AGENT_DATA", default_value = "agent-data")]
    pub data: PathBuf,
    /// Most alerts waiting in the outbox; further local publishes are refused.
    #[arg(long, default_value_t = 1_000_000)]
    pub outbox_max_alerts: u64,
    /// Most bytes waiting in the outbox.
    #[arg(long, default_value_t = 1024 * 1024 * 1024)]
    pub outbox_max_bytes: u64,
    /// Name of the agent's durable feed at the upstream broker.
    #[arg(long, default_value = "inbox")]
    pub inbox_feed: String,
    /// What the inbox receives from upstream.
    #[command(flatten)]
    pub inbox_filter: FilterArgs,
    /// Longest wait between reconnect attempts.
    #[arg(long, default_value = "60s")]
    pub max_backoff: String,
    /// Prometheus metrics endpoint ("off" to disable).
    #[arg(long, env = "LIAISON_METRICS", default_value = "127.0.0.1:9465")]
    pub metrics: String,
    /// HTTP/2 keepalive interval towards upstream (stall detection).
    #[arg(long, default_value = "15s")]
    pub keepalive: String,
    /// How long a connection attempt upstream waits for an answer.
    #[arg(long, default_value = "2s")]
    pub connect_timeout: String,
    /// Longest wait between connection attempts while upstream does not
    /// answer (a post's link that comes back is used within seconds).
    #[arg(long, default_value = "1s")]
    pub down_retry: String,
    /// Compress alerts sent upstream: gzip (for a post's slow link), or
    /// none (a fast link, where it costs CPU for nothing).
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "none"])]
    pub compression: String,
    #[command(flatten)]
    pub store: super::serve::StoreArgs,
}

#[derive(Debug, Args)]
pub struct AgentStatusArgs {
    /// The agent's local address.
    #[arg(long, env = "LIAISON_AGENT", default_value = "http://127.0.0.1:7444")]
    pub agent: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: AgentArgs) -> Result<ExitCode> {
    match args.command {
        Some(AgentCommand::Status(s)) => status(s).await,
        Some(AgentCommand::Wipe(w)) => wipe(&w),
        Some(AgentCommand::Rekey(r)) => rekey(&r),
        None => serve(args.run).await,
    }
}

fn rekey(args: &AgentRekeyArgs) -> Result<ExitCode> {
    use super::serve::read_passphrase;
    use liaison::store::KeySource;
    let Some(old) = args.key.key_source()? else {
        bail!("say what opens the store now: --key-file FILE or --passphrase");
    };
    let new = match (&args.new_key_file, args.new_passphrase) {
        (Some(f), _) => KeySource::File(f.clone()),
        (None, true) => KeySource::Passphrase(read_passphrase(
            "LIAISON_NEW_PASSPHRASE",
            "the new passphrase",
        )?),
        (None, false) => {
            bail!("say what opens it from now on: --new-key-file FILE or --new-passphrase")
        }
    };
    liaison::store::vault::rekey(&args.data, &old, &new)
        .map_err(|e| anyhow::anyhow!("the key was not changed: {e}"))?;
    println!(
        "{}: the store opens with the new key only; destroy the old one (the data key is unchanged: see docs/security.md)",
        args.data.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn wipe(args: &AgentWipeArgs) -> Result<ExitCode> {
    let w = liaison::store::vault::wipe(&args.data, args.key_file.as_deref())
        .map_err(|e| anyhow::anyhow!("the wipe stopped: {e}"))?;
    if args.json {
        println!(
            "{}",
            json!({
                "keys_destroyed": w.shredded,
                "keys_destroyed_after_ms": w.keys_gone_after.as_secs_f64() * 1e3,
                "agents_stopped": w.stopped,
                "data_removed": w.data_removed,
                "files": w.files,
                "bytes": w.bytes,
                "took_ms": w.took.as_secs_f64() * 1e3,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    if w.shredded.is_empty() {
        println!("no key to destroy (no key file given or found, no vault in the data directory)");
    }
    for p in &w.shredded {
        println!("destroyed {} (overwritten, synced, removed)", p.display());
    }
    for pid in &w.stopped {
        println!("stopped the agent running on it (pid {pid})");
    }
    if w.data_removed {
        println!(
            "removed {} ({} files, {} bytes)",
            args.data.display(),
            w.files,
            w.bytes
        );
    } else {
        println!("{}: no data directory", args.data.display());
    }
    println!(
        "keys gone after {:.1} ms, done in {:.1} ms",
        w.keys_gone_after.as_secs_f64() * 1e3,
        w.took.as_secs_f64() * 1e3
    );
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: AgentRunArgs) -> Result<ExitCode> {
    let (Some(upstream), Some(name)) = (args.upstream, args.name) else {
        bail!("--upstream and --name are required");
    };
    let mut config = AgentConfig::new(upstream, TlsFiles::in_dir(&args.certs, &name), args.data);
    config.outbox = OutboxLimits {
        max_alerts: args.outbox_max_alerts,
        max_bytes: args.outbox_max_bytes,
    };
    config.inbox.feed = args.inbox_feed;
    config.inbox.filter = args.inbox_filter.to_proto()?;
    config.link.backoff_max = parse_duration(&args.max_backoff)?;
    config.link.keepalive_interval = parse_duration(&args.keepalive)?;
    config.link.connect_timeout = parse_duration(&args.connect_timeout)?;
    config.link.down_retry_max = parse_duration(&args.down_retry)?;
    config.link.compress = args.compression == "gzip";
    config.store = args.store.store_config()?;
    if let (Some(cert), Some(key)) = (args.listen_cert, args.listen_key) {
        config.listen_tls = Some(TlsFiles {
            ca: config.tls.ca.clone(),
            cert,
            key,
        });
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let scheme = if config.listen_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    let opened = agent::open(config, shutdown.clone()).await?;
    super::announce(&format!(
        "liaison agent: listening on {scheme}://{}",
        listener.local_addr()?
    ));
    super::start_metrics(&args.metrics, &shutdown).await?;
    opened.serve(listener).await?;
    Ok(ExitCode::SUCCESS)
}

async fn status(args: AgentStatusArgs) -> Result<ExitCode> {
    let channel = liaison::client::endpoint(&args.agent, None)?
        .connect()
        .await
        .with_context(|| format!("cannot reach the agent at {}", args.agent))?;
    let s = pb::agent_client::AgentClient::new(channel)
        .status(pb::AgentStatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let state = pb::LinkState::try_from(s.link_state)
        .map(|l| {
            l.as_str_name()
                .trim_start_matches("LINK_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into());
    let v = json!({
        "identity": s.identity.as_ref().map(|o| o.urn.clone()),
        "upstream": s.upstream,
        "link_state": state,
        "last_contact": time_json(&s.last_contact),
        "last_error": s.last_error,
        "reconnects": s.reconnects,
        "outbox_depth": s.outbox_depth,
        "outbox_bytes": s.outbox_bytes,
        "outbox_oldest": time_json(&s.outbox_oldest),
        "forwarded_total": s.forwarded_total,
        "expired_total": s.expired_total,
        "rejected_total": s.rejected_total,
        "inbox_total": s.inbox_total,
        "head_seq": s.head_seq,
    });
    if args.json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(map) = v.as_object() {
        for (k, val) in map {
            let text = match val {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!("{k:<16} {text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
