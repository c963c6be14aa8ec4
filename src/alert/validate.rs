//! Validation of incoming alerts: every rule of `proto/liaison/v1/alert.proto`,
//! each refusal naming the field path and the rule broken. Nothing half-valid
//! gets past this point.

use std::time::{Duration, SystemTime};

use prost::Message;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Alert, AlertId, Marking, Releasee, origin_proto, system_time};
use crate::identity::{CountryCode, NodeId, is_label};
use crate::proto as pb;

/// Size bounds the broker enforces; `max_alert_bytes` is configurable.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The whole encoded alert, attachments included.
    pub max_alert_bytes: usize,
    /// How far in the future of the broker's clock `sent` may lie.
    pub max_clock_skew: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_alert_bytes: 256 * 1024,
            max_clock_skew: Duration::from_secs(300),
        }
    }
}

/// Why an alert was refused: the field path and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct Rejection {
    pub field: String,
    pub rule: String,
    /// The alert breaks no rule of its own and may be accepted unchanged
    /// later: its `sent` lies further ahead of the broker's clock than it
    /// allows (the clocks disagree).
    pub retry_later: bool,
}

impl Rejection {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Rejection {
        Rejection {
            field: field.into(),
            rule: rule.into(),
            retry_later: false,
        }
    }
}

fn reject<T>(field: impl Into<String>, rule: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection::new(field, rule))
}

const MAX_REFERENCES: usize = 32;
const MAX_PARAMETERS: usize = 64;
const MAX_TRANSLATIONS: usize = 8;
const MAX_SHAPES: usize = 16;
const MAX_POLYGON_POINTS: usize = 1024;
const MAX_RELEASABLE: usize = 32;
const MAX_RECIPIENTS: usize = 64;
const MAX_HANDLING_CODES: usize = 16;
const MAX_ATTACHMENTS: usize = 8;

/// Checks `msg` against every rule, sets its origin to `origin` and returns the
/// typed alert.
///
/// # Errors
/// The first rule broken, as a [`Rejection`] naming the field.
pub fn validate(
    mut msg: pb::Alert,
    origin: &NodeId,
    limits: &Limits,
    now: SystemTime,
) -> Result<Alert, Rejection> {
    msg.origin = Some(origin_proto(origin));
    let size = msg.encoded_len();
    if size > limits.max_alert_bytes {
        return reject(
            "alert",
            format!(
                "encoded size {size} bytes exceeds the limit of {} bytes",
                limits.max_alert_bytes
            ),
        );
    }
    let id = canonical_uuid("alert.id", &msg.id)?;
    check_identity(&msg, id, limits, now)?;
    check_content(&msg)?;
    if let Some(area) = &msg.area {
        check_area(area)?;
    }
    check_marking(msg.marking.as_ref())?;
    if let Some(source) = &msg.source {
        enum_required::<pb::SourceReliability>("alert.source.reliability", source.reliability)?;
        enum_required::<pb::InformationAccuracy>("alert.source.accuracy", source.accuracy)?;
    }
    check_attachments(&msg.attachments)?;
    lift(msg)
}

/// Lifts the typed fields out of an alert that is known to be valid (or was
/// just checked by [`validate`]).
pub(super) fn lift(body: pb::Alert) -> Result<Alert, Rejection> {
    let id = AlertId(parse_uuid("alert.id", &body.id)?);
    let origin = match &body.origin {
        Some(o) => o
            .urn
            .parse::<NodeId>()
            .or_else(|e| reject("alert.origin.urn", e.to_string()))?,
        None => return reject("alert.origin", "is required"),
    };
    let marking = body
        .marking
        .as_ref()
        .map_or_else(|| reject("alert.marking", "is required"), parse_marking)?;
    Ok(Alert {
        id,
        origin,
        status: enum_required("alert.status", body.status)?,
        category: enum_required("alert.category", body.category)?,
        severity: enum_required("alert.severity", body.severity)?,
        urgency: enum_required("alert.urgency", body.urgency)?,
        marking,
        expires: body.expires.as_ref().and_then(system_time),
        body,
    })
}

