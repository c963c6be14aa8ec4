//! The JSON form of alerts shared by the command line and the officer's
//! console: protobuf field names, enum values as short lower-case names
//! (`"drugs"`, `"amber_strict"`), times as RFC 3339 UTC, attachment
//! content as base64 and digests as hex. `liaison publish --json` and the
//! console's compose form read the same shape (enum values may also be
//! given by their full protobuf names, e.g. `"CATEGORY_DRUGS"`).

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use crate::alert::{system_time, timestamp};
use crate::proto as pb;

/// JSON that is not an alert: `"<field>: <rule>"`, the field path first,
/// as the broker names a refused field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(String);

impl JsonError {
    /// The path of the field the error names (`alert.marking.tlp`).
    pub fn field(&self) -> &str {
        self.0.split_once(": ").map_or("", |(f, _)| f)
    }
}

type Result<T> = std::result::Result<T, JsonError>;

/// An enum of the proto whose names share a prefix.
pub trait ProtoEnum: Sized + Copy {
    const PREFIX: &'static str;
    fn full_name(self) -> &'static str;
    fn from_full_name(s: &str) -> Option<Self>;
    fn from_i32(v: i32) -> Option<Self>;
}

macro_rules! proto_enum {
    ($($t:ty => $prefix:literal),* $(,)?) => {$(
        impl ProtoEnum for $t {
            const PREFIX: &'static str = $prefix;
            fn full_name(self) -> &'static str { self.as_str_name() }
            fn from_full_name(s: &str) -> Option<Self> { Self::from_str_name(s) }
            fn from_i32(v: i32) -> Option<Self> { Self::try_from(v).ok() }
        }
    )*};
}

proto_enum! {
    pb::Status => "STATUS_",
    pb::MsgType => "MSG_TYPE_",
    pb::Category => "CATEGORY_",
    pb::Urgency => "URGENCY_",
    pb::Severity => "SEVERITY_",
    pb::Certainty => "CERTAINTY_",
    pb::Tlp => "TLP_",
    pb::SourceReliability => "SOURCE_RELIABILITY_",
    pb::InformationAccuracy => "INFORMATION_ACCURACY_",
    pb::ReceiptKind => "RECEIPT_KIND_",
}

/// `CATEGORY_DRUGS` → `drugs`.
pub fn short<E: ProtoEnum>(v: i32) -> Value {
    match E::from_i32(v) {
        Some(e) if v != 0 => Value::String(
            e.full_name()
                .trim_start_matches(E::PREFIX)
                .to_ascii_lowercase(),
        ),
        _ => Value::Null,
    }
}

/// `drugs`, `DRUGS` or `CATEGORY_DRUGS` → the enum value.
///
/// # Errors
/// Lists the accepted names when `s` is none of them.
pub fn parse_enum<E: ProtoEnum + Into<i32>>(field: &str, s: &str) -> Result<i32> {
    let upper = s.trim().to_ascii_uppercase().replace('-', "_");
    let full = if upper.starts_with(E::PREFIX) {
        upper
    } else {
        format!("{}{upper}", E::PREFIX)
    };
    match E::from_full_name(&full) {
        Some(e) if full != format!("{}UNSPECIFIED", E::PREFIX) => Ok(e.into()),
        _ => Err(JsonError(format!(
            "{field}: `{s}` is not one of {}",
            names::<E>()
        ))),
    }
}

