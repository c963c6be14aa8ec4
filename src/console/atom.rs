//! The console's feed as CAP-over-Atom, for systems that read CAP: an
//! Atom feed (RFC 4287) of the newest alerts the console received, each
//! entry linking to the alert as a CAP 1.2 document. Other systems have no
//! session cookie, so they give the feed key the console printed
//! (`?key=…`); it opens these two routes only.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Console;
use super::follow::Next;
use crate::cap::{self, Layout};
use crate::proto as pb;

/// Entries in the feed at most.
const ENTRIES: usize = 100;

#[derive(Deserialize)]
pub struct Key {
    key: Option<String>,
}

/// The refusal to answer with when the feed key is missing or wrong.
fn refused(c: &Console, key: &Key) -> Option<Response> {
    (key.key.as_deref() != Some(c.config().feed_key.as_str())).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            "the feed key is missing or wrong\n",
        )
            .into_response()
    })
}

/// `/feeds/FEED.atom?key=…`.
pub async fn feed(
    State(c): State<Console>,
    Path(file): Path<String>,
    Query(key): Query<Key>,
) -> Response {
    if let Some(refusal) = refused(&c, &key) {
        return refusal;
    }
    if file.strip_suffix(".atom") != Some(c.config().feed.as_str()) {
        return (StatusCode::NOT_FOUND, "no such feed\n").into_response();
    }
    let Next::Alerts(alerts) = c.inner.follow.after(0) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response();
    };
    let mut newest: Vec<_> = alerts.into_iter().rev().take(ENTRIES).collect();
    newest.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    let base = format!("http://{}", c.inner.addr);
    let k = esc(key.key.as_deref().unwrap_or(""));
    let updated = newest
        .first()
        .and_then(|(_, v)| v["received_at"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into());
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">\n  \
         <id>urn:liaison:console:{feed}</id>\n  <title>Liaison: {feed}</title>\n  <updated>{updated}</updated>\n  \
         <link rel=\"self\" href=\"{base}/feeds/{feed}.atom\"/>\n",
        feed = esc(&c.config().feed),
        updated = esc(&updated),
    );
    for (_, v) in &newest {
        let a = &v["alert"];
        let text = |k: &str| esc(a[k].as_str().unwrap_or(""));
        xml.push_str(&format!(
            "  <entry>\n    <id>urn:uuid:{id}</id>\n    <title>{headline}</title>\n    <updated>{updated}</updated>\n    \
             <author><name>{origin}</name></author>\n    <category term=\"{category}\"/>\n    \
             <summary>{severity} {category} TLP:{tlp}</summary>\n    \
             <link rel=\"alternate\" type=\"application/cap+xml\" href=\"{base}/feeds/cap/{id}?key={k}\"/>\n  </entry>\n",
            id = text("id"),
            headline = text("headline"),
            updated = esc(v["received_at"].as_str().unwrap_or("")),
            origin = esc(a["origin"]["urn"].as_str().unwrap_or("")),
            category = text("category"),
            severity = text("severity"),
            tlp = esc(&a["marking"]["tlp"].as_str().unwrap_or("").to_ascii_uppercase()),
        ));
    }
    xml.push_str("</feed>\n");
    (
        [(header::CONTENT_TYPE, "application/atom+xml; charset=utf-8")],
        xml,
    )
        .into_response()
}

/// `/feeds/cap/ID?key=…`: one alert of the feed as CAP 1.2.
pub async fn entry(
    State(c): State<Console>,
    Path(id): Path<String>,
    Query(key): Query<Key>,
) -> Response {
    if let Some(refusal) = refused(&c, &key) {
        return refusal;
    }
    match cap_document(&c, &id).await {
        Ok(xml) => (
            [(header::CONTENT_TYPE, "application/cap+xml; charset=utf-8")],
            xml,
        )
            .into_response(),
        Err(status) => (StatusCode::NOT_FOUND, format!("{}\n", status.message())).into_response(),
    }
}

/// Alert `id` as a CAP 1.2 document (its references asked upstream).
pub async fn cap_document(c: &Console, id: &str) -> Result<String, tonic::Status> {
    let record = c
        .broker()
        .get_alert(pb::GetAlertRequest { id: id.to_owned() })
        .await?
        .into_inner();
    let mut earlier = std::collections::HashMap::new();
    for r in record.alert.iter().flat_map(|a| &a.references) {
        if let Ok(e) = c
            .broker()
            .get_alert(pb::GetAlertRequest { id: r.clone() })
            .await
        {
            earlier.insert(r.clone(), e.into_inner());
        }
    }
    cap::export(&record, &|id| earlier.get(id).cloned(), Layout::Pretty)
        .map_err(|e| tonic::Status::internal(e.to_string()))
}

/// Escapes text for XML content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