fn check_identity(
    msg: &pb::Alert,
    id: Uuid,
    limits: &Limits,
    now: SystemTime,
) -> Result<(), Rejection> {
    let sent = time_required("alert.sent", msg.sent.as_ref())?;
    if sent > now + limits.max_clock_skew {
        return Err(Rejection {
            retry_later: true,
            ..Rejection::new(
                "alert.sent",
                format!(
                    "lies more than {}s in the future of the broker's clock",
                    limits.max_clock_skew.as_secs()
                ),
            )
        });
    }
    enum_required::<pb::Status>("alert.status", msg.status)?;
    let msg_type = enum_required::<pb::MsgType>("alert.msg_type", msg.msg_type)?;
    match (msg_type, msg.references.is_empty()) {
        (pb::MsgType::Alert, false) => {
            return reject("alert.references", "must be empty when msg_type is ALERT");
        }
        (pb::MsgType::Update | pb::MsgType::Cancel, true) => {
            return reject(
                "alert.references",
                "must name at least one alert when msg_type is UPDATE or CANCEL",
            );
        }
        _ => {}
    }
    max_items("alert.references", msg.references.len(), MAX_REFERENCES)?;
    for (i, r) in msg.references.iter().enumerate() {
        if canonical_uuid(&format!("alert.references[{i}]"), r)? == id {
            return reject(
                format!("alert.references[{i}]"),
                "an alert cannot reference itself",
            );
        }
    }
    text("alert.incident", &msg.incident, 0, 128, false)?;
    if let Some(expires) = &msg.expires
        && time_required("alert.expires", Some(expires))? <= sent
    {
        return reject("alert.expires", "must be later than alert.sent");
    }
    Ok(())
}

fn check_content(msg: &pb::Alert) -> Result<(), Rejection> {
    enum_required::<pb::Category>("alert.category", msg.category)?;
    enum_required::<pb::Urgency>("alert.urgency", msg.urgency)?;
    enum_required::<pb::Severity>("alert.severity", msg.severity)?;
    enum_required::<pb::Certainty>("alert.certainty", msg.certainty)?;
    text("alert.headline", &msg.headline, 1, 256, false)?;
    text("alert.description", &msg.description, 0, 16 * 1024, true)?;
    text("alert.instruction", &msg.instruction, 0, 4 * 1024, true)?;
    if !msg.language.is_empty() && !is_language_tag(&msg.language) {
        return reject("alert.language", LANGUAGE_RULE);
    }
    check_translations(msg)?;
    max_items("alert.parameters", msg.parameters.len(), MAX_PARAMETERS)?;
    let mut keys = std::collections::HashSet::new();
    for (i, p) in msg.parameters.iter().enumerate() {
        let field = format!("alert.parameters[{i}]");
        if !is_param_key(&p.key) {
            return reject(format!("{field}.key"), "must match [A-Za-z0-9_.:-]{1,64}");
        }
        if p.key.starts_with("liaison:") {
            return reject(
                format!("{field}.key"),
                "\"liaison:\" keys are reserved for what Liaison adds when it writes CAP",
            );
        }
        if !keys.insert(p.key.as_str()) {
            return reject(
                format!("{field}.key"),
                format!("duplicate key \"{}\"", p.key),
            );
        }
        match &p.value {
            None => {
                return reject(
                    format!("{field}.value"),
                    "is required (text, number, integer or flag)",
                );
            }
            Some(pb::parameter::Value::Text(t)) => {
                text(&format!("{field}.text"), t, 0, 1024, false)?
            }
            Some(pb::parameter::Value::Number(n)) if !n.is_finite() => {
                return reject(format!("{field}.number"), "must be a finite number");
            }
            Some(_) => {}
        }
        text(&format!("{field}.unit"), &p.unit, 0, 32, false)?;
    }
    Ok(())
}

const LANGUAGE_RULE: &str = "must be a BCP 47 language tag such as \"ru\", \"tg\" or \"en-GB\"";

/// Translations: at most 8, each in a language of its own, with the text
/// rules of the alert's own fields.
fn check_translations(msg: &pb::Alert) -> Result<(), Rejection> {
    if msg.translations.is_empty() {
        return Ok(());
    }
    max_items(
        "alert.translations",
        msg.translations.len(),
        MAX_TRANSLATIONS,
    )?;
    if msg.language.is_empty() {
        return reject(
            "alert.language",
            "is required when the alert has translations",
        );
    }
    let mut languages = vec![msg.language.to_ascii_lowercase()];
    for (i, t) in msg.translations.iter().enumerate() {
        let field = format!("alert.translations[{i}]");
        if !is_language_tag(&t.language) {
            return reject(format!("{field}.language"), LANGUAGE_RULE);
        }
        let language = t.language.to_ascii_lowercase();
        if languages.contains(&language) {
            return reject(
                format!("{field}.language"),
                format!("\"{}\" is given twice", t.language),
            );
        }
        languages.push(language);
        text(&format!("{field}.headline"), &t.headline, 1, 256, false)?;
        text(
            &format!("{field}.description"),
            &t.description,
            0,
            16 * 1024,
            true,
        )?;
        text(
            &format!("{field}.instruction"),
            &t.instruction,
            0,
            4 * 1024,
            true,
        )?;
    }
    Ok(())
}