fn names<E: ProtoEnum>() -> String {
    (1..32)
        .filter_map(E::from_i32)
        .map(|e| {
            e.full_name()
                .trim_start_matches(E::PREFIX)
                .to_ascii_lowercase()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn time_json(ts: &Option<prost_types::Timestamp>) -> Value {
    ts.as_ref().and_then(system_time).map_or(Value::Null, |t| {
        Value::String(humantime::format_rfc3339_micros(t).to_string())
    })
}

/// Parses an RFC 3339 time (`2026-11-28T10:00:00Z`).
///
/// # Errors
/// When the text is not such a time.
pub fn parse_time(field: &str, s: &str) -> Result<prost_types::Timestamp> {
    let t: SystemTime = humantime::parse_rfc3339_weak(s).map_err(|_| {
        JsonError(format!(
            "{field}: `{s}` is not an RFC 3339 time such as 2026-11-28T10:00:00Z"
        ))
    })?;
    Ok(timestamp(t))
}

/// A receipt: who received or acknowledged an alert, when, with the note.
pub fn receipt_json(r: &pb::Receipt) -> Value {
    json!({
        "alert_id": r.alert_id,
        "kind": short::<pb::ReceiptKind>(r.kind),
        "recipient": r.recipient.as_ref().map(|o| o.urn.clone()),
        "feed": r.feed,
        "at": time_json(&r.at),
        "note": r.note,
    })
}

pub fn record_json(r: &pb::AlertRecord) -> Value {
    let mut v = json!({
        "seq": r.seq,
        "received_at": time_json(&r.received_at),
        "alert": r.alert.as_ref().map_or(Value::Null, alert_json),
    });
    if let Some(p) = &r.provenance {
        v["provenance"] = provenance_json(p);
    }
    v
}

/// Where an imported alert comes from, with the origin broker's
/// attestation (statement, signature and certificates as base64) for
/// anyone to check again.
fn provenance_json(p: &pb::Provenance) -> Value {
    let att = p.attestation.as_ref().map_or(Value::Null, |a| {
        json!({
            "scheme": a.scheme,
            "statement": B64.encode(&a.statement),
            "signature": B64.encode(&a.signature),
            "certificates": a.certificates.iter().map(|c| B64.encode(c)).collect::<Vec<_>>(),
        })
    });
    json!({
        "origin_broker": p.origin_broker,
        "origin_received_at": time_json(&p.origin_received_at),
        "path": p.path,
        "attestation": att,
    })
}

fn point_json(p: &Option<pb::Point>) -> Value {
    p.as_ref().map_or(
        Value::Null,
        |p| json!({"latitude": p.latitude, "longitude": p.longitude}),
    )
}

pub fn alert_json(a: &pb::Alert) -> Value {
    let params: Vec<Value> = a
        .parameters
        .iter()
        .map(|p| {
            let mut m = Map::new();
            m.insert("key".into(), json!(p.key));
            match &p.value {
                Some(pb::parameter::Value::Text(t)) => m.insert("text".into(), json!(t)),
                Some(pb::parameter::Value::Number(n)) => m.insert("number".into(), json!(n)),
                Some(pb::parameter::Value::Integer(i)) => m.insert("integer".into(), json!(i)),
                Some(pb::parameter::Value::Flag(f)) => m.insert("flag".into(), json!(f)),
                None => None,
            };
            if !p.unit.is_empty() {
                m.insert("unit".into(), json!(p.unit));
            }
            Value::Object(m)
        })
        .collect();
    json!({
        "id": a.id,
        "sent": time_json(&a.sent),
        "status": short::<pb::Status>(a.status),
        "msg_type": short::<pb::MsgType>(a.msg_type),
        "references": a.references,
        "incident": a.incident,
        "origin": a.origin.as_ref().map_or(Value::Null, |o| json!({
            "urn": o.urn, "country": o.country, "agency": o.agency, "node": o.node,
        })),
        "category": short::<pb::Category>(a.category),
        "urgency": short::<pb::Urgency>(a.urgency),
        "severity": short::<pb::Severity>(a.severity),
        "certainty": short::<pb::Certainty>(a.certainty),
        "headline": a.headline,
        "description": a.description,
        "instruction": a.instruction,
        "expires": time_json(&a.expires),
        "parameters": params,
        "language": a.language,
        "area": a.area.as_ref().map_or(Value::Null, |ar| json!({
            "crossing_point": ar.crossing_point,
            "border_sector": ar.border_sector,
            "circles": ar.circles.iter().map(|c| json!({"center": point_json(&c.center), "radius_km": c.radius_km})).collect::<Vec<_>>(),
            "polygons": ar.polygons.iter().map(|p| json!({"points": p.points.iter().map(|pt| point_json(&Some(*pt))).collect::<Vec<_>>()})).collect::<Vec<_>>(),
            "description": ar.description,
        })),
        "marking": a.marking.as_ref().map_or(Value::Null, |m| json!({
            "tlp": short::<pb::Tlp>(m.tlp),
            "releasable_to": m.releasable_to,
            "recipients": m.recipients,
            "handling_codes": m.handling_codes,
        })),
        "source": a.source.as_ref().map_or(Value::Null, |s| json!({
            "reliability": short::<pb::SourceReliability>(s.reliability),
            "accuracy": short::<pb::InformationAccuracy>(s.accuracy),
        })),
        "attachments": a.attachments.iter().map(|at| json!({
            "filename": at.filename,
            "mime_type": at.mime_type,
            "content": B64.encode(&at.content),
            "sha256": hex(&at.sha256),
            "description": at.description,
        })).collect::<Vec<_>>(),
        "translations": a.translations.iter().map(|t| json!({
            "language": t.language,
            "headline": t.headline,
            "description": t.description,
            "instruction": t.instruction,
        })).collect::<Vec<_>>(),
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(field: &str, s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return Err(JsonError(format!(
            "{field}: hex text must have an even length"
        )));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .map_err(|_| JsonError(format!("{field}: `{s}` is not hex")))
        })
        .collect()
}

/// Reads an alert from its JSON form. Unknown fields are refused, so that a
/// typo does not silently drop information.
///
/// # Errors
/// Names the field that has the wrong shape.
pub fn alert_from_json(v: &Value) -> Result<pb::Alert> {
    let o = obj("alert", v)?;
    let mut a = pb::Alert::default();
    for (k, v) in o {
        let f = format!("alert.{k}");
        match k.as_str() {
            "id" => a.id = string(&f, v)?,
            "sent" => a.sent = Some(parse_time(&f, &string(&f, v)?)?),
            "status" => a.status = parse_enum::<pb::Status>(&f, &string(&f, v)?)?,
            "msg_type" => a.msg_type = parse_enum::<pb::MsgType>(&f, &string(&f, v)?)?,
            "references" => a.references = strings(&f, v)?,
            "incident" => a.incident = string(&f, v)?,
            "origin" => {} // set by the broker
            "category" => a.category = parse_enum::<pb::Category>(&f, &string(&f, v)?)?,
            "urgency" => a.urgency = parse_enum::<pb::Urgency>(&f, &string(&f, v)?)?,
            "severity" => a.severity = parse_enum::<pb::Severity>(&f, &string(&f, v)?)?,
            "certainty" => a.certainty = parse_enum::<pb::Certainty>(&f, &string(&f, v)?)?,
            "headline" => a.headline = string(&f, v)?,
            "description" => a.description = string(&f, v)?,
            "instruction" => a.instruction = string(&f, v)?,
            "expires" if v.is_null() => {}
            "expires" => a.expires = Some(parse_time(&f, &string(&f, v)?)?),
            "language" => a.language = string(&f, v)?,
            "parameters" => {
                a.parameters = array(&f, v)?
                    .iter()
                    .map(|p| parameter_from_json(&f, p))
                    .collect::<Result<_>>()?
            }
            "area" if v.is_null() => {}
            "area" => a.area = Some(area_from_json(&f, v)?),
            "marking" => a.marking = Some(marking_from_json(&f, v)?),
            "source" if v.is_null() => {}
            "source" => {
                let s = obj(&f, v)?;
                a.source = Some(pb::SourceEvaluation {
                    reliability: opt_enum::<pb::SourceReliability>(&f, s.get("reliability"))?,
                    accuracy: opt_enum::<pb::InformationAccuracy>(&f, s.get("accuracy"))?,
                });
            }
            "attachments" => {
                a.attachments = array(&f, v)?
                    .iter()
                    .map(|x| attachment_from_json(&f, x))
                    .collect::<Result<_>>()?
            }
            "translations" => {
                a.translations = array(&f, v)?
                    .iter()
                    .map(|x| translation_from_json(&f, x))
                    .collect::<Result<_>>()?
            }
            _ => return Err(JsonError(format!("{f}: unknown field"))),
        }
    }
    Ok(a)
}

fn translation_from_json(field: &str, v: &Value) -> Result<pb::Translation> {
    let mut t = pb::Translation::default();
    for (k, v) in obj(field, v)? {
        let f = format!("{field}.{k}");
        match k.as_str() {
            "language" => t.language = string(&f, v)?,
            "headline" => t.headline = string(&f, v)?,
            "description" => t.description = string(&f, v)?,
            "instruction" => t.instruction = string(&f, v)?,
            _ => return Err(JsonError(format!("{f}: unknown field"))),
        }
    }
    Ok(t)
}

fn parameter_from_json(field: &str, v: &Value) -> Result<pb::Parameter> {
    let o = obj(field, v)?;
    let mut p = pb::Parameter {
        key: o
            .get("key")
            .map(|k| string(field, k))
            .transpose()?
            .unwrap_or_default(),
        unit: o
            .get("unit")
            .map(|k| string(field, k))
            .transpose()?
            .unwrap_or_default(),
        value: None,
    };
    use pb::parameter::Value as PV;
    p.value = if let Some(t) = o.get("text") {
        Some(PV::Text(string(field, t)?))
    } else if let Some(n) = o.get("integer") {
        Some(PV::Integer(n.as_i64().ok_or_else(|| {
            JsonError(format!("{field}.integer: must be an integer"))
        })?))
    } else if let Some(n) = o.get("number") {
        Some(PV::Number(n.as_f64().ok_or_else(|| {
            JsonError(format!("{field}.number: must be a number"))
        })?))
    } else if let Some(b) = o.get("flag") {
        Some(PV::Flag(b.as_bool().ok_or_else(|| {
            JsonError(format!("{field}.flag: must be true or false"))
        })?))
    } else {
        None
    };
    Ok(p)
}

fn point_from_json(field: &str, v: &Value) -> Result<pb::Point> {
    let o = obj(field, v)?;
    let num = |k: &str| {
        o.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| JsonError(format!("{field}.{k}: must be a number")))
    };
    Ok(pb::Point {
        latitude: num("latitude")?,
        longitude: num("longitude")?,
    })
}

fn area_from_json(field: &str, v: &Value) -> Result<pb::Area> {
    let o = obj(field, v)?;
    let s = |k: &str| {
        o.get(k)
            .map(|x| string(&format!("{field}.{k}"), x))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let circles = match o.get("circles") {
        Some(c) => array(field, c)?
            .iter()
            .map(|c| {
                let co = obj(field, c)?;
                Ok(pb::Circle {
                    center: co
                        .get("center")
                        .map(|p| point_from_json(field, p))
                        .transpose()?,
                    radius_km: co.get("radius_km").and_then(Value::as_f64).unwrap_or(0.0),
                })
            })
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let polygons = match o.get("polygons") {
        Some(p) => array(field, p)?
            .iter()
            .map(|poly| {
                let points = obj(field, poly)?
                    .get("points")
                    .cloned()
                    .unwrap_or(Value::Array(vec![]));
                Ok(pb::Polygon {
                    points: array(field, &points)?
                        .iter()
                        .map(|pt| point_from_json(field, pt))
                        .collect::<Result<_>>()?,
                })
            })
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    Ok(pb::Area {
        crossing_point: s("crossing_point")?,
        border_sector: s("border_sector")?,
        circles,
        polygons,
        description: s("description")?,
    })
}

fn marking_from_json(field: &str, v: &Value) -> Result<pb::Marking> {
    let o = obj(field, v)?;
    let list = |k: &str| {
        o.get(k)
            .map_or(Ok(Vec::new()), |x| strings(&format!("{field}.{k}"), x))
    };
    Ok(pb::Marking {
        tlp: opt_enum::<pb::Tlp>(&format!("{field}.tlp"), o.get("tlp"))?,
        releasable_to: list("releasable_to")?,
        recipients: list("recipients")?,
        handling_codes: list("handling_codes")?,
    })
}

fn attachment_from_json(field: &str, v: &Value) -> Result<pb::Attachment> {
    let o = obj(field, v)?;
    let s = |k: &str| {
        o.get(k)
            .map(|x| string(&format!("{field}.{k}"), x))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let content = B64
        .decode(s("content")?)
        .map_err(|_| JsonError(format!("{field}.content: must be base64")))?;
    let sha256 = match s("sha256")?.as_str() {
        "" => <sha2::Sha256 as sha2::Digest>::digest(&content).to_vec(),
        h => unhex(&format!("{field}.sha256"), h)?,
    };
    Ok(pb::Attachment {
        filename: s("filename")?,
        mime_type: s("mime_type")?,
        content: content.into(),
        sha256,
        description: s("description")?,
    })
}

fn opt_enum<E: ProtoEnum + Into<i32>>(field: &str, v: Option<&Value>) -> Result<i32> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(v) => parse_enum::<E>(field, &string(field, v)?),
    }
}

fn obj<'a>(field: &str, v: &'a Value) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| JsonError(format!("{field}: must be a JSON object")))
}

fn array<'a>(field: &str, v: &'a Value) -> Result<&'a Vec<Value>> {
    v.as_array()
        .ok_or_else(|| JsonError(format!("{field}: must be a JSON array")))
}

fn string(field: &str, v: &Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        _ => Err(JsonError(format!("{field}: must be a string"))),
    }
}

fn strings(field: &str, v: &Value) -> Result<Vec<String>> {
    array(field, v)?.iter().map(|x| string(field, x)).collect()
}
