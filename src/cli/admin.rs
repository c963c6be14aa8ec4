//! `liaison admin feeds|nodes|links|stats|audit` (administrator nodes) and
//! `liaison health` (the standard gRPC health check, for probes).

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client_cmds::status_error;
use super::conn::ConnArgs;
use liaison::json::time_json;
use liaison::proto as pb;

#[derive(Debug, Subcommand)]
pub enum AdminView {
    /// Durable feeds: owner, cursor, backlog, in flight, last ack.
    Feeds(AdminArgs),
    /// Nodes connected now: since when, from where.
    Nodes(AdminArgs),
    /// Federation links: state, last contact, backlog, counts both ways,
    /// last error.
    Links(AdminArgs),
    /// Totals of the broker.
    Stats(AdminArgs),
    /// The audit trail of the running broker, one JSON record per line (as
    /// `liaison audit export`), or with --verify a check of the whole chain.
    Audit(AuditArgs),
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// First audit sequence number to print.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Check every link of the chain instead of printing it (exit 1 and the
    /// first broken record when it is broken).
    #[arg(long, conflicts_with = "from")]
    pub verify: bool,
}

async fn audit(args: AuditArgs) -> Result<ExitCode> {
    let channel = liaison::client::endpoint(&args.conn.broker, args.conn.tls_files()?.as_ref())?
        .connect()
        .await?;
    let mut entries = pb::admin_client::AdminClient::new(channel)
        .audit(pb::AdminAuditRequest {
            from_seq: args.from,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut records = Vec::new();
    while let Some(e) = entries.message().await.map_err(status_error)? {
        let (seq, record) = liaison::audit::from_entry(e);
        if args.verify {
            records.push((seq, record));
        } else {
            match record {
                Some(r) => println!("{}", super::sharing::audit_json(&r)),
                None => eprintln!(
                    "audit record {seq} cannot be decoded; run `liaison admin audit --verify`"
                ),
            }
        }
    }
    if !args.verify {
        return Ok(ExitCode::SUCCESS);
    }
    match liaison::audit::verify(records) {
        Ok((n, head)) => {
            println!(
                "audit trail intact: {n} records; head hash {}",
                liaison::pki::hex(&head)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(broken) => {
            eprintln!("{broken}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The service to ask about ("" for the server as a whole).
    #[arg(long, default_value = "liaison.v1.Broker")]
    pub service: String,
}

/// Prints rows as an aligned table.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        println!("{}", line(row.clone()));
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The views printed as a table (or JSON).
enum Table {
    Feeds,
    Nodes,
    Links,
    Stats,
}

pub async fn run(view: AdminView) -> Result<ExitCode> {
    match view {
        AdminView::Feeds(args) => table_view(Table::Feeds, &args).await,
        AdminView::Nodes(args) => table_view(Table::Nodes, &args).await,
        AdminView::Links(args) => table_view(Table::Links, &args).await,
        AdminView::Stats(args) => table_view(Table::Stats, &args).await,
        AdminView::Audit(args) => audit(args).await,
    }
}

async fn table_view(view: Table, args: &AdminArgs) -> Result<ExitCode> {
    let channel = liaison::client::endpoint(&args.conn.broker, args.conn.tls_files()?.as_ref())?
        .connect()
        .await?;
    let mut admin = pb::admin_client::AdminClient::new(channel);
    let (headers, rows): (Vec<&str>, Vec<Value>) = match view {
        Table::Feeds => {
            let feeds = admin
                .feeds(pb::AdminFeedsRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .feeds;
            let rows = feeds
                .iter()
                .map(|f| {
                    json!({"owner": f.owner, "feed": f.feed, "ack_floor": f.ack_floor, "backlog": f.backlog,
                           "in_flight": f.in_flight, "connected": f.connected, "last_ack": time_json(&f.last_ack),
                           "created": time_json(&f.created)})
                })
                .collect();
            (
                vec![
                    "owner",
                    "feed",
                    "ack_floor",
                    "backlog",
                    "in_flight",
                    "connected",
                    "last_ack",
                ],
                rows,
            )
        }
        Table::Nodes => {
            let nodes = admin
                .nodes(pb::AdminNodesRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .nodes;
            let rows = nodes
                .iter()
                .map(|n| json!({"urn": n.urn, "remote": n.remote, "since": time_json(&n.since)}))
                .collect();
            (vec!["urn", "remote", "since"], rows)
        }
        Table::Links => {
            let links = admin
                .links(pb::AdminLinksRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .links;
            let rows = links
                .iter()
                .map(|l| {
                    let state = pb::LinkState::try_from(l.state)
                        .map_or("?", |s| s.as_str_name())
                        .trim_start_matches("LINK_STATE_")
                        .to_ascii_lowercase();
                    json!({"peer": l.peer, "broker": l.broker, "dials": l.dials, "state": state,
                           "last_contact": time_json(&l.last_contact), "backlog_out": l.backlog_out,
                           "exported_through": l.exported_through, "exported": l.exported,
                           "duplicates": l.duplicates, "refused_by_peer": l.refused_by_peer,
                           "imported": l.imported, "refused": l.refused, "missed": l.missed,
                           "last_error": l.last_error})
                })
                .collect();
            (
                vec![
                    "peer",
                    "state",
                    "last_contact",
                    "backlog_out",
                    "exported",
                    "refused_by_peer",
                    "imported",
                    "refused",
                    "missed",
                    "last_error",
                ],
                rows,
            )
        }
        Table::Stats => {
            let s = admin
                .stats(pb::AdminStatsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let v = json!({"head_seq": s.head_seq, "first_seq": s.first_seq, "log_bytes": s.log_bytes,
                           "feeds": s.feeds, "feeds_connected": s.feeds_connected, "connections": s.connections,
                           "audit_records": s.audit_records, "started": time_json(&s.started),
                           "policy_open": s.policy_open, "agreements": s.agreements,
                           "writes": s.writes, "disk_free_bytes": s.disk_free_bytes,
                           "disk_reserve_bytes": s.disk_reserve_bytes});
            if args.json {
                println!("{v}");
            } else if let Some(map) = v.as_object() {
                for (k, val) in map {
                    println!("{k:<16} {}", text(val));
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if args.json {
        println!("{}", Value::Array(rows));
    } else {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| headers.iter().map(|h| text(&r[*h])).collect())
            .collect();
        table(&headers, &cells);
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit 0 when the service reports SERVING (for container health checks).
pub async fn health(args: HealthArgs) -> Result<ExitCode> {
    let channel = liaison::client::endpoint(&args.conn.broker, args.conn.tls_files()?.as_ref())?
        .connect()
        .await?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: args.service,
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .status;
    let serving = status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    if serving {
        println!("SERVING");
    } else {
        // Why, when this node may ask (an administrator, or any node
        // without a policy file).
        let why = match pb::admin_client::AdminClient::new(channel)
            .stats(pb::AdminStatsRequest {})
            .await
        {
            Ok(s) if s.get_ref().writes != "accepting" => {
                format!(": alerts {}", s.into_inner().writes)
            }
            _ => String::new(),
        };
        println!("NOT_SERVING{why}");
    }
    Ok(if serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