fn check_area(area: &pb::Area) -> Result<(), Rejection> {
    if area.crossing_point.is_empty()
        && area.border_sector.is_empty()
        && area.circles.is_empty()
        && area.polygons.is_empty()
        && area.description.is_empty()
    {
        return reject(
            "alert.area",
            "when present, must have at least one component",
        );
    }
    text(
        "alert.area.crossing_point",
        &area.crossing_point,
        0,
        64,
        false,
    )?;
    text(
        "alert.area.border_sector",
        &area.border_sector,
        0,
        128,
        false,
    )?;
    text("alert.area.description", &area.description, 0, 1024, true)?;
    max_items("alert.area.circles", area.circles.len(), MAX_SHAPES)?;
    for (i, c) in area.circles.iter().enumerate() {
        let field = format!("alert.area.circles[{i}]");
        check_point(&format!("{field}.center"), c.center.as_ref())?;
        if !(0.0..=1000.0).contains(&c.radius_km) {
            return reject(format!("{field}.radius_km"), "must be between 0 and 1000");
        }
    }
    max_items("alert.area.polygons", area.polygons.len(), MAX_SHAPES)?;
    for (i, poly) in area.polygons.iter().enumerate() {
        let field = format!("alert.area.polygons[{i}].points");
        if poly.points.len() < 4 {
            return reject(
                field,
                "a polygon needs at least 4 points, the first equal to the last",
            );
        }
        max_items(&field, poly.points.len(), MAX_POLYGON_POINTS)?;
        for (j, p) in poly.points.iter().enumerate() {
            check_point(&format!("{field}[{j}]"), Some(p))?;
        }
        if poly.points.first() != poly.points.last() {
            return reject(
                field,
                "the polygon must be closed: the last point must equal the first",
            );
        }
    }
    Ok(())
}

fn check_point(field: &str, p: Option<&pb::Point>) -> Result<(), Rejection> {
    let Some(p) = p else {
        return reject(field, "is required");
    };
    if !(-90.0..=90.0).contains(&p.latitude) {
        return reject(
            format!("{field}.latitude"),
            "must be between -90 and 90 degrees",
        );
    }
    if !(-180.0..=180.0).contains(&p.longitude) {
        return reject(
            format!("{field}.longitude"),
            "must be between -180 and 180 degrees",
        );
    }
    Ok(())
}

fn check_marking(marking: Option<&pb::Marking>) -> Result<(), Rejection> {
    let Some(m) = marking else {
        return reject("alert.marking", "is required");
    };
    let tlp = enum_required::<pb::Tlp>("alert.marking.tlp", m.tlp)?;
    max_items(
        "alert.marking.releasable_to",
        m.releasable_to.len(),
        MAX_RELEASABLE,
    )?;
    max_items(
        "alert.marking.recipients",
        m.recipients.len(),
        MAX_RECIPIENTS,
    )?;
    match (tlp, m.recipients.is_empty()) {
        (pb::Tlp::Red, true) => {
            return reject(
                "alert.marking.recipients",
                "must name at least one node when tlp is RED",
            );
        }
        (pb::Tlp::Red, false) => {}
        (_, false) => {
            return reject(
                "alert.marking.recipients",
                "is only allowed when tlp is RED",
            );
        }
        (_, true) => {}
    }
    max_items(
        "alert.marking.handling_codes",
        m.handling_codes.len(),
        MAX_HANDLING_CODES,
    )?;
    for (i, code) in m.handling_codes.iter().enumerate() {
        let ok = (1..=32).contains(&code.len())
            && code
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return reject(
                format!("alert.marking.handling_codes[{i}]"),
                "must match [A-Z0-9_-]{1,32}",
            );
        }
    }
    parse_marking(m).map(drop)
}

