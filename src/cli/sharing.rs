//! `liaison policy check`, `liaison ack`, `liaison receipts` and
//! `liaison audit verify|export`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use super::client_cmds::status_error;
use super::conn::ConnArgs;
use liaison::alert::{micros, system_time};
use liaison::audit::{self, AuditRecord};
use liaison::json::{hex, parse_time, receipt_json, time_json};
use liaison::proto as pb;
use liaison::store::{Store, StoreConfig};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file; every error is explained with its line.
    /// With --broker, also show what it would change against the policy in
    /// force there (nodes and agreements added, removed, changed).
    Check(PolicyCheckArgs),
    /// Make a running broker read its policy file again and put it in
    /// force (as SIGHUP does); prints what changed. Administrators only.
    Reload {
        #[command(flatten)]
        conn: ConnArgs,
    },
}

#[derive(Debug, Args)]
pub struct PolicyCheckArgs {
    /// The policy file (TOML).
    pub file: PathBuf,
    /// A running broker to compare with (needs an administrator's
    /// certificate: --certs D --name N).
    #[arg(long)]
    pub broker: Option<String>,
    /// PKI directory (with --broker).
    #[arg(long, env = "LIAISON_CERTS")]
    pub certs: Option<PathBuf>,
    /// Node name inside --certs (with --broker).
    #[arg(long, env = "LIAISON_NAME")]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct AckArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The alert's id.
    pub id: String,
    /// A note for the originator.
    #[arg(long, default_value = "")]
    pub note: String,
}

#[derive(Debug, Args)]
pub struct ReceiptsArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The alert's id.
    pub id: String,
    /// Keep following new receipts.
    #[arg(long)]
    pub follow: bool,
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the audit trail; names the first broken record.
    /// Run it on a stopped broker's data directory (or a copy of it).
    Verify {
        /// The broker's data directory.
        #[arg(long, default_value = "data")]
        data: PathBuf,
        #[command(flatten)]
        key: super::serve::StoreKeyArgs,
    },
    /// Write the audit trail as JSON lines (for oversight).
    Export {
        /// The broker's data directory (of a stopped broker, or a copy).
        #[arg(long, default_value = "data")]
        data: PathBuf,
        /// Only records at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        key: super::serve::StoreKeyArgs,
    },
}

pub async fn policy(cmd: PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Check(args) => policy_check(args).await,
        PolicyCommand::Reload { conn } => {
            let change = admin_client(&conn)
                .await?
                .reload_policy(pb::ReloadPolicyRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{} (sha256 {}): reloaded", change.source, change.sha256);
            print_change(&change);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn policy_check(args: PolicyCheckArgs) -> Result<ExitCode> {
    let file = &args.file;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let policy = match liaison::policy::parse(&text) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                eprintln!("{}:{}: {}", file.display(), e.line, e.message);
            }
            eprintln!("{}: {} error(s); not valid", file.display(), errors.len());
            return Ok(ExitCode::FAILURE);
        }
    };
    println!(
        "{}: valid ({} nodes, {} agreements)",
        file.display(),
        policy.rules().len(),
        policy.agreements().len()
    );
    if let Some(broker) = args.broker {
        let conn = ConnArgs {
            broker: broker.clone(),
            certs: args.certs,
            name: args.name,
            ca: None,
            cert: None,
            key: None,
        };
        let change = admin_client(&conn)
            .await?
            .check_policy(pb::CheckPolicyRequest { text })
            .await
            .map_err(status_error)?
            .into_inner();
        println!("against the policy in force at {broker}:");
        print_change(&change);
    }
    Ok(ExitCode::SUCCESS)
}

async fn admin_client(
    conn: &ConnArgs,
) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>> {
    let channel = liaison::client::endpoint(&conn.broker, conn.tls_files()?.as_ref())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", conn.broker))?;
    Ok(pb::admin_client::AdminClient::new(channel))
}

