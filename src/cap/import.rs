//! A CAP 1.2 `<alert>` into a Liaison alert, as docs/cap.md maps it. The
//! result still goes through the broker's validation when published; what
//! can be told here is told with the CAP element's path and line.

use base64::Engine;
use sha1::Digest;

use super::vocab::{self, LIAISON_PREFIX};
use super::xml::{self, Element};
use super::{CapError, Geocode, restriction_text};
use crate::proto as pb;

const ALERT: &[&str] = &[
    "identifier",
    "sender",
    "sent",
    "status",
    "msgType",
    "source",
    "scope",
    "restriction",
    "addresses",
    "code",
    "note",
    "references",
    "incidents",
    "info",
];
const INFO: &[&str] = &[
    "language",
    "category",
    "event",
    "responseType",
    "urgency",
    "severity",
    "certainty",
    "audience",
    "eventCode",
    "effective",
    "onset",
    "expires",
    "senderName",
    "headline",
    "description",
    "instruction",
    "web",
    "contact",
    "parameter",
    "resource",
    "area",
];
const RESOURCE: &[&str] = &[
    "resourceDesc",
    "mimeType",
    "size",
    "uri",
    "derefUri",
    "digest",
];
const AREA: &[&str] = &[
    "areaDesc", "polygon", "circle", "geocode", "altitude", "ceiling",
];
const PAIR: &[&str] = &["valueName", "value"];
/// A parameter's text, at most (the broker's rule).
const MAX_TEXT: usize = 1024;

/// Reads a CAP 1.2 document into the alert it publishes.
///
/// # Errors
/// [`CapError`] naming the element (path and line) and the rule.
pub fn import(doc: &[u8]) -> Result<pb::Alert, CapError> {
    let root = xml::parse(doc)?;
    let p = "alert";
    known(&root, p, ALERT)?;
    let identifier = root.required(p, "identifier")?;
    let sender = root.required(p, "sender")?;
    let mut extra = Extra::default();
    if vocab::id_of(sender, identifier) != identifier {
        extra.text("alert.identifier", "cap:identifier", identifier)?;
    }
    extra.text("alert.sender", "cap:sender", sender)?;
    let mut alert = pb::Alert {
        id: vocab::id_of(sender, identifier),
        sent: Some(time(&root, p, "sent")?),
        status: word(&root, p, "status", vocab::status_from_cap)? as i32,
        msg_type: word(&root, p, "msgType", vocab::msg_type_from_cap)? as i32,
        incident: root.text_of(p, "incidents")?.unwrap_or_default().to_owned(),
        references: references(&root)?,
        ..pb::Alert::default()
    };
    for name in ["source", "note"] {
        if let Some(t) = root.text_of(p, name)? {
            extra.text(&format!("alert.{name}"), &format!("cap:{name}"), t)?;
        }
    }
    let infos: Vec<&Element> = root.all("info").collect();
    let Some(first) = infos.first() else {
        return Err(CapError::at(
            "alert.info",
            root.line,
            "is required: Liaison needs one <info> (category, urgency, severity, certainty, headline)",
        ));
    };
    info(first, "alert.info[0]", &mut alert, &mut extra)?;
    for (i, other) in infos.iter().enumerate().skip(1) {
        translation(
            other,
            first,
            &format!("alert.info[{i}]"),
            &mut alert,
            &mut extra,
        )?;
    }
    alert.marking = Some(marking(&root, &mut alert, &mut extra)?);
    alert.parameters.extend(extra.params);
    Ok(alert)
}

/// CAP fields without a Liaison field of their own, kept as `cap:`
/// parameters (docs/cap.md), and the CAP parameters themselves.
#[derive(Default)]
struct Extra {
    params: Vec<pb::Parameter>,
}

impl Extra {
    /// Keeps `value` (white space folded) under `key`.
    fn text(&mut self, path: &str, key: &str, value: &str) -> Result<(), CapError> {
        let folded = value.split_whitespace().collect::<Vec<_>>().join(" ");
        if folded.len() > MAX_TEXT {
            return Err(CapError::new(
                path,
                format!(
                    "is {} bytes long; Liaison keeps it as a parameter of at most {MAX_TEXT} bytes",
                    folded.len()
                ),
            ));
        }
        if folded.is_empty() {
            return Ok(());
        }
        self.push(path, key, pb::parameter::Value::Text(folded), String::new())
    }

