//! A Liaison alert record as a CAP 1.2 `<alert>` (docs/cap.md), elements
//! in the order the OASIS schema requires; every document validates
//! against it (tests/cap.rs checks with xmllint).

use base64::Engine;
use sha1::Digest;

use super::vocab::{self, CAP_PREFIX};
use super::xml::escape;
use super::{CapError, Geocode, restriction_text};
use crate::proto as pb;

/// How the document is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Indented, one element a line.
    Pretty,
    /// The whole document on one line (line breaks in text written as
    /// character references): one document per line of output.
    OneLine,
}

/// Writes `record` as CAP 1.2. `referenced` finds an alert this one
/// updates or cancels, for the sender and sent time its reference names;
/// one it cannot find is named with this alert's sender and sent time.
///
/// # Errors
/// When the record holds no alert.
pub fn export(
    record: &pb::AlertRecord,
    referenced: &dyn Fn(&str) -> Option<pb::AlertRecord>,
    layout: Layout,
) -> Result<String, CapError> {
    let a = record
        .alert
        .as_ref()
        .ok_or_else(|| CapError::new("record.alert", "is missing"))?;
    let cap = Cap::of(a);
    let mut w = Writer::new(layout);
    w.raw(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    w.open(&format!("alert xmlns=\"{}\"", super::xml::NS));
    w.leaf("identifier", &identifier(a));
    w.leaf("sender", &sender(a));
    w.leaf(
        "sent",
        &a.sent.as_ref().map(vocab::time_to_cap).unwrap_or_default(),
    );
    w.leaf("status", vocab::status_to_cap(a.status));
    w.leaf("msgType", vocab::msg_type_to_cap(a.msg_type));
    w.maybe("source", cap.get("source"));
    let m = a.marking.clone().unwrap_or_default();
    w.leaf("scope", vocab::scope(m.tlp));
    if m.tlp != pb::Tlp::Red as i32 && m.tlp != pb::Tlp::Clear as i32 {
        w.leaf(
            "restriction",
            cap.get("restriction").unwrap_or(&restriction_text(&m)),
        );
    }
    if m.tlp == pb::Tlp::Red as i32 {
        w.maybe("addresses", Some(&m.recipients.join(" ")));
    } else {
        w.maybe("addresses", cap.get("addresses"));
    }
    for code in codes(a, &m, &cap) {
        w.leaf("code", &code);
    }
    w.maybe("note", cap.get("note"));
    let references: Vec<String> = a
        .references
        .iter()
        .map(|id| reference(a, id, referenced))
        .collect();
    w.maybe("references", Some(&references.join(" ")));
    w.maybe("incidents", Some(&a.incident));
    info(&mut w, record, a, &cap, None);
    for t in &a.translations {
        info(&mut w, record, a, &cap, Some(t));
    }
    w.close("alert");
    Ok(w.out)
}

/// The alert's `cap:` parameters: CAP elements without a Liaison field.
struct Cap<'a> {
    params: Vec<(&'a str, String)>,
}

impl<'a> Cap<'a> {
    fn of(a: &'a pb::Alert) -> Cap<'a> {
        Cap {
            params: a
                .parameters
                .iter()
                .filter_map(|p| {
                    let name = p.key.strip_prefix(CAP_PREFIX)?;
                    Some((name, super::value_text(p)))
                })
                .collect(),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `(suffix, value)` of every parameter named `prefix` + something.
    fn with_prefix<'b>(&'b self, prefix: &'b str) -> impl Iterator<Item = (&'b str, &'b str)> + 'b {
        self.params
            .iter()
            .filter_map(move |(n, v)| Some((n.strip_prefix(prefix)?, v.as_str())))
    }
}

fn identifier(a: &pb::Alert) -> String {
    Cap::of(a)
        .get("identifier")
        .map_or_else(|| a.id.clone(), str::to_owned)
}

fn sender(a: &pb::Alert) -> String {
    Cap::of(a)
        .get("sender")
        .map(str::to_owned)
        .or_else(|| a.origin.as_ref().map(|o| o.urn.clone()))
        .unwrap_or_default()
}

/// `sender,identifier,sent` of the alert `id`.
fn reference(
    a: &pb::Alert,
    id: &str,
    referenced: &dyn Fn(&str) -> Option<pb::AlertRecord>,
) -> String {
    let found = referenced(id).and_then(|r| r.alert);
    let earlier = found.as_ref().unwrap_or(a);
    let identifier = match &found {
        Some(f) => identifier(f),
        None => id.to_owned(),
    };
    let sent = earlier
        .sent
        .as_ref()
        .map(vocab::time_to_cap)
        .unwrap_or_default();
    format!("{},{identifier},{sent}", sender(earlier))
}

/// TLP first, then Liaison's own codes, then the alert's other CAP codes.
fn codes(a: &pb::Alert, m: &pb::Marking, cap: &Cap<'_>) -> Vec<String> {
    let mut out = vec![vocab::tlp_code(m.tlp).to_owned()];
    out.extend(
        m.releasable_to
            .iter()
            .map(|r| format!("liaison:releasable-to={r}")),
    );
    out.extend(
        m.handling_codes
            .iter()
            .map(|h| format!("liaison:handling={h}")),
    );
    if let Some(s) = &a.source {
        let name = |full: &str, prefix: &str| full.trim_start_matches(prefix).to_owned();
        if let Ok(r) = pb::SourceReliability::try_from(s.reliability)
            && r != pb::SourceReliability::Unspecified
        {
            out.push(format!(
                "liaison:source-reliability={}",
                name(r.as_str_name(), "SOURCE_RELIABILITY_")
            ));
        }
        if let Ok(x) = pb::InformationAccuracy::try_from(s.accuracy)
            && x != pb::InformationAccuracy::Unspecified
        {
            out.push(format!(
                "liaison:information-accuracy={}",
                name(x.as_str_name(), "INFORMATION_ACCURACY_")
            ));
        }
    }
    let mut others: Vec<(usize, &str)> = cap
        .with_prefix("code.")
        .filter_map(|(n, v)| Some((n.parse().ok()?, v)))
        .collect();
    others.sort();
    out.extend(others.into_iter().map(|(_, v)| v.to_owned()));
    out
}

/// One `<info>`: the alert's own text, or a translation's.
fn info(
    w: &mut Writer,
    record: &pb::AlertRecord,
    a: &pb::Alert,
    cap: &Cap<'_>,
    translation: Option<&pb::Translation>,
) {
    let (language, headline, description, instruction) = match translation {
        Some(t) => (&t.language, &t.headline, &t.description, &t.instruction),
        None => (&a.language, &a.headline, &a.description, &a.instruction),
    };
    w.open("info");
    w.maybe("language", Some(language));
    let (category, event) = vocab::category_to_cap(a.category);
    for c in cap.get("category").unwrap_or(category).split_whitespace() {
        w.leaf("category", c);
    }
    let translated = translation.and_then(|t| cap.get(&format!("event:{}", t.language)));
    w.leaf("event", translated.or(cap.get("event")).unwrap_or(event));
    for r in cap
        .get("responseType")
        .unwrap_or_default()
        .split_whitespace()
    {
        w.leaf("responseType", r);
    }
    w.leaf("urgency", vocab::urgency_to_cap(a.urgency));
    w.leaf("severity", vocab::severity_to_cap(a.severity));
    w.leaf("certainty", vocab::certainty_to_cap(a.certainty));
    w.maybe("audience", cap.get("audience"));
    w.pair(
        "eventCode",
        "liaison:category",
        &vocab::category_name(a.category),
    );
    for (name, value) in cap.with_prefix("eventCode:") {
        for v in value.split_whitespace() {
            w.pair("eventCode", name, v);
        }
    }
    for name in ["effective", "onset"] {
        let time = cap.get(name).and_then(|t| vocab::time_from_cap(t).ok());
        w.maybe(name, time.as_ref().map(vocab::time_to_cap).as_deref());
    }
    w.maybe(
        "expires",
        a.expires.as_ref().map(vocab::time_to_cap).as_deref(),
    );
    w.maybe("senderName", cap.get("senderName"));
    w.leaf("headline", headline);
    w.maybe("description", Some(description));
    w.maybe("instruction", Some(instruction));
    w.maybe("web", cap.get("web"));
    w.maybe("contact", cap.get("contact"));
    for p in &a.parameters {
        if !p.key.starts_with(CAP_PREFIX) {
            w.pair("parameter", &p.key, &super::value_text(p));
        }
    }
    if let Some(o) = &a.origin {
        w.pair("parameter", "liaison:origin", &o.urn);
    }
    if let Some(p) = &record.provenance {
        w.pair("parameter", "liaison:via", &p.path.join(" "));
    }
    for at in &a.attachments {
        attachment(w, at);
    }
    for (_, value) in cap.with_prefix("resource.") {
        // "mime uri description", as the import kept it.
        let mut parts = value.splitn(3, ' ');
        let (mime, uri, desc) = (parts.next(), parts.next(), parts.next());
        w.open("resource");
        w.leaf("resourceDesc", desc.unwrap_or("resource"));
        w.leaf("mimeType", mime.unwrap_or("application/octet-stream"));
        w.maybe("uri", uri);
        w.close("resource");
    }
    if let Some(area) = &a.area {
        self::area(w, area, cap);
    }
    w.close("info");
}

fn attachment(w: &mut Writer, at: &pb::Attachment) {
    w.open("resource");
    let desc = if at.description.is_empty() {
        &at.filename
    } else {
        &at.description
    };
    w.leaf("resourceDesc", desc);
    w.leaf("mimeType", &at.mime_type);
    w.leaf("size", &at.content.len().to_string());
    w.leaf("uri", &percent_encode(&at.filename));
    w.leaf(
        "derefUri",
        &base64::engine::general_purpose::STANDARD.encode(&at.content),
    );
    w.leaf("digest", &super::hex(&sha1::Sha1::digest(&at.content)));
    w.close("resource");
}

/// A file name as a relative URI reference.
fn percent_encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn area(w: &mut Writer, area: &pb::Area, cap: &Cap<'_>) {
    w.open("area");
    let desc = [&area.description, &area.crossing_point, &area.border_sector]
        .into_iter()
        .find(|d| !d.is_empty())
        .map_or("Area of the alert", String::as_str);
    w.leaf("areaDesc", desc);
    for poly in &area.polygons {
        let points: Vec<String> = poly.points.iter().map(point).collect();
        w.leaf("polygon", &points.join(" "));
    }
    for c in &area.circles {
        let centre = c.center.as_ref().map(point).unwrap_or_default();
        w.leaf("circle", &format!("{centre} {}", c.radius_km));
    }
    if !area.crossing_point.is_empty() {
        w.pair("geocode", Geocode::CROSSING_POINT, &area.crossing_point);
    }
    if !area.border_sector.is_empty() {
        w.pair("geocode", Geocode::BORDER_SECTOR, &area.border_sector);
    }
    for (name, value) in cap.with_prefix("geocode:") {
        for v in value.split_whitespace() {
            w.pair("geocode", name, v);
        }
    }
    for name in ["altitude", "ceiling"] {
        let decimal = cap
            .get(name)
            .filter(|v| v.parse::<f64>().is_ok_and(f64::is_finite));
        w.maybe(name, decimal);
    }
    w.close("area");
}

fn point(p: &pb::Point) -> String {
    format!("{},{}", p.latitude, p.longitude)
}

/// An XML writer of just what CAP needs.
struct Writer {
    out: String,
    depth: usize,
    layout: Layout,
}

impl Writer {
    fn new(layout: Layout) -> Writer {
        Writer {
            out: String::with_capacity(4096),
            depth: 0,
            layout,
        }
    }

    fn line(&mut self) {
        if self.layout == Layout::Pretty {
            if !self.out.is_empty() {
                self.out.push('\n');
            }
            self.out.push_str(&"  ".repeat(self.depth));
        }
    }

    fn raw(&mut self, s: &str) {
        self.line();
        self.out.push_str(s);
    }

    fn open(&mut self, tag: &str) {
        self.line();
        self.out.push('<');
        self.out.push_str(tag);
        self.out.push('>');
        self.depth += 1;
    }

    fn close(&mut self, name: &str) {
        self.depth -= 1;
        self.line();
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
    }

    fn leaf(&mut self, name: &str, text: &str) {
        self.line();
        let text = escape(text, self.layout == Layout::OneLine);
        self.out.push_str(&format!("<{name}>{text}</{name}>"));
    }

    /// A leaf written only when there is text.
    fn maybe(&mut self, name: &str, text: Option<&str>) {
        if let Some(t) = text.filter(|t| !t.is_empty()) {
            self.leaf(name, t);
        }
    }

    /// A `valueName`/`value` element (parameter, eventCode, geocode).
    fn pair(&mut self, name: &str, value_name: &str, value: &str) {
        self.open(name);
        self.leaf("valueName", value_name);
        self.leaf("value", value);
        self.close(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_name_is_a_relative_uri_and_comes_back() {
        let name = "photo 1 (front).jpg";
        let uri = percent_encode(name);
        assert_eq!(uri, "photo%201%20%28front%29.jpg");
        assert_eq!(super::super::import::percent_decode(&uri), name);
    }
}
