//! The client commands: publish, subscribe, get and history.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::alert_args::{AlertArgs, parse_duration};
use super::cap::{Format, alert_from_cap, document};
use super::conn::ConnArgs;
use liaison::cap::Layout;
use liaison::json::{alert_from_json, parse_enum, parse_time, record_json, short, time_json};
use liaison::proto as pb;

#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub alert: AlertArgs,
    /// Read the whole alert as JSON from FILE ("-" for standard input) instead of field flags.
    #[arg(long, value_name = "FILE", conflicts_with = "cap")]
    pub json: Option<PathBuf>,
    /// Read the alert from an OASIS CAP 1.2 document in FILE ("-" for
    /// standard input); --tlp, --releasable-to, --recipient,
    /// --handling-code, --category and --id given with it replace what the
    /// document says (docs/cap.md).
    #[arg(long, value_name = "FILE")]
    pub cap: Option<PathBuf>,
}

/// Filter flags shared by `subscribe` and `history`.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only these categories (comma-separated).
    #[arg(long = "category", value_delimiter = ',')]
    pub categories: Vec<String>,
    /// Only this severity or worse.
    #[arg(long)]
    pub min_severity: Option<String>,
    /// Only alerts from these countries (comma-separated ISO codes).
    #[arg(long = "origin-country", value_delimiter = ',')]
    pub origin_countries: Vec<String>,
    /// Also receive EXERCISE alerts.
    #[arg(long)]
    pub include_exercise: bool,
    /// Also receive TEST alerts.
    #[arg(long)]
    pub include_test: bool,
    /// Leave out the alerts this node published itself.
    #[arg(long)]
    pub exclude_own: bool,
}

impl FilterArgs {
    pub(crate) fn to_proto(&self) -> Result<pb::Filter> {
        Ok(pb::Filter {
            categories: self
                .categories
                .iter()
                .map(|c| parse_enum::<pb::Category>("--category", c))
                .collect::<Result<_, _>>()?,
            min_severity: self
                .min_severity
                .as_deref()
                .map_or(Ok(0), |s| parse_enum::<pb::Severity>("--min-severity", s))?,
            origin_countries: self.origin_countries.clone(),
            include_exercise: self.include_exercise,
            include_test: self.include_test,
            exclude_own: self.exclude_own,
        })
    }
}

#[derive(Debug, Args)]
pub struct SubscribeArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Durable feed name ([a-z0-9_.-]); omit for an ephemeral feed.
    #[arg(long)]
    pub feed: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Where a new feed starts: new, all, a sequence number, or an RFC 3339 time.
    /// An existing durable feed resumes from its cursor.
    #[arg(long, default_value = "new")]
    pub from: String,
    /// Print one JSON object per line (the same as --format json).
    #[arg(long)]
    pub json: bool,
    /// text, json or cap (CAP 1.2 XML, one document per line).
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Exit after this many alerts.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Most unacknowledged deliveries at a time (1-1024).
    #[arg(long, default_value_t = 64)]
    pub window: u32,
    /// Redelivery deadline for an unacknowledged delivery.
    #[arg(long, default_value = "30s")]
    pub ack_wait: String,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The alert's id.
    pub id: String,
    /// Print JSON on one line (the same as --format json).
    #[arg(long)]
    pub json: bool,
    /// text (indented JSON), json, or cap (a CAP 1.2 XML document).
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Received at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Received before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// Print at most this many alerts.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Print one JSON object per line (the same as --format json).
    #[arg(long)]
    pub json: bool,
    /// text, json or cap (CAP 1.2 XML, one document per line).
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// `--json` is `--format json`.
fn format(json: bool, format: Format) -> Format {
    if json { Format::Json } else { format }
}

pub async fn publish(args: PublishArgs) -> Result<ExitCode> {
    let alert = match &args.json {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading the alert from standard input")?;
                s
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?
            };
            let value: serde_json::Value =
                serde_json::from_str(&text).context("the alert is not valid JSON")?;
            alert_from_json(&value)?
        }
        None => match &args.cap {
            Some(path) => alert_from_cap(path, &args.alert)?,
            None => args.alert.to_alert()?,
        },
    };
    let mut client = args.conn.connect().await?;
    let ack = client
        .publish(pb::PublishRequest { alert: Some(alert) })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "{}",
        json!({"id": ack.id, "seq": ack.seq, "duplicate": ack.duplicate, "received_at": time_json(&ack.received_at)})
    );
    Ok(ExitCode::SUCCESS)
}

fn start_position(from: &str) -> Result<pb::StartPosition> {
    use pb::start_position::Position;
    let position = match from {
        "new" => Position::NewOnly(true),
        "all" => Position::All(true),
        s => match s.parse::<u64>() {
            Ok(seq) => Position::FromSeq(seq),
            Err(_) => Position::FromTime(parse_time("--from", s)?),
        },
    };
    Ok(pb::StartPosition {
        position: Some(position),
    })
}