    fn push(
        &mut self,
        path: &str,
        key: &str,
        value: pb::parameter::Value,
        unit: String,
    ) -> Result<(), CapError> {
        if self.params.iter().any(|p| p.key == key) {
            return Err(CapError::new(path, format!("\"{key}\" is given twice")));
        }
        self.params.push(pb::Parameter {
            key: key.to_owned(),
            value: Some(value),
            unit,
        });
        Ok(())
    }
}

/// Refuses elements CAP 1.2 does not have at this place (a typo would
/// otherwise drop information silently).
fn known(e: &Element, path: &str, allowed: &[&str]) -> Result<(), CapError> {
    match e
        .children
        .iter()
        .find(|c| !allowed.contains(&c.name.as_str()))
    {
        Some(c) => Err(CapError::at(
            format!("{path}.{}", c.name),
            c.line,
            "is not a CAP 1.2 element here",
        )),
        None => Ok(()),
    }
}

fn word<T>(
    e: &Element,
    path: &str,
    name: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, CapError> {
    let text = e.required(path, name)?;
    parse(text).map_err(|reason| CapError::at(format!("{path}.{name}"), line_of(e, name), reason))
}

fn time(e: &Element, path: &str, name: &str) -> Result<prost_types::Timestamp, CapError> {
    word(e, path, name, vocab::time_from_cap)
}

fn line_of(e: &Element, name: &str) -> usize {
    e.all(name).next().map_or(e.line, |c| c.line)
}

/// `sender,identifier,sent` triples, separated by white space: the ids of
/// the alerts they name.
fn references(root: &Element) -> Result<Vec<String>, CapError> {
    let Some(text) = root.text_of("alert", "references")? else {
        return Ok(Vec::new());
    };
    text.split_whitespace()
        .map(
            |triple| match triple.split(',').collect::<Vec<_>>().as_slice() {
                [sender, identifier, _sent] => Ok(vocab::id_of(sender, identifier)),
                _ => Err(CapError::at(
                    "alert.references",
                    line_of(root, "references"),
                    format!("\"{triple}\" is not sender,identifier,sent"),
                )),
            },
        )
        .collect()
}

/// The first `<info>`: the alert's content.
fn info(e: &Element, p: &str, alert: &mut pb::Alert, extra: &mut Extra) -> Result<(), CapError> {
    known(e, p, INFO)?;
    let categories = categories(e, p)?;
    alert.urgency = word(e, p, "urgency", vocab::urgency_from_cap)? as i32;
    alert.severity = word(e, p, "severity", vocab::severity_from_cap)? as i32;
    alert.certainty = word(e, p, "certainty", vocab::certainty_from_cap)? as i32;
    alert.language = e.text_of(p, "language")?.unwrap_or_default().to_owned();
    let event = e.required(p, "event")?;
    alert.headline = headline(e, p, event)?;
    alert.description = e.text_of(p, "description")?.unwrap_or_default().to_owned();
    alert.instruction = e.text_of(p, "instruction")?.unwrap_or_default().to_owned();
    if e.one(p, "expires")?.is_some() {
        alert.expires = Some(time(e, p, "expires")?);
    }
    let mut category = None;
    for (i, code) in e.all("eventCode").enumerate() {
        let here = format!("{p}.eventCode[{i}]");
        let (name, value) = pair(code, &here)?;
        if name == "liaison:category" {
            category = Some(vocab::category_by_name(value).ok_or_else(|| {
                CapError::at(
                    format!("{here}.value"),
                    code.line,
                    format!("\"{value}\" is not a Liaison category"),
                )
            })?);
        } else {
            joined(extra, &here, &format!("cap:eventCode:{name}"), value)?;
        }
    }
    let category = category.unwrap_or_else(|| vocab::category_from_cap(&categories));
    alert.category = category as i32;
    let (cap_category, cap_event) = vocab::category_to_cap(category as i32);
    if categories != [cap_category] {
        extra.text(
            &format!("{p}.category"),
            "cap:category",
            &categories.join(" "),
        )?;
    }
    if event != cap_event {
        extra.text(&format!("{p}.event"), "cap:event", event)?;
    }
    let responses: Vec<&str> = e.all("responseType").map(|r| r.text.trim()).collect();
    for (i, r) in responses.iter().enumerate() {
        if !vocab::RESPONSE_TYPES.contains(r) {
            return Err(CapError::new(
                format!("{p}.responseType[{i}]"),
                format!(
                    "must be one of {} (found \"{r}\")",
                    vocab::RESPONSE_TYPES.join(", ")
                ),
            ));
        }
    }
    extra.text(
        &format!("{p}.responseType"),
        "cap:responseType",
        &responses.join(" "),
    )?;
    for name in ["audience", "senderName", "web", "contact"] {
        if let Some(t) = e.text_of(p, name)? {
            extra.text(&format!("{p}.{name}"), &format!("cap:{name}"), t)?;
        }
    }
    for name in ["effective", "onset"] {
        if e.one(p, name)?.is_some() {
            let t = time(e, p, name)?;
            extra.text(
                &format!("{p}.{name}"),
                &format!("cap:{name}"),
                &vocab::time_to_cap(&t),
            )?;
        }
    }
    for (i, param) in e.all("parameter").enumerate() {
        parameter(param, &format!("{p}.parameter[{i}]"), extra)?;
    }
    for (i, r) in e.all("resource").enumerate() {
        resource(r, &format!("{p}.resource[{i}]"), i, alert, extra)?;
    }
    alert.area = area(e, p, extra)?;
    Ok(())
}

/// CAP's headline is optional, Liaison's is not: the event stands in.
fn headline(e: &Element, p: &str, event: &str) -> Result<String, CapError> {
    Ok(e.text_of(p, "headline")?
        .filter(|h| !h.is_empty())
        .unwrap_or(event)
        .to_owned())
}

fn categories<'a>(e: &'a Element, p: &str) -> Result<Vec<&'a str>, CapError> {
    let categories: Vec<&str> = e.all("category").map(|c| c.text.trim()).collect();
    if categories.is_empty() {
        return Err(CapError::at(format!("{p}.category"), e.line, "is required"));
    }
    for (i, c) in categories.iter().enumerate() {
        if !vocab::CAP_CATEGORIES.contains(c) {
            return Err(CapError::new(
                format!("{p}.category[{i}]"),
                format!(
                    "must be one of {} (found \"{c}\")",
                    vocab::CAP_CATEGORIES.join(", ")
                ),
            ));
        }
    }
    Ok(categories)
}

