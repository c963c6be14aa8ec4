//! Alert fields as command-line flags (`liaison publish`), with lower-case
//! enum values: `--category drugs --severity severe --tlp amber`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use sha2::{Digest, Sha256};

use liaison::alert::timestamp;
use liaison::json::{parse_enum, parse_time};
use liaison::proto as pb;

#[derive(Debug, Clone, Default, Args)]
pub struct AlertArgs {
    /// Alert id (UUID); a new time-ordered UUID when omitted. Re-publishing an
    /// id stores nothing and returns the original sequence.
    #[arg(long)]
    pub id: Option<String>,
    /// drugs, arms, cbrn, terrorism, human_smuggling, migration, document_fraud, health, other.
    #[arg(long)]
    pub category: Option<String>,
    /// extreme, severe, moderate, minor, unknown.
    #[arg(long, default_value = "unknown")]
    pub severity: String,
    /// immediate, expected, future, past, unknown.
    #[arg(long, default_value = "unknown")]
    pub urgency: String,
    /// observed, likely, possible, unlikely, unknown.
    #[arg(long, default_value = "unknown")]
    pub certainty: String,
    /// One line summary (required).
    #[arg(long)]
    pub headline: Option<String>,
    #[arg(long, default_value = "")]
    pub description: String,
    #[arg(long, default_value = "")]
    pub instruction: String,
    /// actual, exercise, test.
    #[arg(long, default_value = "actual")]
    pub status: String,
    /// alert, update, cancel (update and cancel need --references).
    #[arg(long, default_value = "alert")]
    pub msg_type: String,
    /// Ids of the alerts this one updates or cancels (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub references: Vec<String>,
    #[arg(long, default_value = "")]
    pub incident: String,
    /// When it stops being relevant: RFC 3339 time or a duration from now ("6h", "3days").
    #[arg(long)]
    pub expires: Option<String>,
    /// clear, green, amber, amber_strict, red (default amber; with --cap,
    /// the CAP document's marking unless given).
    #[arg(long)]
    pub tlp: Option<String>,
    /// Countries (UZ) or agencies (UZ:customs) an AMBER alert may reach (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub releasable_to: Vec<String>,
    /// Node URN a RED alert is for (repeatable).
    #[arg(long = "recipient")]
    pub recipients: Vec<String>,
    /// Handling code (repeatable), e.g. LE-ONLY.
    #[arg(long = "handling-code")]
    pub handling_codes: Vec<String>,
    /// Typed fact KEY=VALUE (repeatable): integers, numbers and true/false are typed, the rest is text.
    #[arg(long = "param")]
    pub params: Vec<String>,
    /// BCP 47 language of the text fields.
    #[arg(long, default_value = "")]
    pub language: String,
    /// Border crossing point code.
    #[arg(long)]
    pub crossing_point: Option<String>,
    /// Border sector.
    #[arg(long)]
    pub border_sector: Option<String>,
    /// Latitude of a point (with --lon; optional --radius-km).
    #[arg(long, allow_hyphen_values = true)]
    pub lat: Option<f64>,
    #[arg(long, allow_hyphen_values = true)]
    pub lon: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    pub radius_km: f64,
    /// Source reliability: a, b, c, x.
    #[arg(long)]
    pub source_reliability: Option<String>,
    /// Information accuracy: 1, 2, 3, 4.
    #[arg(long)]
    pub accuracy: Option<String>,
    /// Attach a file (repeatable).
    #[arg(long = "attach")]
    pub attachments: Vec<PathBuf>,
}