fn parse_marking(m: &pb::Marking) -> Result<Marking, Rejection> {
    let releasable_to = m
        .releasable_to
        .iter()
        .enumerate()
        .map(|(i, r)| {
            parse_releasee(r)
                .or_else(|rule| reject(format!("alert.marking.releasable_to[{i}]"), rule))
        })
        .collect::<Result<_, _>>()?;
    let recipients = m
        .recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.parse::<NodeId>()
                .or_else(|e| reject(format!("alert.marking.recipients[{i}]"), e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    Ok(Marking {
        tlp: enum_required("alert.marking.tlp", m.tlp)?,
        releasable_to,
        recipients,
    })
}

fn parse_releasee(s: &str) -> Result<Releasee, &'static str> {
    const RULE: &str = "must be a country code (\"UZ\") or a country and agency (\"UZ:customs\")";
    match s.split_once(':') {
        None => CountryCode::parse(s)
            .map(Releasee::Country)
            .map_err(|_| RULE),
        Some((cc, agency)) if is_label(agency) => CountryCode::parse(cc)
            .map(|cc| Releasee::Agency(cc, agency.to_owned()))
            .map_err(|_| RULE),
        Some(_) => Err(RULE),
    }
}

fn check_attachments(attachments: &[pb::Attachment]) -> Result<(), Rejection> {
    max_items("alert.attachments", attachments.len(), MAX_ATTACHMENTS)?;
    for (i, a) in attachments.iter().enumerate() {
        let field = format!("alert.attachments[{i}]");
        text(&format!("{field}.filename"), &a.filename, 1, 255, false)?;
        if a.filename.contains(['/', '\\']) || a.filename == "." || a.filename == ".." {
            return reject(
                format!("{field}.filename"),
                "must be a plain file name without path separators",
            );
        }
        let mime_ok = a.mime_type.len() <= 127
            && a.mime_type.split_once('/').is_some_and(|(t, s)| {
                !t.is_empty() && !s.is_empty() && a.mime_type.bytes().all(|b| b.is_ascii_graphic())
            });
        if !mime_ok {
            return reject(
                format!("{field}.mime_type"),
                "must be a MIME type such as \"image/jpeg\"",
            );
        }
        if a.content.is_empty() {
            return reject(format!("{field}.content"), "must not be empty");
        }
        if a.sha256.len() != 32 {
            return reject(
                format!("{field}.sha256"),
                "must be the 32-byte SHA-256 digest of content",
            );
        }
        if Sha256::digest(&a.content).as_slice() != a.sha256.as_slice() {
            return reject(
                format!("{field}.sha256"),
                "does not match the SHA-256 digest of content",
            );
        }
        text(
            &format!("{field}.description"),
            &a.description,
            0,
            1024,
            true,
        )?;
    }
    Ok(())
}

/// An id as a client must send it: the canonical form, exactly as the broker
/// stores and answers it (so the acknowledged id is the one sent).
fn canonical_uuid(field: &str, s: &str) -> Result<Uuid, Rejection> {
    let u = parse_uuid(field, s)?;
    if s.len() != 36 || u.hyphenated().to_string() != s {
        return reject(
            field,
            "must be a UUID in canonical form: 36 characters, lower-case hex digits and hyphens, \
             such as 0192b8a0-7d3c-7cc1-9a0e-3f1c2b4d5e6f",
        );
    }
    Ok(u)
}

fn parse_uuid(field: &str, s: &str) -> Result<Uuid, Rejection> {
    if s.is_empty() {
        return reject(field, "is required");
    }
    match Uuid::parse_str(s) {
        Ok(u) if u.is_nil() => reject(field, "must not be the nil UUID"),
        Ok(u) => Ok(u),
        Err(_) => reject(
            field,
            "must be a UUID such as 0192b8a0-7d3c-7cc1-9a0e-3f1c2b4d5e6f",
        ),
    }
}

fn enum_required<E: TryFrom<i32>>(field: &str, value: i32) -> Result<E, Rejection> {
    match E::try_from(value) {
        Ok(e) if value != 0 => Ok(e),
        Ok(_) => reject(field, "is required"),
        Err(_) => reject(field, format!("{value} is not a known value")),
    }
}

fn time_required(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Result<SystemTime, Rejection> {
    let Some(ts) = ts else {
        return reject(field, "is required");
    };
    match system_time(ts) {
        Some(t) if ts.seconds >= 946_684_800 => Ok(t),
        _ => reject(field, "must be a valid time after 2000-01-01"),
    }
}

fn max_items(field: &str, len: usize, max: usize) -> Result<(), Rejection> {
    if len > max {
        return reject(field, format!("has {len} items; at most {max} are allowed"));
    }
    Ok(())
}

/// Length bounds in bytes; control characters are refused except, in
/// multi-line fields, newline, carriage return and tab.
fn text(field: &str, s: &str, min: usize, max: usize, multiline: bool) -> Result<(), Rejection> {
    if s.len() < min {
        return reject(field, "is required");
    }
    if s.len() > max {
        return reject(
            field,
            format!("is {} bytes long; at most {max} are allowed", s.len()),
        );
    }
    let bad = |c: char| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t'));
    if s.chars().any(bad) {
        return reject(field, "must not contain control characters");
    }
    Ok(())
}

fn is_param_key(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

fn is_language_tag(s: &str) -> bool {
    let mut parts = s.split('-');
    let primary_ok = parts
        .next()
        .is_some_and(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    s.len() <= 35
        && primary_ok
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}
