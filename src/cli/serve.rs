//! `liaison serve`: flags, the development-PKI bootstrap and signal handling
//! around [`liaison::server::run`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::alert_args::parse_duration;
use liaison::broker::Retention;
use liaison::pki;
use liaison::server::{self, ServeConfig};
use liaison::store::{KeySource, StoreConfig, WalRecovery};
use liaison::tls::TlsFiles;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML; see liaison.example.toml). Environment
    /// variables and flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "LIAISON_LISTEN", default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// Data directory (created if missing).
    #[arg(long, env = "LIAISON_DATA", default_value = "data")]
    pub data: PathBuf,
    /// PKI directory with ca.crt, broker.crt and broker.key. A development
    /// PKI is created here when it holds no ca.crt.
    #[arg(long, env = "LIAISON_CERTS", default_value = "certs")]
    pub certs: PathBuf,
    /// Largest accepted alert, attachments included, in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    pub max_alert_bytes: usize,
    /// Remove alerts older than this ("365days", "90d"; "0" keeps them forever).
    #[arg(long, default_value = "365days")]
    pub retain: String,
    /// Remove the oldest alerts while the log is larger than this many bytes (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub retain_bytes: u64,
    /// Sharing policy file (TOML; see policy.example.toml). Without it the
    /// broker runs open, for development. Read again on SIGHUP and `liaison
    /// policy reload`, never because the file changed.
    #[arg(long, env = "LIAISON_POLICY")]
    pub policy: Option<PathBuf>,
    /// Prometheus metrics endpoint ("off" to disable).
    #[arg(long, env = "LIAISON_METRICS", default_value = "127.0.0.1:9464")]
    pub metrics: String,
    /// How long open streams get to close on shutdown.
    #[arg(long, default_value = "10s")]
    pub shutdown_grace: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The configuration file whose [[peer]] and [[origin]] entries to use
    /// (set by --config).
    #[arg(long, hide = true, value_name = "FILE")]
    pub federation_config: Option<PathBuf>,
}

/// The store flags `serve` and `agent` share.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Refuse new alerts (RESOURCE_EXHAUSTED) while the data directory's
    /// disk has less free space than this, in bytes (0: never; then a full
    /// disk stops all writes until a restart). They are accepted again,
    /// without a restart, once there is room.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub min_free_disk: u64,
    /// What to do, for this start, when the write-ahead log is damaged:
    /// refuse to start (strict), keep what comes before the damage
    /// (point-in-time), or keep every intact record (skip-damaged). The
    /// choice and what it cost are logged and audited.
    #[arg(long, value_enum, default_value_t = WalRecoveryArg::Strict)]
    pub wal_recovery: WalRecoveryArg,
    /// How often the database is flushed when nothing else asks for it:
    /// bounds how much a restart replays from the write-ahead log, and how
    /// many acknowledgements of open feeds a crash can make the broker
    /// redeliver.
    #[arg(long, default_value = "1s")]
    pub checkpoint_interval: String,
    #[command(flatten)]
    pub key: StoreKeyArgs,
}

/// The key of an encrypted store (docs/security.md): `serve`, `agent`
/// and the commands that open a stopped store.
#[derive(Debug, Clone, Args)]
pub struct StoreKeyArgs {
    /// Encrypt the store at rest with the key in FILE (kept outside the
    /// data directory; made, mode 0600, when a new store starts and FILE
    /// does not exist). An encrypted store does not open without it.
    #[arg(
        long,
        env = "LIAISON_KEY_FILE",
        value_name = "FILE",
        conflicts_with = "passphrase"
    )]
    pub key_file: Option<PathBuf>,
    /// Encrypt the store at rest with a passphrase (Argon2id): from
    /// $LIAISON_PASSPHRASE, else asked on the terminal, else one line of
    /// standard input.
    #[arg(long)]
    pub passphrase: bool,
}

