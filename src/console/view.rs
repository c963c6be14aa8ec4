//! What the page is sent of an alert: the JSON form of the command line
//! ([`crate::json`]), lightened for lists (no attachment content, no
//! attestation bytes), and for the detail view with what the page cannot
//! work out itself (attachment digests checked, the proof of origin in
//! short).

use base64::Engine;
use serde_json::{Value, json};
use sha2::Digest;

use crate::json::record_json;
use crate::proto as pb;

/// A row of the live list or of a search.
pub fn summary(record: &pb::AlertRecord) -> Value {
    let mut v = record_json(record);
    if let Some(attachments) = v["alert"]["attachments"].as_array_mut() {
        for a in attachments {
            if let Some(o) = a.as_object_mut() {
                o.remove("content");
            }
        }
    }
    if let Some(p) = v.get_mut("provenance").and_then(Value::as_object_mut) {
        p.remove("attestation");
    }
    v
}

/// The whole alert, with each attachment's digest checked and the proof
/// of origin summed up.
pub fn detail(record: &pb::AlertRecord) -> Value {
    let mut v = record_json(record);
    if let Some(a) = &record.alert {
        let checked: Vec<Value> = a
            .attachments
            .iter()
            .map(|at| {
                let ok = sha2::Sha256::digest(&at.content).as_slice() == at.sha256.as_slice();
                json!({
                    "filename": at.filename,
                    "mime_type": at.mime_type,
                    "size": at.content.len(),
                    "description": at.description,
                    "digest_ok": ok,
                    // Shown only for images whose digest matches.
                    "data_url": (ok && is_image(&at.mime_type)).then(|| format!(
                        "data:{};base64,{}",
                        at.mime_type,
                        base64::engine::general_purpose::STANDARD.encode(&at.content)
                    )),
                })
            })
            .collect();
        v["alert"]["attachments"] = Value::Array(checked);
    }
    if let Some(p) = &record.provenance {
        let att = p.attestation.as_ref();
        v["proof"] = json!({
            "origin_broker": p.origin_broker,
            "path": p.path,
            "scheme": att.map(|a| a.scheme.clone()),
            "batch": att.and_then(|a| a.batch.as_ref()).map(|b| json!({"size": b.size, "index": b.index})),
            "certificates": att.map_or(0, |a| a.certificates.len()),
        });
        if let Some(o) = v.get_mut("provenance").and_then(Value::as_object_mut) {
            o.remove("attestation");
        }
    }
    v
}

/// Images the page shows inline (anything else is offered as a file).
fn is_image(mime: &str) -> bool {
    matches!(
        mime,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    )
}