/// A further `<info>`: the same alert in another language. Its assessment
/// must be the first one's; its text becomes a translation (its event, when
/// translated too, a `cap:event:LANGUAGE` parameter).
fn translation(
    e: &Element,
    first: &Element,
    p: &str,
    alert: &mut pb::Alert,
    extra: &mut Extra,
) -> Result<(), CapError> {
    known(e, p, INFO)?;
    for name in ["urgency", "severity", "certainty"] {
        if e.required(p, name)? != first.required("alert.info[0]", name)? {
            return Err(CapError::at(
                format!("{p}.{name}"),
                line_of(e, name),
                "differs from alert.info[0]: Liaison carries one assessment per alert, and reads further <info> blocks as translations",
            ));
        }
    }
    if categories(e, p)? != categories(first, "alert.info[0]")? {
        return Err(CapError::at(
            format!("{p}.category"),
            line_of(e, "category"),
            "differs from alert.info[0]: further <info> blocks are read as translations",
        ));
    }
    if alert.language.is_empty() {
        // CAP's default language, named now that there are others.
        alert.language = "en-US".into();
    }
    let language = e.text_of(p, "language")?.unwrap_or("en-US");
    let taken = std::iter::once(alert.language.as_str())
        .chain(alert.translations.iter().map(|t| t.language.as_str()))
        .any(|l| l.eq_ignore_ascii_case(language));
    if taken {
        return Err(CapError::at(
            format!("{p}.language"),
            line_of(e, "language"),
            format!("\"{language}\" is the language of an earlier <info>"),
        ));
    }
    let event = e.required(p, "event")?;
    let main_event = first.required("alert.info[0]", "event")?;
    if event != main_event {
        extra.text(
            &format!("{p}.event"),
            &format!("cap:event:{language}"),
            event,
        )?;
    }
    alert.translations.push(pb::Translation {
        language: language.to_owned(),
        headline: headline(e, p, event)?,
        description: e.text_of(p, "description")?.unwrap_or_default().to_owned(),
        instruction: e.text_of(p, "instruction")?.unwrap_or_default().to_owned(),
    });
    Ok(())
}