impl StoreKeyArgs {
    /// What unlocks the store (`None`: not encrypted).
    ///
    /// # Errors
    /// When `--passphrase` is given and none can be read.
    pub fn key_source(&self) -> Result<Option<KeySource>> {
        Ok(match (&self.key_file, self.passphrase) {
            (Some(f), _) => Some(KeySource::File(f.clone())),
            (None, true) => Some(KeySource::Passphrase(read_passphrase(
                "LIAISON_PASSPHRASE",
                "passphrase for the store",
            )?)),
            (None, false) => None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WalRecoveryArg {
    Strict,
    PointInTime,
    SkipDamaged,
}

impl StoreArgs {
    /// The store settings these flags make.
    ///
    /// # Errors
    /// When `--checkpoint-interval` is not a duration.
    pub fn store_config(&self) -> Result<StoreConfig> {
        let mut config = StoreConfig {
            min_free_bytes: self.min_free_disk,
            ..StoreConfig::default()
        };
        config.wal.checkpoint_every = parse_duration(&self.checkpoint_interval)?;
        if config.wal.checkpoint_every.is_zero() {
            anyhow::bail!("--checkpoint-interval must be more than 0");
        }
        config.key = self.key.key_source()?;
        config.wal.recovery = match self.wal_recovery {
            WalRecoveryArg::Strict => WalRecovery::Strict,
            WalRecoveryArg::PointInTime => WalRecovery::PointInTime,
            WalRecoveryArg::SkipDamaged => WalRecovery::SkipDamaged,
        };
        Ok(config)
    }
}

/// A passphrase: `$env`, else asked on the terminal without echo (with
/// `prompt`), else a line of standard input.
///
/// # Errors
/// When none is given.
pub(super) fn read_passphrase(env: &str, prompt: &str) -> Result<zeroize::Zeroizing<String>> {
    use std::io::{BufRead, IsTerminal, Write};
    if let Ok(p) = std::env::var(env) {
        return Ok(zeroize::Zeroizing::new(p));
    }
    let stdin = std::io::stdin();
    let mut line = zeroize::Zeroizing::new(String::new());
    if stdin.is_terminal() {
        eprint!("{prompt}: ");
        let _ = std::io::stderr().flush();
        let _echo = NoEcho::new();
        stdin.lock().read_line(&mut line)?;
        eprintln!();
    } else {
        stdin.lock().read_line(&mut line)?;
    }
    let p = line.trim_end_matches(['\n', '\r']).to_owned();
    if p.is_empty() {
        anyhow::bail!("no passphrase given (set {env} or type it)");
    }
    Ok(zeroize::Zeroizing::new(p))
}

/// Terminal echo off while it lives.
struct NoEcho(Option<libc::termios>);

impl NoEcho {
    fn new() -> NoEcho {
        // SAFETY: tcgetattr/tcsetattr on standard input with a termios
        // struct of our own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &raw mut t) != 0 {
                return NoEcho(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &raw const t);
            NoEcho(Some(saved))
        }
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// A banner on standard error: the operator must not miss it.
fn loud(lines: &[String]) {
    let bar = "=".repeat(78);
    eprintln!("{bar}");
    for l in lines {
        eprintln!("  {l}");
    }
    eprintln!("{bar}");
}

/// Creates a development PKI in `dir` when it has no CA yet.
fn ensure_dev_pki(dir: &Path, listen: &SocketAddr) -> Result<()> {
    let broker_crt = dir.join(format!("{}.crt", pki::BROKER_NAME));
    if dir.join(pki::CA_CERT).exists() && broker_crt.exists() {
        return Ok(());
    }
    if dir.join(pki::CA_CERT).exists() {
        let ca = pki::Ca::load(dir)
            .with_context(|| format!("{} has a CA but no broker certificate", dir.display()))?;
        pki::write_leaf(dir, pki::BROKER_NAME, &ca.issue_broker(&[])?)?;
        warn!(dir = %dir.display(), "issued a broker certificate from the existing CA");
        return Ok(());
    }
    pki::init(dir, &[], false)?;
    let d = dir.display();
    loud(&[
        format!("NO PKI FOUND: created a DEVELOPMENT certificate authority in {d}/"),
        format!("({d}/ca.crt, ca.key, broker.crt, broker.key). Not for real deployments."),
        String::new(),
        "Issue a node certificate and publish, from this directory:".into(),
        format!(
            "  cargo run --release -- certs issue --dir {d} --node urn:liaison:TJ:border-guard:ishkashim --name ishkashim"
        ),
        format!(
            "  cargo run --release -- publish --broker https://{listen} --certs {d} --name ishkashim --category drugs --severity severe --headline \"Test alert\""
        ),
    ]);
    Ok(())
}

pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    ensure_dev_pki(&args.certs, &addr)?;
    let mut config = ServeConfig::new(
        TlsFiles::in_dir(&args.certs, pki::BROKER_NAME),
        args.data.clone(),
    );
    config.broker.limits.max_alert_bytes = args.max_alert_bytes;
    let retain = parse_duration(&args.retain)?;
    config.broker.retention = Retention {
        max_age: (!retain.is_zero()).then_some(retain),
        max_bytes: (args.retain_bytes > 0).then_some(args.retain_bytes),
        ..Retention::default()
    };
    config.shutdown_grace = parse_duration(&args.shutdown_grace)?;
    config.policy_file = args.policy.clone();
    config.store = args.store.store_config()?;
    if let Some(file) = &args.federation_config {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let (peers, origins) = super::peers::parse(&text, Path::new(".")).map_err(|errors| {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| format!("{}:{e}", file.display()))
                .collect();
            anyhow::anyhow!("federation entries not valid:\n{}", lines.join("\n"))
        })?;
        config.federation.peers = peers;
        config.federation.origins = origins;
    }
    if !args.data.exists() {
        warn!(data = %args.data.display(), "no data directory: creating a new, empty store");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    let opened = server::open(config, shutdown.clone()).await?;
    // A line on standard output that scripts and tests wait for: the store
    // is open and replayed, so what it answers is the truth.
    super::announce(&format!("liaison: listening on https://{addr}"));
    super::start_metrics(&args.metrics, &shutdown).await?;
    opened.serve(listener).await?;
    Ok(ExitCode::SUCCESS)
}

/// Cancels `shutdown` on SIGINT or SIGTERM; a second signal exits at once.
pub(super) async fn on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM");
            return;
        }
    };
    for n in 0.. {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        if n > 0 {
            warn!("second signal: exiting without waiting");
            std::process::exit(130);
        }
        info!("shutting down: closing streams and flushing the store");
        shutdown.cancel();
    }
}
