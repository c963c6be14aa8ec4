//! The officer's console end to end in a real headless Chromium (Debian's
//! `chromium`), driven by Playwright (`tests/browser/console.mjs`): an alert
//! published by another node appears live, opens with its area on the map,
//! is acknowledged — and the receipt is at the broker —; the page switches
//! to Russian; an alert composed with a bad field shows the error by the
//! field; another agency's markup in a headline stays text. Screenshots go
//! to `LIAISON_SCREENSHOTS` (docs/ for the README) or a temporary
//! directory. `tools/test` installs Chromium and the script's one package
//! (playwright-core) and requires them; without them, plain `cargo test`
//! skips this test with a note.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use liaison::proto as pb;
use liaison_testkit::console::TestConsole;
use liaison_testkit::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Chromium, Node.js and playwright-core, or why not.
fn tools() -> Result<(), String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Err(format!(
            "no Chromium at {chromium} (Debian: apt-get install chromium)"
        ));
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("no Node.js".into());
    }
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        return Err("tests/browser has no node_modules (npm ci --prefix tests/browser)".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_follows_opens_acknowledges_and_composes_in_a_real_browser() {
    if let Err(why) = tools() {
        assert!(
            std::env::var("LIAISON_TEST_TOOLS").as_deref() != Ok("required"),
            "{why}; tools/test installs what the browser test needs"
        );
        eprintln!("SKIPPED: the browser test needs {why}; run tools/test");
        return;
    }
    trace();
    let broker = TestBroker::start().await;
    let console = TestConsole::start(&broker, AF_OFFICE).await;
    let shots = match std::env::var("LIAISON_SCREENSHOTS") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => std::env::temp_dir().join(format!("liaison-screens-{}", std::process::id())),
    };
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let shots = std::path::absolute(&shots).expect("an absolute path");
    let mut node = tokio::process::Command::new("node")
        .arg(browser_dir().join("console.mjs"))
        .arg(console.login_url())
        .arg(&shots)
        .current_dir(browser_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut to_page = node.stdin.take().expect("stdin");
    let mut from_page = BufReader::new(node.stdout.take().expect("stdout")).lines();
    // What the script says on standard error is the test's output.
    let mut stderr = BufReader::new(node.stderr.take().expect("stderr")).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            eprintln!("console.mjs: {line}");
        }
    });
    let mut next = async || -> String {
        match tokio::time::timeout(PATIENCE * 3, from_page.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!("the page script stopped ({other:?}); its output is above"),
        }
    };

    assert_eq!(next().await, "ready");
    let mut post = broker.client(TJ_POST).await;
    let xss = alert(pb::Category::Other, "<img src=x onerror=alert(1)>");
    publish(&mut post, xss.clone()).await;
    let mut a = alert(
        pb::Category::Drugs,
        "Heroin in a fuel tanker at Panji Poyon",
    );
    a.marking = Some(pb::Marking {
        tlp: pb::Tlp::Amber as i32,
        releasable_to: vec!["AF".into()],
        ..Default::default()
    });
    a.severity = pb::Severity::Severe as i32;
    a.parameters = vec![pb::Parameter {
        key: "seizure_kg".into(),
        value: Some(pb::parameter::Value::Integer(42)),
        unit: "kg".into(),
    }];
    a.area = Some(pb::Area {
        crossing_point: "TJ-PNP".into(),
        circles: vec![pb::Circle {
            center: Some(pb::Point {
                latitude: 37.23,
                longitude: 68.63,
            }),
            radius_km: 8.0,
        }],
        ..Default::default()
    });
    let id = a.id.clone();
    publish(&mut post, a).await;
    to_page
        .write_all(format!("published {id} {}\n", xss.id).as_bytes())
        .await
        .expect("to the page");

    assert_eq!(next().await, format!("acked {id}"));
    let receipts = eventually("the officer's acknowledgement is at the broker", || {
        let mut post = post.clone();
        let id = id.clone();
        async move {
            let list = receipts(&mut post, &id).await?;
            list.into_iter()
                .find(|r| r.kind == pb::ReceiptKind::Acknowledged as i32)
                .ok_or_else(|| "not yet".to_owned())
        }
    })
    .await;
    assert_eq!(receipts.note, "Patrol informed at Sher Khan Bandar");
    assert_eq!(
        receipts.recipient.map(|o| o.urn),
        Some(AF_OFFICE.to_owned())
    );
    to_page.write_all(b"checked\n").await.expect("to the page");

    let done = next().await;
    let figures: serde_json::Value =
        serde_json::from_str(done.strip_prefix("done ").expect("done")).expect("json");
    eprintln!("console in Chromium: {figures}");
    assert!(
        figures["liveMs"].as_u64().is_some_and(|ms| ms < 5000),
        "{figures}"
    );
    drop(to_page);
    let status = tokio::time::timeout(PATIENCE, node.wait())
        .await
        .expect("the script ends")
        .expect("node");
    assert!(status.success());
    for shot in [
        "console-feed.png",
        "console-detail.png",
        "console-compose.png",
    ] {
        assert!(
            shots.join(shot).metadata().is_ok_and(|m| m.len() > 10_000),
            "{shot}"
        );
    }
    // The officer's composed alert went out under the officer's node.
    let mut office = broker.client(AF_OFFICE).await;
    let mine = wait_for_broker_alerts(&mut office, 3).await;
    assert!(
        mine.iter().any(|r| r.alert.as_ref().is_some_and(|a| {
            a.headline == "Rifles under a load of melons"
                && a.origin.as_ref().is_some_and(|o| o.urn == AF_OFFICE)
        })),
        "{:?}",
        headlines(&mine)
    );
}