/// A `valueName`/`value` pair.
fn pair<'a>(e: &'a Element, p: &str) -> Result<(&'a str, &'a str), CapError> {
    known(e, p, PAIR)?;
    Ok((
        e.required(p, "valueName")?,
        e.text_of(p, "value")?.unwrap_or_default(),
    ))
}

/// Keeps repeated values of one name joined by a space.
fn joined(extra: &mut Extra, path: &str, key: &str, value: &str) -> Result<(), CapError> {
    match extra.params.iter_mut().find(|p| p.key == key) {
        Some(pb::Parameter {
            value: Some(pb::parameter::Value::Text(t)),
            ..
        }) => {
            t.push(' ');
            t.push_str(value);
            if t.len() > MAX_TEXT {
                return Err(CapError::new(
                    path,
                    format!("the values of \"{key}\" exceed {MAX_TEXT} bytes"),
                ));
            }
            Ok(())
        }
        _ => extra.text(path, key, value),
    }
}

/// A CAP parameter: its valueName is the key, its value typed when it is
/// exactly how Liaison writes an integer, a number or a flag (with a unit
/// after a space), text otherwise; a `liaison:` parameter of an exported
/// alert is the exporting broker's, and is left out.
fn parameter(e: &Element, p: &str, extra: &mut Extra) -> Result<(), CapError> {
    let (name, value) = pair(e, p)?;
    if name.starts_with(LIAISON_PREFIX) {
        return Ok(());
    }
    let key_ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if !key_ok {
        return Err(CapError::at(
            format!("{p}.valueName"),
            e.line,
            format!(
                "\"{name}\" is not a Liaison parameter key ([A-Za-z0-9_.:-], 1 to 64 characters)"
            ),
        ));
    }
    let (typed, unit) = typed(value);
    match typed {
        pb::parameter::Value::Text(t) => extra.text(&format!("{p}.value"), name, &t),
        v => extra.push(p, name, v, unit),
    }
}

/// `value` typed as Liaison would have written it (see [`super::value_text`]).
pub(super) fn typed(value: &str) -> (pb::parameter::Value, String) {
    use pb::parameter::Value as V;
    let (number, unit) = match value.split_once(' ') {
        Some((n, u)) if !u.is_empty() && u.len() <= 32 && !u.contains(char::is_whitespace) => {
            (n, u)
        }
        _ => (value, ""),
    };
    if let Ok(i) = number.parse::<i64>()
        && i.to_string() == number
    {
        return (V::Integer(i), unit.to_owned());
    }
    if let Ok(f) = number.parse::<f64>()
        && f.is_finite()
        && format!("{f:?}") == number
    {
        return (V::Number(f), unit.to_owned());
    }
    match value {
        "true" => (V::Flag(true), String::new()),
        "false" => (V::Flag(false), String::new()),
        _ => (V::Text(value.to_owned()), String::new()),
    }
}

