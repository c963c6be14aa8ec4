//! OASIS CAP 1.2 in and out (docs/cap.md): a CAP `<alert>` read into a
//! Liaison alert to publish ([`import`]), and a stored alert written as a
//! CAP document ([`export`]) that validates against the OASIS schema.
//!
//! | module | owns |
//! |---|---|
//! | `xml` | the bounded reader (no DTD, no entities but XML's own, size, depth and element limits) and escaping |
//! | `vocab` | the words both sides share or translate: enums, categories, TLP codes, times, identifiers |
//! | `import` | CAP → Liaison, errors naming the CAP element and line |
//! | `export` | Liaison → CAP, in the schema's element order |
//!
//! CAP fields without a Liaison field travel as parameters named `cap:…`
//! (so they come back out as the CAP elements they were); what Liaison adds
//! that CAP has no element for goes to `code` (markings), `eventCode`
//! (category), `geocode` (crossing point, border sector) and `parameter`
//! (origin, path), all named `liaison:…`.

mod export;
mod import;
mod vocab;
mod xml;

pub use export::{Layout, export};
pub use import::import;
pub use xml::{MAX_BYTES, NS};

use crate::proto as pb;

/// Why a CAP document is refused: the element (a path such as
/// `alert.info[0].severity`), its line when known, and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CAP {path}{}: {reason}", line.map_or(String::new(), |l| format!(" (line {l})")))]
pub struct CapError {
    pub path: String,
    pub line: Option<usize>,
    pub reason: String,
}

impl CapError {
    fn new(path: impl Into<String>, reason: impl Into<String>) -> CapError {
        CapError {
            path: path.into(),
            line: None,
            reason: reason.into(),
        }
    }

    fn at(path: impl Into<String>, line: usize, reason: impl Into<String>) -> CapError {
        CapError {
            path: path.into(),
            line: Some(line),
            reason: reason.into(),
        }
    }

    fn document(reason: impl Into<String>) -> CapError {
        CapError::new("document", reason)
    }
}

/// Liaison's geocodes.
struct Geocode;

impl Geocode {
    const CROSSING_POINT: &'static str = "liaison:crossing-point";
    const BORDER_SECTOR: &'static str = "liaison:border-sector";
}

/// The `restriction` text of a marking: who may see the alert, in words.
pub fn restriction_text(m: &pb::Marking) -> String {
    let to = |list: &[String]| {
        if list.is_empty() {
            String::new()
        } else {
            format!(" and {}", list.join(", "))
        }
    };
    match pb::Tlp::try_from(m.tlp) {
        Ok(pb::Tlp::Clear) => "TLP:CLEAR: disclosure is not limited".into(),
        Ok(pb::Tlp::Green) => "TLP:GREEN: the sharing community, not the public".into(),
        Ok(pb::Tlp::AmberStrict) => "TLP:AMBER+STRICT: the originating agency only".into(),
        Ok(pb::Tlp::Red) => format!("TLP:RED: the named recipients only{}", to(&m.recipients)),
        _ => format!(
            "TLP:AMBER: the originating agency{}, on a need-to-know basis",
            to(&m.releasable_to)
        ),
    }
}

/// A parameter's value as CAP text: integers and numbers as Rust writes
/// them (a number always with a point or exponent), a unit after a space.
pub fn value_text(p: &pb::Parameter) -> String {
    use pb::parameter::Value as V;
    let v = match &p.value {
        Some(V::Text(t)) => return t.clone(),
        Some(V::Integer(i)) => i.to_string(),
        Some(V::Number(n)) => format!("{n:?}"),
        Some(V::Flag(f)) => f.to_string(),
        None => String::new(),
    };
    if p.unit.is_empty() {
        v
    } else {
        format!("{v} {}", p.unit)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
