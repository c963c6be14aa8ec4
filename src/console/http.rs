//! The console's HTTP surface: routes, the login by one-time token, the
//! session cookie and CSRF token, the Host check, the security headers and
//! the static assets (compiled into the binary).
//!
//! Who may drive the console: whoever opened the URL it printed. The token
//! in that URL works once; it becomes an `HttpOnly`, `SameSite=Strict`
//! cookie and the page is sent on without the token in its address. Every
//! state-changing request also carries the session's CSRF token in a
//! header (a page of another origin can neither read it nor send the
//! header without a CORS preflight that is never granted), is JSON, and
//! comes from the console's own origin. Requests for any other Host than
//! the console's own loopback address are refused (DNS rebinding).

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::{Console, api, atom, lock};

/// The session cookie's name.
pub const COOKIE: &str = "liaison_console";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn router(console: Console) -> Router {
    let api = Router::new()
        .route("/api/session", get(api::session))
        .route("/api/events", get(api::events))
        .route("/api/alerts", get(api::list).post(api::publish))
        .route("/api/alerts/{id}", get(api::detail))
        .route("/api/alerts/{id}/ack", post(api::ack))
        .route("/api/alerts/{id}/receipts", get(api::receipts))
        .route("/api/alerts/{id}/cap", get(api::cap))
        .route("/api/status", get(api::status))
        .route("/api/gazetteer", get(api::gazetteer))
        .route_layer(middleware::from_fn_with_state(
            console.clone(),
            require_session,
        ));
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
        .route("/feeds/{file}", get(atom::feed))
        .route("/feeds/cap/{id}", get(atom::entry))
        .merge(api)
        .layer(middleware::from_fn_with_state(console.clone(), guard))
        .with_state(console)
}

/// Refuses other Hosts, and sets the security headers on every answer.
async fn guard(State(console): State<Console>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let mut response = if own_host(&console, host) {
        next.run(req).await
    } else {
        (StatusCode::MISDIRECTED_REQUEST, "unknown host\n").into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The console's own address, by IP or as localhost.
fn own_host(console: &Console, host: &str) -> bool {
    let port = console.inner.addr.port();
    let ip = console.inner.addr.ip();
    let mut names = vec![format!("localhost:{port}"), format!("{ip}:{port}")];
    if let std::net::IpAddr::V6(v6) = ip {
        names.push(format!("[{v6}]:{port}"));
    }
    names.iter().any(|n| n.eq_ignore_ascii_case(host))
}

/// The session a request belongs to: its cookie, if it names one.
pub fn session_of(console: &Console, headers: &HeaderMap) -> Option<(String, String)> {
    let cookies = headers.get_all(header::COOKIE);
    let sid = cookies
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())?;
    let csrf = lock(&console.inner.sessions).get(&sid).cloned()?;
    Some((sid, csrf))
}

/// API calls need a session; state-changing ones its CSRF token too, as
/// JSON from the console's own origin.
async fn require_session(State(console): State<Console>, req: Request, next: Next) -> Response {
    let Some((_, csrf)) = session_of(&console, req.headers()) else {
        return refused(
            StatusCode::UNAUTHORIZED,
            "no session: open the address `liaison console` printed",
        );
    };
    if req.method() != Method::GET {
        let h = req.headers();
        let header_token = h.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if header_token != Some(csrf.as_str()) {
            return refused(
                StatusCode::FORBIDDEN,
                "the request lacks this session's CSRF token",
            );
        }
        let origin_ok = h.get(header::ORIGIN).is_none_or(|o| {
            o.to_str().is_ok_and(|o| {
                o.strip_prefix("http://")
                    .is_some_and(|host| own_host(&console, host))
            })
        });
        if !origin_ok {
            return refused(
                StatusCode::FORBIDDEN,
                "the request comes from another origin",
            );
        }
        let json = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return refused(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "state-changing requests are JSON",
            );
        }
    }
    next.run(req).await
}

/// An error the page shows: `{"error": …}`.
pub fn refused(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

#[derive(serde::Deserialize)]
pub struct Login {
    token: Option<String>,
}

/// The page; with the one-time token, the session that opens it.
async fn index(
    State(console): State<Console>,
    Query(login): Query<Login>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = login.token {
        let valid = {
            let mut slot = lock(&console.inner.token);
            let ok = slot.as_deref() == Some(token.as_str());
            if ok {
                *slot = None;
            }
            ok
        };
        if !valid {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                NO_SESSION,
            )
                .into_response();
        }
        let (sid, csrf) = (super::login_token(), super::login_token());
        lock(&console.inner.sessions).insert(sid.clone(), csrf);
        let cookie = format!("{COOKIE}={sid}; HttpOnly; SameSite=Strict; Path=/");
        return Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, "/")
            .header(header::SET_COOKIE, cookie)
            .body(Body::empty())
            .unwrap_or_default();
    }
    if session_of(&console, &headers).is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            NO_SESSION,
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        asset_bytes("index.html").map_or(&[][..], |(_, b)| b),
    )
        .into_response()
}

const NO_SESSION: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Liaison console</title></head><body><h1>Liaison console</h1>\
<p>Open the address that <code>liaison console</code> printed when it started \
(its token works once). / Откройте адрес, который вывела команда \
<code>liaison console</code> при запуске (ключ действует один раз).</p></body></html>\n";

/// The files of the page, compiled in.
fn asset_bytes(name: &str) -> Option<(&'static str, &'static [u8])> {
    macro_rules! assets {
        ($($file:literal => $mime:literal),* $(,)?) => {
            match name {
                $($file => Some(($mime, include_bytes!(concat!("assets/", $file)).as_slice())),)*
                _ => None,
            }
        };
    }
    assets! {
        "index.html" => "text/html; charset=utf-8",
        "app.js" => "text/javascript; charset=utf-8",
        "i18n.js" => "text/javascript; charset=utf-8",
        "map.js" => "text/javascript; charset=utf-8",
        "compose.js" => "text/javascript; charset=utf-8",
        "dom.js" => "text/javascript; charset=utf-8",
        "style.css" => "text/css; charset=utf-8",
        "leaflet.js" => "text/javascript; charset=utf-8",
        "leaflet.css" => "text/css; charset=utf-8",
        "region.geojson" => "application/geo+json",
    }
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match asset_bytes(&file) {
        Some((mime, bytes)) => (
            [
                (header::CONTENT_TYPE, mime),
                (header::CACHE_CONTROL, "private, max-age=3600"),
            ],
            bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    }
}
