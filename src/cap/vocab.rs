//! The words CAP 1.2 and Liaison share or translate: status, message type,
//! categories and events, urgency, severity, certainty, TLP codes, times
//! and identifiers (docs/cap.md has the whole mapping).

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::proto as pb;

/// Parameter keys that carry a CAP element without a Liaison field.
pub const CAP_PREFIX: &str = "cap:";
/// Parameter, event-code, geocode and code names of Liaison's own mapping.
pub const LIAISON_PREFIX: &str = "liaison:";

pub fn status_to_cap(s: i32) -> &'static str {
    match pb::Status::try_from(s) {
        Ok(pb::Status::Exercise) => "Exercise",
        Ok(pb::Status::Test) => "Test",
        _ => "Actual",
    }
}

pub fn status_from_cap(s: &str) -> Result<pb::Status, String> {
    match s {
        "Actual" => Ok(pb::Status::Actual),
        "Exercise" => Ok(pb::Status::Exercise),
        "Test" => Ok(pb::Status::Test),
        "System" | "Draft" => Err(format!(
            "\"{s}\" messages are not shared between agencies (Liaison carries Actual, Exercise and Test)"
        )),
        _ => Err(one_of("Actual, Exercise, Test", s)),
    }
}

pub fn msg_type_to_cap(m: i32) -> &'static str {
    match pb::MsgType::try_from(m) {
        Ok(pb::MsgType::Update) => "Update",
        Ok(pb::MsgType::Cancel) => "Cancel",
        _ => "Alert",
    }
}

pub fn msg_type_from_cap(s: &str) -> Result<pb::MsgType, String> {
    match s {
        "Alert" => Ok(pb::MsgType::Alert),
        "Update" => Ok(pb::MsgType::Update),
        "Cancel" => Ok(pb::MsgType::Cancel),
        "Ack" | "Error" => Err(format!(
            "\"{s}\" is a reply to a CAP exchange; Liaison acknowledges with receipts (liaison ack)"
        )),
        _ => Err(one_of("Alert, Update, Cancel", s)),
    }
}

/// CAP's twelve categories.
pub const CAP_CATEGORIES: [&str; 12] = [
    "Geo",
    "Met",
    "Safety",
    "Security",
    "Rescue",
    "Fire",
    "Health",
    "Env",
    "Transport",
    "Infra",
    "CBRNE",
    "Other",
];

/// The CAP category and event text of a Liaison category.
pub fn category_to_cap(c: i32) -> (&'static str, &'static str) {
    use pb::Category as C;
    match C::try_from(c).unwrap_or(C::Other) {
        C::Drugs => ("Security", "Drug trafficking"),
        C::Arms => ("Security", "Arms trafficking"),
        C::Cbrn => ("CBRNE", "CBRN material"),
        C::Terrorism => ("Security", "Terrorism"),
        C::HumanSmuggling => ("Security", "Human smuggling and trafficking"),
        C::Migration => ("Safety", "Irregular migration"),
        C::DocumentFraud => ("Security", "Document fraud"),
        C::Health => ("Health", "Public-health border measure"),
        C::Other | C::Unspecified => ("Other", "Border incident"),
    }
}

/// The Liaison category of CAP categories when no `liaison:category` event
/// code names it: CBRNE and Health have their own, the rest is OTHER.
pub fn category_from_cap(categories: &[&str]) -> pb::Category {
    if categories.contains(&"CBRNE") {
        pb::Category::Cbrn
    } else if categories.contains(&"Health") {
        pb::Category::Health
    } else {
        pb::Category::Other
    }
}

/// A Liaison category by its name ("drugs", "DRUGS", "CATEGORY_DRUGS").
pub fn category_by_name(s: &str) -> Option<pb::Category> {
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("CATEGORY_").unwrap_or(&upper);
    pb::Category::from_str_name(&format!("CATEGORY_{name}"))
        .filter(|c| *c != pb::Category::Unspecified)
}

pub fn category_name(c: i32) -> String {
    pb::Category::try_from(c)
        .unwrap_or(pb::Category::Other)
        .as_str_name()
        .trim_start_matches("CATEGORY_")
        .to_ascii_lowercase()
}

pub fn urgency_to_cap(u: i32) -> &'static str {
    use pb::Urgency as U;
    match U::try_from(u).unwrap_or(U::Unknown) {
        U::Immediate => "Immediate",
        U::Expected => "Expected",
        U::Future => "Future",
        U::Past => "Past",
        U::Unknown | U::Unspecified => "Unknown",
    }
}

pub fn urgency_from_cap(s: &str) -> Result<pb::Urgency, String> {
    use pb::Urgency as U;
    Ok(match s {
        "Immediate" => U::Immediate,
        "Expected" => U::Expected,
        "Future" => U::Future,
        "Past" => U::Past,
        "Unknown" => U::Unknown,
        _ => return Err(one_of("Immediate, Expected, Future, Past, Unknown", s)),
    })
}