pub async fn subscribe(args: SubscribeArgs) -> Result<ExitCode> {
    let ack_wait = parse_duration(&args.ack_wait)?;
    let open = pb::OpenFeed {
        feed: args.feed.clone().unwrap_or_default(),
        filter: Some(args.filter.to_proto()?),
        start: Some(start_position(&args.from)?),
        // With --limit, never take more than that many at a time.
        max_in_flight: args
            .limit
            .map_or(args.window, |l| args.window.min(l.clamp(1, 1024) as u32)),
        ack_wait: prost_types::Duration::try_from(ack_wait).ok(),
    };
    let mut client = args.conn.connect().await?;
    let (tx, rx) = mpsc::channel(64);
    tx.send(pb::SubscribeRequest {
        request: Some(pb::subscribe_request::Request::Open(open)),
    })
    .await?;
    let mut stream = client
        .subscribe(ReceiverStream::new(rx))
        .await
        .map_err(status_error)?
        .into_inner();
    let mut tx = Some(tx);
    let mut received = 0u64;
    let stdout = std::io::stdout();
    loop {
        let msg = tokio::select! {
            msg = stream.message() => msg.map_err(status_error)?,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(msg) = msg else { break };
        match msg.event {
            Some(pb::subscribe_response::Event::Opened(o)) if !args.json => {
                eprintln!(
                    "feed {} {} (acknowledged through seq {}, broker head {})",
                    if o.feed.is_empty() {
                        "(ephemeral)"
                    } else {
                        &o.feed
                    },
                    if o.created { "created" } else { "resumed" },
                    o.ack_floor,
                    o.head_seq
                );
            }
            Some(pb::subscribe_response::Event::Delivery(d)) => {
                let Some(record) = d.record else { continue };
                if args.limit.is_some_and(|l| received >= l) {
                    continue; // draining after the limit: not printed, not acknowledged
                }
                let line = match format(args.json, args.format) {
                    Format::Json => {
                        let mut v = record_json(&record);
                        v["attempt"] = json!(d.attempt);
                        v.to_string()
                    }
                    Format::Cap => document(&mut client, &record, Layout::OneLine).await?,
                    Format::Text => readable(&record),
                };
                {
                    let mut out = stdout.lock();
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
                if let Some(tx) = &tx {
                    let ack = pb::SubscribeRequest {
                        request: Some(pb::subscribe_request::Request::Ack(pb::Ack {
                            seqs: vec![record.seq],
                        })),
                    };
                    tx.send(ack).await?;
                }
                received += 1;
                if args.limit.is_some_and(|l| received >= l) {
                    // Half-close: the broker processes the acks already sent,
                    // then ends the stream; waiting for that end makes sure
                    // the last ack was taken.
                    tx = None;
                }
            }
            Some(pb::subscribe_response::Event::Opened(_)) | None => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line for a person: time, severity, category, marking, origin, headline.
fn readable(r: &pb::AlertRecord) -> String {
    let Some(a) = &r.alert else {
        return format!("[{}] (empty)", r.seq);
    };
    let s = |v: serde_json::Value| v.as_str().unwrap_or("?").to_owned();
    let tlp = a.marking.as_ref().map_or(0, |m| m.tlp);
    let via = r
        .provenance
        .as_ref()
        .map_or(String::new(), |p| format!(" via {}", p.path.join(" > ")));
    format!(
        "[{}] {} {} {} TLP:{} {}{via} {}: {}",
        r.seq,
        s(time_json(&r.received_at)),
        s(short::<pb::Severity>(a.severity)).to_uppercase(),
        s(short::<pb::Category>(a.category)),
        s(short::<pb::Tlp>(tlp)).to_uppercase(),
        a.origin.as_ref().map_or("?", |o| o.urn.as_str()),
        a.id,
        a.headline
    )
}

pub async fn get(args: GetArgs) -> Result<ExitCode> {
    let mut client = args.conn.connect().await?;
    let record = client
        .get_alert(pb::GetAlertRequest {
            id: args.id.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    match format(args.json, args.format) {
        Format::Json => println!("{}", record_json(&record)),
        Format::Cap => println!("{}", document(&mut client, &record, Layout::Pretty).await?),
        Format::Text => println!("{}", serde_json::to_string_pretty(&record_json(&record))?),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn history(args: HistoryArgs) -> Result<ExitCode> {
    let mut client = args.conn.connect().await?;
    let mut req = pb::ListAlertsRequest {
        filter: Some(args.filter.to_proto()?),
        since: args
            .since
            .as_deref()
            .map(|s| parse_time("--since", s))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|s| parse_time("--until", s))
            .transpose()?,
        page_size: args.limit.clamp(1, 1000) as u32,
        page_token: String::new(),
    };
    let mut printed = 0;
    loop {
        let page = client
            .list_alerts(req.clone())
            .await
            .map_err(status_error)?
            .into_inner();
        for r in &page.alerts {
            if printed == args.limit {
                return Ok(ExitCode::SUCCESS);
            }
            match format(args.json, args.format) {
                Format::Json => println!("{}", record_json(r)),
                Format::Cap => println!("{}", document(&mut client, r, Layout::OneLine).await?),
                Format::Text => println!("{}", readable(r)),
            }
            printed += 1;
        }
        if page.next_page_token.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        req.page_token = page.next_page_token;
    }
}

/// Turns a gRPC status into an error that says what the broker said.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    if status.code() == tonic::Code::Unknown || status.code() == tonic::Code::Unavailable {
        // Refused client certificates surface as transport errors; the rustls
        // alert is deeper in the source chain.
        let mut chain = Vec::new();
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&status);
        while let Some(e) = source {
            chain.push(e.to_string());
            source = e.source();
        }
        if !chain.is_empty() {
            return anyhow::anyhow!(
                "{}: {} ({})",
                code_name(status.code()),
                status.message(),
                chain.join(": ")
            );
        }
    }
    anyhow::anyhow!("{}: {}", code_name(status.code()), status.message())
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
        .chars()
        .flat_map(|c| {
            if c.is_uppercase() {
                vec!['_', c]
            } else {
                vec![c.to_ascii_uppercase()]
            }
        })
        .collect::<String>()
        .trim_start_matches('_')
        .to_owned()
}