fn print_change(change: &pb::PolicyChange) {
    if change.added.is_empty() && change.removed.is_empty() && change.changed.is_empty() {
        println!("  no change");
    }
    for a in &change.added {
        println!("  + {a}");
    }
    for r in &change.removed {
        println!("  - {r}");
    }
    for c in &change.changed {
        println!("  ~ {c}");
    }
}

pub async fn ack(args: AckArgs) -> Result<ExitCode> {
    let mut client = args.conn.connect().await?;
    let receipt = client
        .acknowledge(pb::AcknowledgeRequest {
            id: args.id,
            note: args.note,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("{}", receipt_json(&receipt));
    Ok(ExitCode::SUCCESS)
}

pub async fn receipts(args: ReceiptsArgs) -> Result<ExitCode> {
    let mut client = args.conn.connect().await?;
    let mut stream = client
        .receipts(pb::ReceiptsRequest {
            id: args.id,
            follow: args.follow,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(r) = stream.message().await.map_err(status_error)? {
        let v = receipt_json(&r);
        if args.json {
            println!("{v}");
        } else {
            let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
            let extra = if r.note.is_empty() {
                s("feed")
            } else {
                format!("{:?}", r.note)
            };
            println!("{} {:<12} {} {}", s("at"), s("kind"), s("recipient"), extra);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn audit_json(r: &AuditRecord) -> serde_json::Value {
    json!({
        "seq": r.seq,
        "time": time_json(&Some(liaison::alert::timestamp(r.time()))),
        "kind": r.kind,
        "actor": r.actor,
        "alert_id": r.alert_id,
        "detail": r.detail,
        "prev_hash": hex(&r.prev_hash),
        "hash": hex(&r.hash),
    })
}

/// Every audit record of a store, in order.
/// Every audit record of a store, in key order, with its key's sequence
/// (paging by key, so an altered record cannot make this loop).
fn each_record(
    store: &Store,
    mut f: impl FnMut(u64, Option<AuditRecord>) -> Result<()>,
) -> Result<()> {
    let mut from = 1;
    loop {
        let chunk = store.audit_records(from, 4096)?;
        let Some((last, _)) = chunk.last() else {
            return Ok(());
        };
        let Some(next) = last.checked_add(1) else {
            return Ok(());
        };
        from = next;
        for (seq, r) in chunk {
            f(seq, r)?;
        }
    }
}

pub async fn audit(cmd: AuditCommand) -> Result<ExitCode> {
    let (data, key) = match &cmd {
        AuditCommand::Verify { data, key } | AuditCommand::Export { data, key, .. } => {
            let config = StoreConfig {
                key: key.key_source()?,
                ..StoreConfig::default()
            };
            (data.clone(), config)
        }
    };
    if !data.exists() {
        anyhow::bail!("{} does not exist", data.display());
    }
    let store = Store::open(&data, key)
        .with_context(|| format!("cannot open the store in {}", data.display()))?;
    let code = match cmd {
        AuditCommand::Verify { .. } => {
            let mut records = Vec::new();
            each_record(&store, |seq, r| {
                records.push((seq, r));
                Ok(())
            })?;
            match audit::verify(records) {
                Ok((n, head)) => {
                    println!("audit trail intact: {n} records; head hash {}", hex(&head));
                    ExitCode::SUCCESS
                }
                Err(broken) => {
                    eprintln!("{broken}");
                    ExitCode::FAILURE
                }
            }
        }
        AuditCommand::Export { since, .. } => {
            let since_us = since
                .as_deref()
                .map(|s| parse_time("--since", s))
                .transpose()?
                .and_then(|t| system_time(&t))
                .map_or(0, micros);
            each_record(&store, |seq, r| {
                match r {
                    Some(r) if r.time_us >= since_us => println!("{}", audit_json(&r)),
                    Some(_) => {}
                    None => eprintln!(
                        "audit record {seq} cannot be decoded; run `liaison audit verify`"
                    ),
                }
                Ok(())
            })?;
            ExitCode::SUCCESS
        }
    };
    store.close().await?;
    Ok(code)
}