pub fn severity_to_cap(v: i32) -> &'static str {
    use pb::Severity as S;
    match S::try_from(v).unwrap_or(S::Unknown) {
        S::Extreme => "Extreme",
        S::Severe => "Severe",
        S::Moderate => "Moderate",
        S::Minor => "Minor",
        S::Unknown | S::Unspecified => "Unknown",
    }
}

pub fn severity_from_cap(s: &str) -> Result<pb::Severity, String> {
    use pb::Severity as S;
    Ok(match s {
        "Extreme" => S::Extreme,
        "Severe" => S::Severe,
        "Moderate" => S::Moderate,
        "Minor" => S::Minor,
        "Unknown" => S::Unknown,
        _ => return Err(one_of("Extreme, Severe, Moderate, Minor, Unknown", s)),
    })
}

pub fn certainty_to_cap(v: i32) -> &'static str {
    use pb::Certainty as C;
    match C::try_from(v).unwrap_or(C::Unknown) {
        C::Observed => "Observed",
        C::Likely => "Likely",
        C::Possible => "Possible",
        C::Unlikely => "Unlikely",
        C::Unknown | C::Unspecified => "Unknown",
    }
}

pub fn certainty_from_cap(s: &str) -> Result<pb::Certainty, String> {
    use pb::Certainty as C;
    Ok(match s {
        "Observed" => C::Observed,
        "Likely" => C::Likely,
        "Possible" => C::Possible,
        "Unlikely" => C::Unlikely,
        "Unknown" => C::Unknown,
        _ => return Err(one_of("Observed, Likely, Possible, Unlikely, Unknown", s)),
    })
}

/// CAP 1.2's response types.
pub const RESPONSE_TYPES: [&str; 9] = [
    "Shelter", "Evacuate", "Prepare", "Execute", "Avoid", "Monitor", "Assess", "AllClear", "None",
];

/// The TLP 2.0 label of a level, as a CAP `code`.
pub fn tlp_code(t: i32) -> &'static str {
    use pb::Tlp as T;
    match T::try_from(t).unwrap_or(T::Amber) {
        T::Clear => "TLP:CLEAR",
        T::Green => "TLP:GREEN",
        T::Amber | T::Unspecified => "TLP:AMBER",
        T::AmberStrict => "TLP:AMBER+STRICT",
        T::Red => "TLP:RED",
    }
}

/// The level a CAP `code` names, if it is a TLP label (2.0, or WHITE of
/// TLP 1.0), in any case.
pub fn tlp_from_code(code: &str) -> Option<pb::Tlp> {
    let upper = code.trim().to_ascii_uppercase();
    Some(match upper.strip_prefix("TLP:")? {
        "CLEAR" | "WHITE" => pb::Tlp::Clear,
        "GREEN" => pb::Tlp::Green,
        "AMBER" => pb::Tlp::Amber,
        "AMBER+STRICT" => pb::Tlp::AmberStrict,
        "RED" => pb::Tlp::Red,
        _ => return None,
    })
}

/// CAP's scope for a TLP level: CLEAR is public, RED private (addressed),
/// the rest restricted.
pub fn scope(t: i32) -> &'static str {
    match pb::Tlp::try_from(t) {
        Ok(pb::Tlp::Clear) => "Public",
        Ok(pb::Tlp::Red) => "Private",
        _ => "Restricted",
    }
}

/// A time as CAP 1.2 writes it: seconds, a numeric offset, never "Z".
pub fn time_to_cap(ts: &prost_types::Timestamp) -> String {
    let t = OffsetDateTime::from_unix_timestamp(ts.seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+00:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A CAP time (RFC 3339 with an offset; fractions and "Z" are read too).
pub fn time_from_cap(s: &str) -> Result<prost_types::Timestamp, String> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
        format!("\"{s}\" is not a CAP date and time (such as 2026-12-04T10:30:00+05:00)")
    })?;
    let st: SystemTime = t.into();
    Ok(crate::alert::timestamp(st))
}

/// The id of an alert imported from CAP: its identifier when that is a
/// canonical UUID, otherwise a name-based UUID (v5) of sender and
/// identifier, so that importing it again, or a reference to it, finds the
/// same alert.
pub fn id_of(sender: &str, identifier: &str) -> String {
    match Uuid::parse_str(identifier) {
        Ok(u) if u.to_string() == identifier => identifier.to_owned(),
        _ => Uuid::new_v5(&namespace(), format!("{sender},{identifier}").as_bytes()).to_string(),
    }
}

fn namespace() -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        b"urn:oasis:names:tc:emergency:cap:1.2",
    )
}

fn one_of(allowed: &str, found: &str) -> String {
    format!("must be one of {allowed} (found \"{found}\")")
}