/// A resource with its content (`derefUri`) is an attachment; one that only
/// points somewhere (`uri`) is kept as a `cap:resource.N` parameter — its
/// address is never fetched.
fn resource(
    e: &Element,
    p: &str,
    index: usize,
    alert: &mut pb::Alert,
    extra: &mut Extra,
) -> Result<(), CapError> {
    known(e, p, RESOURCE)?;
    let desc = e.required(p, "resourceDesc")?;
    let mime = e.required(p, "mimeType")?;
    let uri = e.text_of(p, "uri")?;
    let Some(encoded) = e.text_of(p, "derefUri")? else {
        let uri = uri.filter(|u| !u.is_empty()).ok_or_else(|| {
            CapError::at(
                p,
                e.line,
                "has neither uri nor derefUri: there is nothing to keep",
            )
        })?;
        return extra.text(
            p,
            &format!("cap:resource.{index}"),
            &format!("{mime} {uri} {desc}"),
        );
    };
    let compact: String = encoded.split_whitespace().collect();
    let content = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|err| {
            CapError::at(
                format!("{p}.derefUri"),
                line_of(e, "derefUri"),
                format!("is not base64: {err}"),
            )
        })?;
    if let Some(size) = e.text_of(p, "size")?
        && size.parse::<usize>().ok() != Some(content.len())
    {
        return Err(CapError::at(
            format!("{p}.size"),
            line_of(e, "size"),
            format!("says {size} bytes; derefUri holds {}", content.len()),
        ));
    }
    if let Some(digest) = e.text_of(p, "digest")? {
        let sha1 = super::hex(&sha1::Sha1::digest(&content));
        if !digest.eq_ignore_ascii_case(&sha1) {
            return Err(CapError::at(
                format!("{p}.digest"),
                line_of(e, "digest"),
                "does not match the content (SHA-1 of derefUri)",
            ));
        }
    }
    let filename = uri
        .and_then(|u| u.rsplit('/').next())
        .map(percent_decode)
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| desc.replace(['/', '\\'], "-"));
    alert.attachments.push(pb::Attachment {
        sha256: sha2::Sha256::digest(&content).to_vec(),
        description: if desc == filename {
            String::new()
        } else {
            desc.to_owned()
        },
        filename,
        mime_type: mime.to_owned(),
        content: content.into(),
    });
    Ok(())
}

pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every `<area>` of the info into Liaison's one area: descriptions joined,
/// polygons and circles together, the crossing point and border sector
/// from Liaison's geocodes, other geocodes kept as parameters.
fn area(e: &Element, p: &str, extra: &mut Extra) -> Result<Option<pb::Area>, CapError> {
    let areas: Vec<&Element> = e.all("area").collect();
    if areas.is_empty() {
        return Ok(None);
    }
    let mut out = pb::Area::default();
    let mut descriptions = Vec::new();
    for (i, a) in areas.iter().enumerate() {
        let p = format!("{p}.area[{i}]");
        known(a, &p, AREA)?;
        descriptions.push(a.required(&p, "areaDesc")?);
        for (j, poly) in a.all("polygon").enumerate() {
            out.polygons.push(polygon(
                &poly.text,
                &format!("{p}.polygon[{j}]"),
                poly.line,
            )?);
        }
        for (j, c) in a.all("circle").enumerate() {
            out.circles
                .push(circle(&c.text, &format!("{p}.circle[{j}]"), c.line)?);
        }
        for (j, g) in a.all("geocode").enumerate() {
            let here = format!("{p}.geocode[{j}]");
            let (name, value) = pair(g, &here)?;
            let field = match name {
                Geocode::CROSSING_POINT => Some(&mut out.crossing_point),
                Geocode::BORDER_SECTOR => Some(&mut out.border_sector),
                _ => None,
            };
            match field {
                Some(f) if f.is_empty() || f == value => *f = value.to_owned(),
                Some(_) => {
                    return Err(CapError::at(
                        here,
                        g.line,
                        format!("a second {name}: a Liaison alert has one"),
                    ));
                }
                None => joined(extra, &here, &format!("cap:geocode:{name}"), value)?,
            }
        }
        if i == 0 {
            for name in ["altitude", "ceiling"] {
                if let Some(t) = a.text_of(&p, name)? {
                    extra.text(&format!("{p}.{name}"), &format!("cap:{name}"), t)?;
                }
            }
        }
    }
    out.description = descriptions.join("; ");
    Ok(Some(out))
}

fn point(pair: &str, p: &str, line: usize) -> Result<pb::Point, CapError> {
    let bad = || {
        CapError::at(
            p,
            line,
            format!("\"{pair}\" is not latitude,longitude (WGS84 degrees)"),
        )
    };
    let (lat, lon) = pair.split_once(',').ok_or_else(bad)?;
    Ok(pb::Point {
        latitude: lat.trim().parse().map_err(|_| bad())?,
        longitude: lon.trim().parse().map_err(|_| bad())?,
    })
}

