//! The JSON API the page calls (every route needs the session; see
//! `http`). Upstream errors come back as `{"error": …}`; a refused alert
//! as `{"field": "alert.headline", "error": …}`, so the page can show it by
//! the field it names.

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};

use super::follow::Next;
use super::http::{refused, session_of};
use super::{Console, view};
use crate::alert::timestamp;
use crate::json::{self, parse_enum, parse_time, receipt_json, time_json};
use crate::proto as pb;

/// Alerts a page of history holds at most.
const PAGE: u32 = 200;
/// Records searched for the alerts that update or cancel one.
const REFERRERS_SEARCHED: usize = 5000;

/// An upstream failure, as the page shows it.
fn upstream(status: &tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::BAD_GATEWAY,
    };
    refused(code, status.message())
}

/// Who the officer is, where the console connects, the CSRF token.
pub async fn session(State(c): State<Console>, headers: HeaderMap) -> Response {
    let csrf = session_of(&c, &headers).map(|(_, t)| t).unwrap_or_default();
    let node = c
        .broker()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .ok()
        .and_then(|r| r.into_inner().identity)
        .map(|o| o.urn)
        .unwrap_or_default();
    Json(json!({
        "node": node,
        "upstream": c.config().upstream,
        "kind": if c.is_agent() { "agent" } else { "broker" },
        "feed": c.config().feed,
        "csrf": csrf,
        "unread": c.inner.follow.unread(),
        "head": c.inner.follow.head(),
    }))
    .into_response()
}

#[derive(Deserialize)]
pub struct After {
    after: Option<u64>,
}

