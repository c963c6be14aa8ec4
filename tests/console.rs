//! The officer's console over HTTP, in-process (a broker and the console
//! on 127.0.0.1:0): the live feed, detail, acknowledgement and receipts,
//! compose with a validation error, search, the token, session, CSRF,
//! Origin and Host refusals, the security headers, alert text as data,
//! CAP-over-Atom, and a console in front of a post's agent.

use liaison::proto as pb;
use liaison_testkit::console::{TestConsole, reqwest};
use liaison_testkit::*;
use serde_json::{Value, json};

fn drugs(headline: &str) -> pb::Alert {
    alert(pb::Category::Drugs, headline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_opens_one_session_once_and_nothing_works_without_it() {
    let broker = TestBroker::start().await;
    let console = TestConsole::start(&broker, AF_OFFICE).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // Without a session: the page says where to log in; the API refuses.
    let page = http.get(console.url()).send().await.expect("get");
    assert_eq!(page.status(), 401);
    let api = http
        .get(format!("{}/api/alerts", console.url()))
        .send()
        .await
        .expect("get");
    assert_eq!(api.status(), 401);
    let wrong = http
        .get(format!("{}/?token=guess", console.url()))
        .send()
        .await
        .expect("get");
    assert_eq!(wrong.status(), 401);
    let session = console.login().await;
    // The token worked once: the redirect drops it from the address.
    let again = http.get(console.login_url()).send().await.expect("get");
    assert_eq!(again.status(), 401, "a token opens one session");
    let page = http
        .get(console.url())
        .header("cookie", &session.cookie)
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    let csp = headers["content-security-policy"].to_str().expect("csp");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let html = page.text().await.expect("html");
    assert!(!html.contains("<script>"), "no inline script");
    let me = session.get("/api/session").await;
    assert_eq!(me["node"], AF_OFFICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changing_requests_need_the_csrf_token_the_origin_and_the_host() {
    let broker = TestBroker::start().await;
    let console = TestConsole::start(&broker, AF_OFFICE).await;
    let s = console.login().await;
    let own = console.url();
    let path = "/api/alerts";
    let cookie = Some(s.cookie.as_str());
    let csrf = Some(s.csrf.as_str());
    assert_eq!(s.raw_post(path, None, csrf, None, None).await, 401);
    assert_eq!(s.raw_post(path, cookie, None, None, None).await, 403);
    assert_eq!(
        s.raw_post(path, cookie, Some("not-it"), None, None).await,
        403
    );
    assert_eq!(
        s.raw_post(path, cookie, csrf, Some("http://evil.example"), None)
            .await,
        403
    );
    assert_eq!(
        s.raw_post(path, cookie, csrf, None, Some("evil.example:80"))
            .await,
        421,
        "another Host (DNS rebinding) is refused"
    );
    // With everything right, the request reaches the handler (and an
    // empty alert is refused there, naming a field).
    let (status, body) = s.post(path, &json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["field"]
            .as_str()
            .is_some_and(|f| f.starts_with("alert.")),
        "{body}"
    );
    // The console's own origin is accepted.
    assert_eq!(s.raw_post(path, cookie, csrf, Some(&own), None).await, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_alert_arrives_live_opens_in_detail_and_is_acknowledged_back_to_its_post() {
    let broker = TestBroker::start().await;
    let console = TestConsole::start(&broker, AF_OFFICE).await;
    let s = console.login().await;
    let head = s.get("/api/session").await["head"].as_u64().unwrap_or(0);
    let mut post = broker.client(TJ_POST).await;
    let mut a = drugs("Heroin in a fuel tanker at Panji Poyon");
    a.parameters = vec![pb::Parameter {
        key: "seizure_kg".into(),
        value: Some(pb::parameter::Value::Integer(42)),
        unit: "kg".into(),
    }];
    let id = a.id.clone();
    // The page's stream from where it was: whatever comes after, it gets.
    let page = s.clone();
    let live = tokio::spawn(async move { page.next_live_alert(head).await });
    publish(&mut post, a).await;
    let got = live.await.expect("live");
    assert_eq!(got["alert"]["id"], json!(id));
    assert_eq!(got["unread"], json!(true));
    assert_eq!(got["alert"]["origin"]["urn"], json!(TJ_POST));
    let detail = s.get(&format!("/api/alerts/{id}")).await;
    assert_eq!(detail["alert"]["parameters"][0]["integer"], json!(42));
    assert!(
        detail["proof"].is_null(),
        "not imported: no proof of origin"
    );
    let listed = s.get("/api/alerts").await;
    let row = listed["alerts"]
        .as_array()
        .and_then(|l| l.iter().find(|r| r["alert"]["id"] == json!(id)))
        .cloned()
        .expect("listed");
    assert_eq!(row["unread"], json!(false), "opening it read it");
    let (status, receipt) = s
        .post(
            &format!("/api/alerts/{id}/ack"),
            &json!({"note": "patrol sent"}),
        )
        .await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["kind"], "acknowledged");
    // The originating post sees who acknowledged, with the note.
    let receipts = eventually("the acknowledgement is at the broker", || {
        let mut post = post.clone();
        let id = id.clone();
        async move {
            let list = receipts(&mut post, &id).await?;
            list.iter()
                .any(|r| r.kind == pb::ReceiptKind::Acknowledged as i32)
                .then_some(list)
                .ok_or_else(|| "not yet".to_owned())
        }
    })
    .await;
    let ack = receipts
        .iter()
        .find(|r| r.kind == pb::ReceiptKind::Acknowledged as i32)
        .expect("ack");
    assert_eq!(
        ack.recipient.as_ref().map(|o| o.urn.as_str()),
        Some(AF_OFFICE)
    );
    assert_eq!(ack.note, "patrol sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_names_the_refused_field_and_publishes_a_good_alert() {
    let broker = TestBroker::start().await;
    let console = TestConsole::start(&broker, AF_OFFICE).await;
    let s = console.login().await;
    let good = json!({
        "status": "actual", "msg_type": "alert", "category": "arms",
        "urgency": "immediate", "severity": "severe", "certainty": "observed",
        "headline": "Rifles under a load of melons",
        "marking": {"tlp": "amber", "releasable_to": ["TJ"]},
        "area": {"crossing_point": "AF-SHB", "circles": [{"center": {"latitude": 37.1, "longitude": 68.8}, "radius_km": 2}]},
        "parameters": [{"key": "rifles", "integer": 12}],
    });
    let mut bad = good.clone();
    bad["headline"] = json!("");
    let (status, body) = s.post("/api/alerts", &bad).await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "alert.headline", "{body}");
    let mut bad = good.clone();
    bad["marking"]["tlp"] = json!("purple");
    let (status, body) = s.post("/api/alerts", &bad).await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "alert.marking.tlp", "{body}");
    let mut bad = good.clone();
    bad["area"]["circles"][0]["center"]["latitude"] = json!(95.0);
    let (status, body) = s.post("/api/alerts", &bad).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["field"], "alert.area.circles[0].center.latitude",
        "{body}"
    );
    let (status, ack) = s.post("/api/alerts", &good).await;
    assert_eq!(status, 200, "{ack}");
    let id = ack["id"].as_str().expect("id").to_owned();
    let mut office = broker.client(AF_OFFICE).await;
    let stored = office
        .get_alert(pb::GetAlertRequest { id })
        .await
        .expect("stored")
        .into_inner();
    let a = stored.alert.expect("alert");
    assert_eq!(a.headline, "Rifles under a load of melons");
    assert_eq!(
        a.origin.expect("origin").urn,
        AF_OFFICE,
        "published as the officer's node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filters_by_text_category_country_and_time_and_pages() {
    let broker = TestBroker::start().await;
    let console = TestConsole::start(&broker, AF_OFFICE).await;
    let s = console.login().await;
    let mut post = broker.client(TJ_POST).await;
    publish(&mut post, drugs("Heroin at the bridge")).await;
    publish(&mut post, alert(pb::Category::Arms, "Rifles at the bridge")).await;
    publish(&mut post, drugs("Opium in a truck")).await;
    let ids = |v: &Value| -> Vec<String> {
        v["alerts"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|r| r["alert"]["headline"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        ids(&s.get("/api/alerts?q=BRIDGE").await),
        ["Heroin at the bridge", "Rifles at the bridge"]
    );
    assert_eq!(
        ids(&s.get("/api/alerts?category=drugs").await),
        ["Heroin at the bridge", "Opium in a truck"]
    );
    assert_eq!(
        ids(&s.get("/api/alerts?q=bridge&category=arms").await),
        ["Rifles at the bridge"]
    );
    assert!(ids(&s.get("/api/alerts?origin_country=UZ").await).is_empty());
    assert_eq!(ids(&s.get("/api/alerts?origin_country=TJ").await).len(), 3);
    assert!(ids(&s.get("/api/alerts?until=2000-01-01T00:00:00Z").await).is_empty());
    let (status, body) = s.get_status("/api/alerts?category=weather").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_text_is_data_never_markup() {
    let broker = TestBroker::start().await;
    let console = TestConsole::start(&broker, AF_OFFICE).await;
    let s = console.login().await;
    let mut post = broker.client(TJ_POST).await;
    let xss = "<img src=x onerror=alert(1)>";
    let a = drugs(xss);
    let id = a.id.clone();
    publish(&mut post, a).await;
    let detail = s.get(&format!("/api/alerts/{id}")).await;
    assert_eq!(
        detail["alert"]["headline"],
        json!(xss),
        "sent as a JSON string"
    );
    // The page puts text in the DOM as text only: no HTML sinks anywhere
    // in its scripts (the browser test renders it).
    for file in ["app.js", "compose.js", "dom.js", "map.js", "i18n.js"] {
        let js = reqwest::get(format!("{}/assets/{file}", console.url()))
            .await
            .expect("asset")
            .text()
            .await
            .expect("text");
        assert!(!js.is_empty(), "{file}");
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!js.contains(sink), "{file} uses {sink}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_served_as_cap_over_atom_to_whoever_has_the_key() {
    let broker = TestBroker::start().await;
    let console = TestConsole::start(&broker, AF_OFFICE).await;
    let s = console.login().await;
    let mut post = broker.client(TJ_POST).await;
    let a = drugs("Heroin & opium <at> the bridge");
    let id = a.id.clone();
    publish(&mut post, a).await;
    s.next_live_alert(0).await;
    let feed = format!("{}/feeds/console.atom", console.url());
    let refused = reqwest::get(&feed).await.expect("feed");
    assert_eq!(refused.status(), 401);
    let atom = reqwest::get(format!("{feed}?key={}", console.feed_key))
        .await
        .expect("feed");
    assert_eq!(atom.status(), 200);
    assert!(
        atom.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("application/atom+xml")
    );
    let xml = atom.text().await.expect("xml");
    assert!(
        xml.contains("<feed xmlns=\"http://www.w3.org/2005/Atom\">"),
        "{xml}"
    );
    assert!(xml.contains(&format!("<id>urn:uuid:{id}</id>")), "{xml}");
    assert!(
        xml.contains("Heroin &amp; opium &lt;at&gt; the bridge"),
        "escaped: {xml}"
    );
    let link = format!("{}/feeds/cap/{id}?key={}", console.url(), console.feed_key);
    assert!(xml.contains(&link), "{xml}");
    let cap = reqwest::get(&link)
        .await
        .expect("cap")
        .text()
        .await
        .expect("text");
    let again = liaison::cap::import(cap.as_bytes()).expect("a CAP document");
    assert_eq!(again.id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_front_of_a_posts_agent_it_shows_the_link_and_queues_and_publishes_through_it() {
    let broker = TestBroker::start().await;
    let agent = TestAgent::start(&broker, &broker.url(), TJ_POST, |_| {}).await;
    let console = TestConsole::start_at(&agent.url(), None).await;
    let s = console.login().await;
    let status = eventually("the agent's link is up", || {
        let s = s.clone();
        async move {
            let v = s.get("/api/status").await;
            (v["agent"]["link_state"] == "up")
                .then_some(v.clone())
                .ok_or(v)
        }
    })
    .await;
    assert_eq!(status["kind"], "agent");
    assert_eq!(status["agent"]["outbox_depth"], json!(0));
    let good = json!({
        "status": "actual", "msg_type": "alert", "category": "drugs",
        "urgency": "expected", "severity": "moderate", "certainty": "likely",
        "headline": "Published from the post's console",
        "marking": {"tlp": "green"},
    });
    let (code, ack) = s.post("/api/alerts", &good).await;
    assert_eq!(code, 200, "{ack}");
    let id = ack["id"].as_str().expect("id").to_owned();
    let mut office = broker.client(AF_OFFICE).await;
    eventually("the agent forwarded it upstream", || {
        let mut office = office.clone();
        let id = id.clone();
        async move {
            office
                .get_alert(pb::GetAlertRequest { id })
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let _ = &mut office;
}

#[tokio::test]
async fn every_string_of_the_page_is_in_english_and_russian() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/console/assets");
    let i18n = std::fs::read_to_string(dir.join("i18n.js")).expect("i18n.js");
    let dictionary = |name: &str| -> std::collections::BTreeSet<String> {
        let start = i18n.find(&format!("const {name} = {{")).expect(name);
        let end = start + i18n[start..].find("\n};").expect("end");
        i18n[start..end]
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"'))
            .filter_map(|l| l.split_once("\":").map(|(k, _)| k.to_owned()))
            .collect()
    };
    let (en, ru) = (dictionary("en"), dictionary("ru"));
    assert!(en.len() > 100);
    assert_eq!(en, ru, "the same keys in both languages");
    // Every key the scripts name literally is there.
    for file in ["app.js", "compose.js", "map.js"] {
        let js = std::fs::read_to_string(dir.join(file)).expect("script");
        for (at, _) in js.match_indices("t(\"") {
            let before = js[..at].chars().next_back().unwrap_or(' ');
            if before.is_alphanumeric() || before == '_' || before == '.' {
                continue; // split(":"), not t(…)
            }
            let key = js[at + 3..].split('"').next().unwrap_or("");
            assert!(en.contains(key), "{file}: t(\"{key}\") has no text");
        }
    }
    // And the enumerations the scripts name by pattern.
    for (prefix, values) in [
        (
            "category",
            &[
                "drugs",
                "arms",
                "cbrn",
                "terrorism",
                "human_smuggling",
                "migration",
                "document_fraud",
                "health",
                "other",
            ][..],
        ),
        (
            "severity",
            &["extreme", "severe", "moderate", "minor", "unknown"],
        ),
        (
            "urgency",
            &["immediate", "expected", "future", "past", "unknown"],
        ),
        (
            "certainty",
            &["observed", "likely", "possible", "unlikely", "unknown"],
        ),
        ("status", &["actual", "exercise", "test"]),
        ("msg_type", &["alert", "update", "cancel"]),
        ("tlp", &["clear", "green", "amber", "amber_strict", "red"]),
        ("receipt", &["delivered", "acknowledged"]),
    ] {
        for v in values {
            assert!(en.contains(&format!("{prefix}.{v}")), "{prefix}.{v}");
        }
    }
}
