//! The officer's console in-process on `127.0.0.1:0`, and an HTTP client
//! that logs in with its one-time token like a browser (the session
//! cookie, the CSRF token) — or deliberately does not.

use std::net::SocketAddr;

use futures::StreamExt;
use liaison::console::{self, ConsoleConfig};
use reqwest::header::{CONTENT_TYPE, COOKIE, HOST, SET_COOKIE};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{PATIENCE, TestBroker};

/// A console serving on loopback as node `urn` of a broker (or of an agent).
pub struct TestConsole {
    pub addr: SocketAddr,
    pub token: String,
    pub feed_key: String,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), console::ConsoleError>>>,
}

impl TestConsole {
    /// A console of `broker` as node `urn` (its certificate made now).
    pub async fn start(broker: &TestBroker, urn: &str) -> TestConsole {
        let tls = broker.pki.node(urn);
        Self::start_at(&broker.url(), Some(tls)).await
    }

    /// A console of the agent at `url` (no certificate: loopback).
    pub async fn start_at(upstream: &str, tls: Option<liaison::tls::TlsFiles>) -> TestConsole {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = ConsoleConfig {
            upstream: upstream.to_owned(),
            tls,
            feed: "console".into(),
            token: console::login_token(),
            feed_key: console::login_token(),
        };
        let (token, feed_key) = (config.token.clone(), config.feed_key.clone());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(console::run(listener, config, shutdown.clone()));
        TestConsole {
            addr,
            token,
            feed_key,
            shutdown,
            handle: Some(handle),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address to open, with the one-time token.
    pub fn login_url(&self) -> String {
        format!("{}/?token={}", self.url(), self.token)
    }

    /// Logs in with the token, as a browser would; the session's client.
    pub async fn login(&self) -> Session {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let r = http.get(self.login_url()).send().await.expect("login");
        assert_eq!(r.status(), 303, "the token opens a session");
        let cookie = r
            .headers()
            .get(SET_COOKIE)
            .and_then(|c| c.to_str().ok())
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_owned();
        let mut session = Session {
            http,
            base: self.url(),
            cookie,
            csrf: String::new(),
        };
        let me = session.get("/api/session").await;
        session.csrf = me["csrf"].as_str().expect("csrf").to_owned();
        session
    }

    /// Stops it; waits for it to finish (bounded).
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let r = tokio::time::timeout(PATIENCE, h).await;
            assert!(r.is_ok(), "the console stopped within {PATIENCE:?}");
        }
    }
}

impl Drop for TestConsole {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A logged-in browser, as far as HTTP goes.
#[derive(Clone)]
pub struct Session {
    pub http: reqwest::Client,
    pub base: String,
    /// `liaison_console=…`.
    pub cookie: String,
    pub csrf: String,
}

impl Session {
    /// GET `path` with the session; its JSON (panics unless 2xx).
    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.get_status(path).await;
        assert!(status.is_success(), "GET {path}: {status} {body}");
        body
    }

    pub async fn get_status(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .expect("get");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST JSON with the session and its CSRF token.
    pub async fn post(&self, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .header("x-csrf-token", &self.csrf)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("post");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A raw request, for the refusals: with `cookie`, `csrf`, `origin`
    /// and `host` given or not.
    pub async fn raw_post(
        &self,
        path: &str,
        cookie: Option<&str>,
        csrf: Option<&str>,
        origin: Option<&str>,
        host: Option<&str>,
    ) -> reqwest::StatusCode {
        let mut r = self
            .http
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, "application/json")
            .body("{}");
        if let Some(c) = cookie {
            r = r.header(COOKIE, c);
        }
        if let Some(t) = csrf {
            r = r.header("x-csrf-token", t);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(h) = host {
            r = r.header(HOST, h);
        }
        r.send().await.expect("post").status()
    }

    /// The next `alert` event of the live stream opened at `after`.
    pub async fn next_live_alert(&self, after: u64) -> Value {
        let r = self
            .http
            .get(format!("{}/api/events?after={after}", self.base))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .expect("events");
        assert!(r.status().is_success(), "events: {}", r.status());
        let mut body = r.bytes_stream();
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let chunk = tokio::time::timeout_at(deadline, body.next())
                .await
                .expect("a live alert in time")
                .expect("the stream goes on")
                .expect("bytes");
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                if event.lines().any(|l| l == "event: alert") {
                    let data: String = event
                        .lines()
                        .filter_map(|l| l.strip_prefix("data: "))
                        .collect();
                    return serde_json::from_str(&data).expect("json");
                }
            }
        }
    }
}

/// The HTTP client the console tests use.
pub use reqwest;