impl AlertArgs {
    /// Builds the alert these flags describe.
    ///
    /// # Errors
    /// Names the flag whose value is not understood (the broker validates
    /// the rest).
    pub fn to_alert(&self) -> Result<pb::Alert> {
        let Some(category) = &self.category else {
            bail!("--category is required (or give the whole alert with --json)");
        };
        let Some(headline) = &self.headline else {
            bail!("--headline is required (or give the whole alert with --json)");
        };
        let now = SystemTime::now();
        let area =
            (self.crossing_point.is_some() || self.border_sector.is_some() || self.lat.is_some())
                .then(|| self.area())
                .transpose()?;
        let source = match (&self.source_reliability, &self.accuracy) {
            (None, None) => None,
            (r, a) => Some(pb::SourceEvaluation {
                reliability: r.as_deref().map_or(Ok(0), |r| {
                    parse_enum::<pb::SourceReliability>("--source-reliability", r)
                })?,
                accuracy: a.as_deref().map_or(Ok(0), |a| {
                    parse_enum::<pb::InformationAccuracy>("--accuracy", a)
                })?,
            }),
        };
        Ok(pb::Alert {
            id: self
                .id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            sent: Some(timestamp(now)),
            status: parse_enum::<pb::Status>("--status", &self.status)?,
            msg_type: parse_enum::<pb::MsgType>("--msg-type", &self.msg_type)?,
            references: self.references.clone(),
            incident: self.incident.clone(),
            origin: None,
            category: parse_enum::<pb::Category>("--category", category)?,
            urgency: parse_enum::<pb::Urgency>("--urgency", &self.urgency)?,
            severity: parse_enum::<pb::Severity>("--severity", &self.severity)?,
            certainty: parse_enum::<pb::Certainty>("--certainty", &self.certainty)?,
            headline: headline.clone(),
            description: self.description.clone(),
            instruction: self.instruction.clone(),
            expires: self
                .expires
                .as_deref()
                .map(|e| parse_expiry(e, now))
                .transpose()?,
            parameters: self
                .params
                .iter()
                .map(|p| parse_param(p))
                .collect::<Result<_>>()?,
            language: self.language.clone(),
            area,
            marking: Some(pb::Marking {
                tlp: parse_enum::<pb::Tlp>("--tlp", self.tlp.as_deref().unwrap_or("amber"))?,
                releasable_to: self.releasable_to.clone(),
                recipients: self.recipients.clone(),
                handling_codes: self.handling_codes.clone(),
            }),
            source,
            attachments: self
                .attachments
                .iter()
                .map(attachment)
                .collect::<Result<_>>()?,
            translations: Vec::new(),
        })
    }

    fn area(&self) -> Result<pb::Area> {
        let circles = match (self.lat, self.lon) {
            (Some(latitude), Some(longitude)) => vec![pb::Circle {
                center: Some(pb::Point {
                    latitude,
                    longitude,
                }),
                radius_km: self.radius_km,
            }],
            (None, None) => Vec::new(),
            _ => bail!("--lat and --lon go together"),
        };
        Ok(pb::Area {
            crossing_point: self.crossing_point.clone().unwrap_or_default(),
            border_sector: self.border_sector.clone().unwrap_or_default(),
            circles,
            polygons: Vec::new(),
            description: String::new(),
        })
    }
}

fn parse_expiry(s: &str, now: SystemTime) -> Result<prost_types::Timestamp> {
    match humantime::parse_duration(s) {
        Ok(d) => Ok(timestamp(now + d)),
        Err(_) => Ok(parse_time("--expires", s)?),
    }
}

/// `KEY=VALUE` with the value typed: integer, number, true/false, else text.
fn parse_param(s: &str) -> Result<pb::Parameter> {
    use pb::parameter::Value;
    let Some((key, value)) = s.split_once('=') else {
        bail!("--param `{s}`: expected KEY=VALUE");
    };
    let value = if let Ok(i) = value.parse::<i64>() {
        Value::Integer(i)
    } else if let Ok(n) = value
        .parse::<f64>()
        .map_err(drop)
        .and_then(|n| if n.is_finite() { Ok(n) } else { Err(()) })
    {
        Value::Number(n)
    } else if let Ok(b) = value.parse::<bool>() {
        Value::Flag(b)
    } else {
        Value::Text(value.to_owned())
    };
    Ok(pb::Parameter {
        key: key.to_owned(),
        value: Some(value),
        unit: String::new(),
    })
}

fn attachment(path: &std::path::PathBuf) -> Result<pb::Attachment> {
    let content = std::fs::read(path).with_context(|| format!("--attach {}", path.display()))?;
    let filename = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mime_type = match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    };
    Ok(pb::Attachment {
        filename,
        mime_type: mime_type.into(),
        sha256: Sha256::digest(&content).to_vec(),
        content: content.into(),
        description: String::new(),
    })
}

/// Parses a duration such as "30s" or "250ms".
///
/// # Errors
/// When the text is not a duration.
pub fn parse_duration(s: &str) -> Result<Duration> {
    humantime::parse_duration(s)
        .with_context(|| format!("`{s}` is not a duration such as 30s or 250ms"))
}
