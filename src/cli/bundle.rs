//! `liaison bundle export|import|ack`: offline bundles (docs/bundles.md).
//!
//! With `--agent-data DIR` a command works on a post's side, on its
//! stopped agent's store, as the post (`--certs D --name N`: its own
//! certificate and key). Without it, it goes to the national broker at
//! `--broker` through the Admin service, as an administrator node.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::client_cmds::status_error;
use super::conn::ConnArgs;
use super::serve::StoreKeyArgs;
use liaison::broker::{Broker, BrokerConfig};
use liaison::bundle::{self, BundleError, Party, Peer};
use liaison::proto as pb;
use liaison::store::{Store, StoreConfig};

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Write a bundle: at a post (--agent-data), its queued alerts for the
    /// national broker; at the centre (--for POST.crt), what the post's
    /// inbox feed holds for it. Nothing leaves a queue until the receipt
    /// comes back.
    Export(ExportArgs),
    /// Import a bundle of alerts: at the centre, a post's alerts (stored
    /// under the post's identity; writes the receipt to carry back); at a
    /// post (--agent-data), the broker's alerts for its inbox (writes the
    /// post's receipt).
    Import(ImportArgs),
    /// Apply a receipt: at a post (--agent-data), the broker's receipt
    /// takes exactly the alerts it names out of the outbox; at the centre,
    /// a post's receipt acknowledges those deliveries of its feed.
    Ack(AckArgs),
}

/// Where a bundle command works.
#[derive(Debug, Args)]
pub struct Side {
    /// The broker (centre side), or this post's certificate (--certs D
    /// --name N) at a post.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Work at the post, on its agent's data directory (stop the agent
    /// first: a store is one process's).
    #[arg(long, value_name = "DIR")]
    pub agent_data: Option<PathBuf>,
    /// What opens the agent's store, when it is encrypted.
    #[command(flatten)]
    pub key: StoreKeyArgs,
    /// At a post: the national broker's certificate (bundles are encrypted
    /// to it, receipts must be signed by it). Default: broker.crt in
    /// --certs.
    #[arg(long, value_name = "FILE")]
    pub broker_cert: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub side: Side,
    /// The bundle file to write (whole or not at all).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// At the centre: the post's certificate (it names the post; the
    /// bundle is encrypted to it).
    #[arg(long = "for", value_name = "POST.crt", conflicts_with = "agent_data")]
    pub for_cert: Option<PathBuf>,
    /// At the centre: the post's durable feed.
    #[arg(long, default_value = "inbox")]
    pub feed: String,
    /// At most this many alerts in the bundle.
    #[arg(long, default_value_t = bundle::DEFAULT_MAX_ALERTS)]
    pub max_alerts: usize,
    /// At most about this many bytes of alerts (at most 32 MiB).
    #[arg(long, default_value_t = bundle::DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The bundle file.
    pub file: PathBuf,
    #[command(flatten)]
    pub side: Side,
    /// Where to write the receipt to carry back. Default: the bundle's
    /// name with `.receipt` added.
    #[arg(long, value_name = "FILE")]
    pub receipt: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AckArgs {
    /// The receipt file.
    pub file: PathBuf,
    #[command(flatten)]
    pub side: Side,
}

pub async fn run(cmd: BundleCommand) -> Result<ExitCode> {
    match cmd {
        BundleCommand::Export(args) => export(args).await,
        BundleCommand::Import(args) => import(args).await,
        BundleCommand::Ack(args) => ack(args).await,
    }
}

/// The post's own keys and the broker's certificate, and its agent's store.
struct Post {
    party: Party,
    broker: Peer,
    store: Store,
}

impl Side {
    fn post(&self, data: &Path) -> Result<Post> {
        let files = self.conn.tls_files()?.context(
            "at a post, --certs DIR --name NAME (or --ca/--cert/--key) name the post's certificate",
        )?;
        let party = Party::load(&files)?;
        let broker_cert = match &self.broker_cert {
            Some(path) => path.clone(),
            None => files
                .ca
                .with_file_name(format!("{}.crt", liaison::pki::BROKER_NAME)),
        };
        let broker = Peer::load(&broker_cert).context("--broker-cert")?;
        if !data.exists() {
            bail!("{} does not exist (--agent-data)", data.display());
        }
        let config = StoreConfig {
            key: self.key.key_source()?,
            ..StoreConfig::default()
        };
        let store = Store::open(data, config)
            .with_context(|| format!("cannot open the agent's store in {}", data.display()))?;
        Ok(Post {
            party,
            broker,
            store,
        })
    }