/// Live alerts, as server-sent events: `alert` (one alert, its sequence as
/// the event id) and `reload` (the page fell behind: fetch the list
/// again). A reconnecting page gives `Last-Event-ID` and misses nothing.
pub async fn events(
    State(c): State<Console>,
    headers: HeaderMap,
    Query(q): Query<After>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let cursor = last.or(q.after).unwrap_or_else(|| c.inner.follow.head());
    let rx = c.inner.follow.watch();
    let shutdown = c.inner.shutdown.clone();
    let stream = futures::stream::unfold(
        (c, cursor, rx, std::collections::VecDeque::new()),
        move |(c, mut cursor, mut rx, mut pending)| {
            let shutdown = shutdown.clone();
            async move {
                loop {
                    if let Some(event) = pending.pop_front() {
                        return Some((Ok(event), (c, cursor, rx, pending)));
                    }
                    match c.inner.follow.after(cursor) {
                        Next::Reload => {
                            cursor = c.inner.follow.head();
                            pending.push_back(Event::default().event("reload").data("{}"));
                        }
                        Next::Alerts(alerts) if !alerts.is_empty() => {
                            for (seq, summary) in alerts {
                                let mut v = (*summary).clone();
                                let id = v["alert"]["id"].as_str().unwrap_or_default().to_owned();
                                v["unread"] = json!(c.inner.follow.is_unread(&id));
                                pending.push_back(
                                    Event::default()
                                        .event("alert")
                                        .id(seq.to_string())
                                        .data(v.to_string()),
                                );
                                cursor = seq;
                            }
                        }
                        Next::Alerts(_) => {
                            tokio::select! {
                                () = shutdown.cancelled() => return None,
                                changed = rx.changed() => if changed.is_err() { return None },
                            }
                        }
                    }
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Deserialize, Default)]
pub struct Search {
    /// Categories, comma-separated.
    category: Option<String>,
    min_severity: Option<String>,
    /// Origin countries, comma-separated.
    origin_country: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// Words in the headline (any language), case-insensitive.
    q: Option<String>,
    page: Option<String>,
    /// Leave out EXERCISE and TEST alerts.
    actual_only: Option<bool>,
}

/// A page of history (oldest first), filtered; `next_page` continues.
pub async fn list(State(c): State<Console>, Query(s): Query<Search>) -> Response {
    let filter = match filter(&s) {
        Ok(f) => f,
        Err(e) => return refused(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let time = |field: &str, v: &Option<String>| {
        v.as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| parse_time(field, t))
            .transpose()
    };
    let (since, until) = match (time("since", &s.since), time("until", &s.until)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return refused(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let request = pb::ListAlertsRequest {
        filter: Some(filter),
        since,
        until,
        page_size: PAGE,
        page_token: s.page.clone().unwrap_or_default(),
    };
    let page = match c.broker().list_alerts(request).await {
        Ok(p) => p.into_inner(),
        Err(status) => return upstream(&status),
    };
    let words = s.q.as_deref().unwrap_or("").trim().to_lowercase();
    let alerts: Vec<Value> = page
        .alerts
        .iter()
        .filter(|r| words.is_empty() || headline_has(r, &words))
        .map(|r| with_unread(&c, view::summary(r)))
        .collect();
    Json(json!({ "alerts": alerts, "next_page": page.next_page_token })).into_response()
}

fn filter(s: &Search) -> Result<pb::Filter, json::JsonError> {
    let list = |v: &Option<String>| -> Vec<String> {
        v.as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let actual_only = s.actual_only.unwrap_or(false);
    Ok(pb::Filter {
        categories: list(&s.category)
            .iter()
            .map(|c| parse_enum::<pb::Category>("category", c))
            .collect::<Result<_, _>>()?,
        min_severity: match s.min_severity.as_deref() {
            None | Some("") => 0,
            Some(v) => parse_enum::<pb::Severity>("min_severity", v)?,
        },
        origin_countries: list(&s.origin_country)
            .into_iter()
            .map(|c| c.to_ascii_uppercase())
            .collect(),
        include_exercise: !actual_only,
        include_test: !actual_only,
        exclude_own: false,
    })
}

fn headline_has(r: &pb::AlertRecord, words: &str) -> bool {
    r.alert.as_ref().is_some_and(|a| {
        std::iter::once(&a.headline)
            .chain(a.translations.iter().map(|t| &t.headline))
            .any(|h| h.to_lowercase().contains(words))
    })
}

fn with_unread(c: &Console, mut v: Value) -> Value {
    let id = v["alert"]["id"].as_str().unwrap_or_default().to_owned();
    v["unread"] = json!(c.inner.follow.is_unread(&id));
    v
}

/// One alert, whole: attachments checked, the proof of origin in short,
/// the alerts it references and those that reference it. Opening it
/// marks it read.
pub async fn detail(State(c): State<Console>, Path(id): Path<String>) -> Response {
    let record = match c
        .broker()
        .get_alert(pb::GetAlertRequest { id: id.clone() })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return upstream(&status),
    };
    c.inner.follow.read(&id);
    let mut v = view::detail(&record);
    let mut references = Vec::new();
    for r in record.alert.iter().flat_map(|a| &a.references) {
        let got = c
            .broker()
            .get_alert(pb::GetAlertRequest { id: r.clone() })
            .await;
        references.push(match got {
            Ok(earlier) => view::summary(&earlier.into_inner()),
            Err(_) => json!({ "alert": { "id": r }, "missing": true }),
        });
    }
    v["references"] = Value::Array(references);
    v["referenced_by"] = Value::Array(referrers(&c, &record).await);
    Json(v).into_response()
}

/// Later alerts that update or cancel `record` (searched in history after
/// it, at most [`REFERRERS_SEARCHED`] records).
async fn referrers(c: &Console, record: &pb::AlertRecord) -> Vec<Value> {
    let Some(id) = record.alert.as_ref().map(|a| a.id.clone()) else {
        return Vec::new();
    };
    let mut request = pb::ListAlertsRequest {
        filter: Some(pb::Filter {
            include_exercise: true,
            include_test: true,
            ..Default::default()
        }),
        since: record.received_at,
        until: None,
        page_size: 1000,
        page_token: String::new(),
    };
    let mut found = Vec::new();
    let mut searched = 0;
    while searched < REFERRERS_SEARCHED {
        let Ok(page) = c.broker().list_alerts(request.clone()).await else {
            break;
        };
        let page = page.into_inner();
        searched += page.alerts.len();
        found.extend(
            page.alerts
                .iter()
                .filter(|r| r.alert.as_ref().is_some_and(|a| a.references.contains(&id)))
                .map(view::summary),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    found
}

#[derive(Deserialize)]
pub struct AckBody {
    #[serde(default)]
    note: String,
}

/// The officer acknowledges an alert (CAP's Ack), with an optional note.
pub async fn ack(
    State(c): State<Console>,
    Path(id): Path<String>,
    Json(body): Json<AckBody>,
) -> Response {
    match c
        .broker()
        .acknowledge(pb::AcknowledgeRequest {
            id,
            note: body.note,
        })
        .await
    {
        Ok(r) => Json(receipt_json(&r.into_inner())).into_response(),
        Err(status) => upstream(&status),
    }
}

/// The receipts of one of the officer's agency's alerts, live.
pub async fn receipts(State(c): State<Console>, Path(id): Path<String>) -> Response {
    let stream = match c
        .broker()
        .receipts(pb::ReceiptsRequest { id, follow: true })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(status) => return upstream(&status),
    };
    let shutdown = c.inner.shutdown.clone();
    let events = futures::stream::unfold((stream, shutdown), |(mut stream, shutdown)| async move {
        let next = tokio::select! {
            () = shutdown.cancelled() => return None,
            m = stream.message() => m,
        };
        match next {
            Ok(Some(r)) => {
                let event = Event::default()
                    .event("receipt")
                    .data(receipt_json(&r).to_string());
                Some((Ok::<_, Infallible>(event), (stream, shutdown)))
            }
            _ => None,
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The alert as a CAP 1.2 document.
pub async fn cap(State(c): State<Console>, Path(id): Path<String>) -> Response {
    match super::atom::cap_document(&c, &id).await {
        Ok(xml) => (
            [(header::CONTENT_TYPE, "application/cap+xml; charset=utf-8")],
            xml,
        )
            .into_response(),
        Err(status) => upstream(&status),
    }
}

/// Publishes an alert written on the page (the JSON form of
/// [`crate::json`]; a new id and the time now when it has none).
pub async fn publish(State(c): State<Console>, Json(mut body): Json<Value>) -> Response {
    if let Some(o) = body.as_object_mut() {
        let id = o.get("id").and_then(Value::as_str).unwrap_or("");
        if id.is_empty() {
            o.insert("id".into(), json!(uuid::Uuid::now_v7().to_string()));
        }
        if o.get("sent").is_none_or(Value::is_null) {
            o.insert(
                "sent".into(),
                time_json(&Some(timestamp(SystemTime::now()))),
            );
        }
    }
    let alert = match json::alert_from_json(&body) {
        Ok(a) => a,
        Err(e) => return field_error(e.field(), &e.to_string()),
    };
    match c
        .broker()
        .publish(pb::PublishRequest { alert: Some(alert) })
        .await
    {
        Ok(ack) => {
            let ack = ack.into_inner();
            Json(json!({"id": ack.id, "seq": ack.seq, "duplicate": ack.duplicate})).into_response()
        }
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            let message = status.message();
            let field = message.split_once(": ").map_or("", |(f, _)| f);
            field_error(field, message)
        }
        Err(status) => upstream(&status),
    }
}

fn field_error(field: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "field": field, "error": message })),
    )
        .into_response()
}

/// Upstream's health (a broker) or link and queues (an agent), and the
/// console's own feed.
pub async fn status(State(c): State<Console>) -> Response {
    let link = c.inner.follow.link();
    let mut v = json!({
        "kind": if c.is_agent() { "agent" } else { "broker" },
        "upstream": c.config().upstream,
        "feed_up": link.up,
        "feed_error": link.last_error,
        "last_delivery": time_json(&link.last_delivery.map(timestamp)),
        "unread": c.inner.follow.unread(),
    });
    let mut health = tonic_health::pb::health_client::HealthClient::new(c.inner.channel.clone());
    let checked = tokio::time::timeout(
        Duration::from_secs(3),
        health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await;
    v["serving"] = json!(matches!(
        checked,
        Ok(Ok(ref r)) if r.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    ));
    v["detail"] = json!(match checked {
        Ok(Ok(_)) => String::new(),
        Ok(Err(status)) => status.message().to_owned(),
        Err(_) => "no answer within 3 s".to_owned(),
    });
    if let Some(mut agent) = c.inner.agent.clone()
        && let Ok(s) = agent.status(pb::AgentStatusRequest {}).await
    {
        let s = s.into_inner();
        v["agent"] = json!({
            "link_state": pb::LinkState::try_from(s.link_state)
                .map(|l| l.as_str_name().trim_start_matches("LINK_STATE_").to_ascii_lowercase())
                .unwrap_or_default(),
            "last_contact": time_json(&s.last_contact),
            "last_error": s.last_error,
            "outbox_depth": s.outbox_depth,
            "outbox_oldest": time_json(&s.outbox_oldest),
            "upstream": s.upstream,
        });
    }
    Json(v).into_response()
}

/// The region's crossings and borders, for the map and the compose form.
pub async fn gazetteer() -> Response {
    use crate::gazetteer::{AGENCIES, CROSSINGS, NEIGHBOURS};
    Json(json!({
        "countries": AGENCIES.iter().map(|(cc, agency)| json!({"code": cc, "agency": agency})).collect::<Vec<_>>(),
        "borders": NEIGHBOURS.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
        "crossings": CROSSINGS.iter().map(|x| json!({
            "code": x.code,
            "name": x.name,
            "country": x.country,
            "neighbour": x.neighbour,
            "latitude": x.latitude,
            "longitude": x.longitude,
        })).collect::<Vec<_>>(),
    }))
    .into_response()
}