fn polygon(text: &str, p: &str, line: usize) -> Result<pb::Polygon, CapError> {
    let points = text
        .split_whitespace()
        .map(|pair| point(pair, p, line))
        .collect::<Result<Vec<_>, _>>()?;
    if points.len() < 4 || points.first() != points.last() {
        return Err(CapError::at(
            p,
            line,
            "a CAP polygon is at least four latitude,longitude pairs, the first equal to the last",
        ));
    }
    Ok(pb::Polygon { points })
}

fn circle(text: &str, p: &str, line: usize) -> Result<pb::Circle, CapError> {
    let bad = || {
        CapError::at(
            p,
            line,
            "a CAP circle is \"latitude,longitude radius\" (radius in km)",
        )
    };
    let (centre, radius) = text
        .trim()
        .split_once(char::is_whitespace)
        .ok_or_else(bad)?;
    Ok(pb::Circle {
        center: Some(point(centre, p, line)?),
        radius_km: radius.trim().parse().map_err(|_| bad())?,
    })
}

/// The markings: TLP from a `TLP:` code, else from the scope (Public →
/// CLEAR, Restricted → AMBER, Private → RED to the addresses); Liaison's
/// own codes for releasability, handling and the source evaluation; other
/// codes, addresses and a restriction of its own kept as parameters.
fn marking(
    root: &Element,
    alert: &mut pb::Alert,
    extra: &mut Extra,
) -> Result<pb::Marking, CapError> {
    let p = "alert";
    let scope = root.required(p, "scope")?;
    let from_scope = match scope {
        "Public" => pb::Tlp::Clear,
        "Restricted" => pb::Tlp::Amber,
        "Private" => pb::Tlp::Red,
        other => {
            return Err(CapError::at(
                "alert.scope",
                line_of(root, "scope"),
                format!("must be one of Public, Restricted, Private (found \"{other}\")"),
            ));
        }
    };
    let mut m = pb::Marking::default();
    let mut tlp = None;
    let mut source = pb::SourceEvaluation::default();
    let mut others = 0;
    for (i, c) in root.all("code").enumerate() {
        let here = format!("alert.code[{i}]");
        let code = c.text.trim();
        if let Some(t) = vocab::tlp_from_code(code) {
            if tlp.is_some_and(|old| old != t) {
                return Err(CapError::at(here, c.line, "a second, different TLP level"));
            }
            tlp = Some(t);
        } else if let Some(to) = code.strip_prefix("liaison:releasable-to=") {
            m.releasable_to.push(to.to_owned());
        } else if let Some(h) = code.strip_prefix("liaison:handling=") {
            m.handling_codes.push(h.to_owned());
        } else if let Some(r) = code.strip_prefix("liaison:source-reliability=") {
            source.reliability =
                pb::SourceReliability::from_str_name(&format!("SOURCE_RELIABILITY_{r}"))
                    .ok_or_else(|| {
                        CapError::at(&here, c.line, "source reliability is A, B, C or X")
                    })? as i32;
        } else if let Some(a) = code.strip_prefix("liaison:information-accuracy=") {
            source.accuracy =
                pb::InformationAccuracy::from_str_name(&format!("INFORMATION_ACCURACY_{a}"))
                    .ok_or_else(|| {
                        CapError::at(&here, c.line, "information accuracy is 1, 2, 3 or 4")
                    })? as i32;
        } else {
            extra.text(&here, &format!("cap:code.{others}"), code)?;
            others += 1;
        }
    }
    m.tlp = tlp.unwrap_or(from_scope) as i32;
    let addresses = root.text_of(p, "addresses")?.unwrap_or_default();
    if m.tlp == pb::Tlp::Red as i32 {
        m.recipients = addressed(addresses);
    } else {
        extra.text("alert.addresses", "cap:addresses", addresses)?;
    }
    if let Some(r) = root.text_of(p, "restriction")?
        && r != restriction_text(&m)
    {
        extra.text("alert.restriction", "cap:restriction", r)?;
    }
    if source != pb::SourceEvaluation::default() {
        alert.source = Some(source);
    }
    Ok(m)
}

/// CAP addresses: separated by white space, those with spaces quoted.
fn addressed(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            out.push(quoted[..end].to_owned());
            rest = quoted.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            out.push(rest[..end].to_owned());
            rest = rest[end..].trim_start();
        }
    }
    out
}