    /// Sends a bundle file to the broker's `ImportBundle`.
    async fn import_at_centre(
        &self,
        path: &Path,
        bundle: Vec<u8>,
        expect: &str,
    ) -> Result<pb::ImportBundleResponse> {
        self.admin()
            .await?
            .import_bundle(pb::ImportBundleRequest {
                bundle,
                expect: expect.into(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| anyhow::anyhow!("{}: {}", path.display(), status_error(s)))
    }

    async fn admin(&self) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>> {
        let channel =
            liaison::client::endpoint(&self.conn.broker, self.conn.tls_files()?.as_ref())?
                .connect()
                .await
                .with_context(|| format!("cannot reach the broker at {}", self.conn.broker))?;
        Ok(pb::admin_client::AdminClient::new(channel)
            .max_decoding_message_size(bundle::MAX_FILE_BYTES + 4096)
            .max_encoding_message_size(bundle::MAX_FILE_BYTES + 4096))
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    bundle::write_file(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn report(json_out: bool, value: &Value, text: String) {
    if json_out {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

/// A refused bundle: the reason, and that nothing of it was stored.
fn refused(file: &Path, e: BundleError) -> anyhow::Error {
    anyhow::anyhow!("{}: refused, nothing stored: {e}", file.display())
}

async fn export(args: ExportArgs) -> Result<ExitCode> {
    let side = &args.side;
    if let Some(data) = &side.agent_data {
        let post = side.post(data)?;
        let exported = bundle::post::export(
            &post.store,
            &post.party,
            &post.broker,
            args.max_alerts,
            args.max_bytes,
        )?;
        write(&args.out, &exported.file)?;
        post.store.close().await?;
        report(
            side.json,
            &json!({
                "bundle": exported.id.to_string(),
                "file": args.out.display().to_string(),
                "bytes": exported.file.len(),
                "alerts": exported.alerts,
                "remaining": exported.remaining,
                "expired": exported.expired,
                "to": post.broker.name(),
            }),
            format!(
                "wrote {} ({} bytes): bundle {} with {} queued alerts for {}{}{}; they stay queued until its receipt is applied (liaison bundle ack)",
                args.out.display(),
                exported.file.len(),
                exported.id,
                exported.alerts,
                post.broker.name(),
                if exported.remaining > 0 {
                    format!("; {} more wait for the next bundle", exported.remaining)
                } else {
                    String::new()
                },
                if exported.expired > 0 {
                    format!("; {} expired left out", exported.expired)
                } else {
                    String::new()
                },
            ),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Some(for_cert) = &args.for_cert else {
        bail!("say whose bundle: --agent-data DIR at a post, or --for POST.crt at the centre");
    };
    let certificate =
        std::fs::read(for_cert).with_context(|| format!("--for {}", for_cert.display()))?;
    let answer = side
        .admin()
        .await?
        .export_bundle(pb::ExportBundleRequest {
            recipient_certificate: certificate,
            feed: args.feed.clone(),
            max_alerts: u32::try_from(args.max_alerts).unwrap_or(u32::MAX),
            max_bytes: args.max_bytes,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    write(&args.out, &answer.bundle)?;
    report(
        side.json,
        &json!({
            "bundle": answer.id,
            "file": args.out.display().to_string(),
            "bytes": answer.bundle.len(),
            "alerts": answer.alerts,
            "remaining": answer.remaining,
            "feed": args.feed,
        }),
        format!(
            "wrote {} ({} bytes): bundle {} with {} alerts of feed {}{}; the feed's cursor moves when the post's receipt is imported (liaison bundle ack)",
            args.out.display(),
            answer.bundle.len(),
            answer.id,
            answer.alerts,
            args.feed,
            if answer.remaining > 0 {
                format!("; {} more wait for the next bundle", answer.remaining)
            } else {
                String::new()
            },
        ),
    );
    Ok(ExitCode::SUCCESS)
}

fn receipt_path(args: &ImportArgs) -> PathBuf {
    args.receipt.clone().unwrap_or_else(|| {
        let mut name = args.file.as_os_str().to_owned();
        name.push(".receipt");
        PathBuf::from(name)
    })
}

fn counts_text(c: bundle::Counts) -> String {
    format!(
        "{} stored, {} already here, {} refused, {} to send again",
        c.stored, c.duplicates, c.refused, c.retry
    )
}

async fn import(args: ImportArgs) -> Result<ExitCode> {
    let file = bundle::read_file(&args.file)?;
    let receipt_out = receipt_path(&args);
    let side = &args.side;
    if let Some(data) = &side.agent_data {
        let post = side.post(data)?;
        let agent = Broker::new(
            post.store.clone(),
            BrokerConfig::default(),
            CancellationToken::new(),
        );
        let imported = bundle::post::import(&agent, &post.party, &post.broker, &file)
            .await
            .map_err(|e| refused(&args.file, e))?;
        write(&receipt_out, &imported.receipt)?;
        post.store.close().await?;
        let c = imported.counts;
        report(
            side.json,
            &json!({
                "bundle": imported.id.to_string(),
                "from": imported.from,
                "stored": c.stored, "duplicates": c.duplicates, "refused": c.refused, "retry": c.retry,
                "receipt": receipt_out.display().to_string(),
            }),
            format!(
                "imported bundle {} from {} into the inbox: {}; receipt for the broker: {}",
                imported.id,
                imported.from,
                counts_text(c),
                receipt_out.display()
            ),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let answer = side.import_at_centre(&args.file, file, "alerts").await?;
    write(&receipt_out, &answer.receipt)?;
    report(
        side.json,
        &json!({
            "bundle": answer.bundle,
            "from": answer.from,
            "stored": answer.stored, "duplicates": answer.duplicates,
            "refused": answer.refused, "retry": answer.retry,
            "receipt": receipt_out.display().to_string(),
        }),
        format!(
            "imported bundle {} from {}: {}; receipt for the post: {}",
            answer.bundle,
            answer.from,
            counts_text(bundle::Counts {
                stored: answer.stored,
                duplicates: answer.duplicates,
                refused: answer.refused,
                retry: answer.retry,
            }),
            receipt_out.display()
        ),
    );
    Ok(ExitCode::SUCCESS)
}

async fn ack(args: AckArgs) -> Result<ExitCode> {
    let file = bundle::read_file(&args.file)?;
    let side = &args.side;
    if let Some(data) = &side.agent_data {
        let post = side.post(data)?;
        let acked = bundle::post::ack(&post.store, &post.party, &post.broker, &file)
            .await
            .map_err(|e| refused(&args.file, e))?;
        let left = post.store.outbox_stats()?.depth;
        post.store.close().await?;
        let c = acked.counts;
        report(
            side.json,
            &json!({
                "bundle": acked.id.to_string(),
                "from": acked.from,
                "stored": c.stored, "duplicates": c.duplicates, "refused": c.refused, "retry": c.retry,
                "removed": acked.removed,
                "outbox": left,
            }),
            format!(
                "applied receipt {} from {}: {}; {} alerts left the outbox, {} still queued",
                acked.id,
                acked.from,
                counts_text(c),
                acked.removed,
                left
            ),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let answer = side.import_at_centre(&args.file, file, "receipt").await?;
    report(
        side.json,
        &json!({
            "bundle": answer.bundle,
            "from": answer.from,
            "acknowledged": answer.acknowledged,
        }),
        format!(
            "applied receipt {} from {}: {} deliveries of its feed acknowledged",
            answer.bundle, answer.from, answer.acknowledged
        ),
    );
    Ok(ExitCode::SUCCESS)
}
