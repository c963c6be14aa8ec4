//! The command line as the README uses it: certs, serve, publish,
//! subscribe, get, history, run as separate processes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use common::ServeProcess;

fn liaison(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run liaison")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn certs_init_and_issue_write_the_documented_layout() {
    let dir = tempfile::tempdir().expect("tmp");
    ok(liaison(
        &[
            "certs",
            "init",
            "--dir",
            "pki",
            "--host",
            "broker.tj.example",
        ],
        dir.path(),
    ));
    ok(liaison(
        &[
            "certs",
            "issue",
            "--dir",
            "pki",
            "--node",
            "urn:liaison:TJ:border-guard:ishkashim",
            "--name",
            "ishkashim",
        ],
        dir.path(),
    ));
    for f in [
        "ca.crt",
        "ca.key",
        "broker.crt",
        "broker.key",
        "ishkashim.crt",
        "ishkashim.key",
    ] {
        let meta = std::fs::metadata(dir.path().join("pki").join(f)).expect(f);
        if f.ends_with(".key") {
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
        }
        let text = std::fs::read_to_string(dir.path().join("pki").join(f)).expect(f);
        assert!(text.starts_with("-----BEGIN"), "{f} is PEM");
    }
    // A second init does not silently replace the CA; a bad URN is refused.
    assert!(
        !liaison(&["certs", "init", "--dir", "pki"], dir.path())
            .status
            .success()
    );
    let bad = liaison(
        &[
            "certs",
            "issue",
            "--dir",
            "pki",
            "--node",
            "urn:liaison:tj:x:y",
            "--name",
            "x",
        ],
        dir.path(),
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a liaison identity"));

    // Revocation writes a signed list beside the CA; a second time is a no-op.
    let revoked = ok(liaison(
        &["certs", "revoke", "--dir", "pki", "--name", "ishkashim"],
        dir.path(),
    ));
    assert!(revoked.contains("revoked ishkashim.crt"), "{revoked}");
    let crl = std::fs::read_to_string(dir.path().join("pki/ca.crl")).expect("ca.crl");
    assert!(crl.starts_with("-----BEGIN X509 CRL"), "{crl}");
    let again = ok(liaison(
        &["certs", "revoke", "--dir", "pki", "--name", "ishkashim"],
        dir.path(),
    ));
    assert!(
        again.contains("already revoked") && again.contains("(1 revoked)"),
        "{again}"
    );
    let missing = liaison(
        &["certs", "revoke", "--dir", "pki", "--name", "nobody"],
        dir.path(),
    );
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nobody.crt"));
}

#[test]
fn quick_start_serve_issue_publish_subscribe_get() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    ok(liaison(&["certs", "init", "--dir", "certs"], d));
    let server = ServeProcess::start(&d.join("certs"), &d.join("data"));
    let url = server.url.clone();
    ok(liaison(
        &[
            "certs",
            "issue",
            "--dir",
            "certs",
            "--node",
            "urn:liaison:TJ:border-guard:ishkashim",
            "--name",
            "ishkashim",
        ],
        d,
    ));
    ok(liaison(
        &[
            "certs",
            "issue",
            "--dir",
            "certs",
            "--node",
            "urn:liaison:AF:border-police:sher-khan",
            "--name",
            "sher-khan",
        ],
        d,
    ));

    let ack = ok(liaison(
        &[
            "publish",
            "--broker",
            &url,
            "--certs",
            "certs",
            "--name",
            "ishkashim",
            "--category",
            "drugs",
            "--severity",
            "severe",
            "--urgency",
            "immediate",
            "--certainty",
            "observed",
            "--headline",
            "42 kg of heroin seized",
            "--tlp",
            "amber",
            "--releasable-to",
            "AF",
            "--param",
            "seizure_kg=42",
            "--crossing-point",
            "TJ-ISHK",
        ],
        d,
    ));
    let ack: serde_json::Value = serde_json::from_str(ack.trim()).expect("ack is JSON");
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["duplicate"], false);
    let id = ack["id"].as_str().expect("id").to_owned();

    let line = ok(liaison(
        &[
            "subscribe",
            "--broker",
            &url,
            "--certs",
            "certs",
            "--name",
            "sher-khan",
            "--feed",
            "main",
            "--from",
            "all",
            "--category",
            "drugs",
            "--json",
            "--limit",
            "1",
        ],
        d,
    ));
    let delivered: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    assert_eq!(delivered["alert"]["id"], id.as_str());
    assert_eq!(
        delivered["alert"]["origin"]["urn"],
        "urn:liaison:TJ:border-guard:ishkashim"
    );
    assert_eq!(delivered["alert"]["parameters"][0]["integer"], 42);

    // The feed acknowledged it: resuming finds nothing old, only what is new.
    ok(liaison(
        &[
            "publish",
            "--broker",
            &url,
            "--certs",
            "certs",
            "--name",
            "ishkashim",
            "--category",
            "drugs",
            "--tlp",
            "green",
            "--headline",
            "second",
        ],
        d,
    ));
    let line = ok(liaison(
        &[
            "subscribe",
            "--broker",
            &url,
            "--certs",
            "certs",
            "--name",
            "sher-khan",
            "--feed",
            "main",
            "--json",
            "--limit",
            "1",
        ],
        d,
    ));
    let delivered: serde_json::Value = serde_json::from_str(line.trim()).expect("JSON");
    assert_eq!(delivered["alert"]["headline"], "second");

    let got = ok(liaison(
        &[
            "get",
            "--broker",
            &url,
            "--certs",
            "certs",
            "--name",
            "sher-khan",
            &id,
            "--json",
        ],
        d,
    ));
    let got: serde_json::Value = serde_json::from_str(got.trim()).expect("JSON");
    assert_eq!(got["alert"]["marking"]["tlp"], "amber");

    let history = ok(liaison(
        &[
            "history",
            "--broker",
            &url,
            "--certs",
            "certs",
            "--name",
            "ishkashim",
            "--json",
        ],
        d,
    ));
    assert_eq!(history.lines().count(), 2);

    // The same alert from JSON on standard input, with explicit --ca/--cert/--key.
    let json = serde_json::json!({
        "id": id, "sent": "2026-01-01T00:00:00Z", "status": "actual", "msg_type": "alert",
        "category": "drugs", "urgency": "immediate", "severity": "severe", "certainty": "observed",
        "headline": "42 kg of heroin seized", "marking": {"tlp": "amber", "releasable_to": ["AF"]}
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args([
            "publish",
            "--broker",
            &url,
            "--ca",
            "certs/ca.crt",
            "--cert",
            "certs/ishkashim.crt",
            "--key",
            "certs/ishkashim.key",
            "--json",
            "-",
        ])
        .current_dir(d)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(json.to_string().as_bytes())
        .expect("write");
    let out = ok(child.wait_with_output().expect("wait"));
    let dup: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(dup["duplicate"], true, "same id: the original ack");
    assert_eq!(dup["seq"], 1);

    // A refused alert says which field and why.
    let bad = liaison(
        &[
            "publish",
            "--broker",
            &url,
            "--certs",
            "certs",
            "--name",
            "ishkashim",
            "--category",
            "drugs",
            "--headline",
            "x",
            "--tlp",
            "red",
        ],
        d,
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("INVALID_ARGUMENT: alert.marking.recipients"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // The audit trail of the running broker (no policy: any node may look).
    let admin = |extra: &[&str]| {
        let mut args = vec![
            "admin",
            "audit",
            "--broker",
            &url,
            "--certs",
            "certs",
            "--name",
            "ishkashim",
        ];
        args.extend_from_slice(extra);
        ok(liaison(&args, d))
    };
    let verified = admin(&["--verify"]);
    assert!(verified.starts_with("audit trail intact: "), "{verified}");
    let trail = admin(&[]);
    let first: serde_json::Value =
        serde_json::from_str(trail.lines().next().expect("a record")).expect("json");
    assert_eq!(first["seq"], 1);
    assert!(
        trail.lines().any(|l| l.contains("\"published\"")),
        "{trail}"
    );
    server.kill9();
}

#[test]
fn a_post_publishes_through_its_agent_with_no_certificate_flags() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    ok(liaison(&["certs", "init", "--dir", "certs"], d));
    ok(liaison(
        &[
            "certs",
            "issue",
            "--dir",
            "certs",
            "--node",
            "urn:liaison:TJ:border-guard:ishkashim",
            "--name",
            "ishkashim",
        ],
        d,
    ));
    let server = ServeProcess::start(&d.join("certs"), &d.join("data"));
    let mut agent = Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args([
            "agent",
            "--upstream",
            &server.url,
            "--certs",
            "certs",
            "--name",
            "ishkashim",
            "--listen",
            "127.0.0.1:0",
            "--data",
            "agent-data",
        ])
        .current_dir(d)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("agent");
    let mut line = String::new();
    BufReader::new(agent.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("readiness");
    let local = line
        .trim()
        .strip_prefix("liaison agent: listening on ")
        .expect("readiness line")
        .to_owned();
    assert!(local.starts_with("http://127.0.0.1:"));

    let ack = ok(liaison(
        &[
            "publish",
            "--broker",
            &local,
            "--category",
            "arms",
            "--severity",
            "extreme",
            "--headline",
            "cache found",
        ],
        d,
    ));
    let ack: serde_json::Value = serde_json::from_str(ack.trim()).expect("JSON");
    let id = ack["id"].as_str().expect("id").to_owned();

    // Forwarded upstream under the post's identity (bounded wait).
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        let status = ok(liaison(
            &["agent", "status", "--agent", &local, "--json"],
            d,
        ));
        let status: serde_json::Value = serde_json::from_str(status.trim()).expect("JSON");
        if status["forwarded_total"] == 1 {
            assert_eq!(status["outbox_depth"], 0);
            assert_eq!(status["identity"], "urn:liaison:TJ:border-guard:ishkashim");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never forwarded: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let got = ok(liaison(
        &[
            "get",
            "--broker",
            &server.url,
            "--certs",
            "certs",
            "--name",
            "ishkashim",
            &id,
            "--json",
        ],
        d,
    ));
    let got: serde_json::Value = serde_json::from_str(got.trim()).expect("JSON");
    assert_eq!(
        got["alert"]["origin"]["urn"],
        "urn:liaison:TJ:border-guard:ishkashim"
    );
    agent.kill().expect("kill agent");
    let _ = agent.wait();
    server.kill9();
}

#[test]
fn configuration_files_are_checked_with_lines_and_flags_override_them() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    for example in ["liaison.example.toml", "agent.example.toml"] {
        let out = ok(liaison(
            &[
                "config",
                "check",
                repo.join(example).to_str().expect("utf-8"),
            ],
            d,
        ));
        assert!(out.contains("valid"), "{out}");
    }
    std::fs::write(
        d.join("bad.toml"),
        "data = \"x\"\nlisten = \"nowhere\"\nretain = \"soon\"\ncolour = \"red\"\n",
    )
    .expect("write");
    let bad = liaison(&["config", "check", "bad.toml"], d);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("bad.toml:4: `colour` is not a setting of `serve`"),
        "{stderr}"
    );
    assert!(stderr.contains("bad.toml:3: retain:"), "{stderr}");

    // A broker from a file: its data directory comes from the file, the
    // listen address from the flag typed after it.
    ok(liaison(&["certs", "init", "--dir", "pki"], d));
    std::fs::write(
        d.join("broker.toml"),
        "listen = \"127.0.0.1:1\"\ndata = \"from-file\"\ncerts = \"pki\"\nmetrics = \"off\"\n",
    )
    .expect("write");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_liaison"));
    cmd.args([
        "serve",
        "--config",
        "broker.toml",
        "--listen",
        "127.0.0.1:0",
    ])
    .current_dir(d);
    let server = ServeProcess::spawn(cmd);
    ok(liaison(
        &[
            "certs",
            "issue",
            "--dir",
            "pki",
            "--node",
            "urn:liaison:TJ:border-guard:ishkashim",
            "--name",
            "p",
        ],
        d,
    ));
    let ack = ok(liaison(
        &[
            "publish",
            "--broker",
            &server.url,
            "--certs",
            "pki",
            "--name",
            "p",
            "--category",
            "drugs",
            "--headline",
            "x",
            "--param",
            "kg=4",
            "--param",
            "plate=01A",
        ],
        d,
    ));
    let ack: serde_json::Value = serde_json::from_str(ack.trim()).expect("JSON");
    let got = ok(liaison(
        &[
            "get",
            "--broker",
            &server.url,
            "--certs",
            "pki",
            "--name",
            "p",
            ack["id"].as_str().expect("id"),
            "--json",
        ],
        d,
    ));
    let got: serde_json::Value = serde_json::from_str(got.trim()).expect("JSON");
    assert_eq!(
        got["alert"]["parameters"].as_array().expect("params").len(),
        2,
        "repeated flags still add up"
    );
    assert!(
        d.join("from-file").is_dir(),
        "the data directory came from the file"
    );
    server.kill9();
}

#[test]
fn the_demo_region_runs_and_its_verdict_reports_nothing_lost_or_leaked() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = liaison(&["demo", "--duration", "10s"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(last.starts_with("verdict: published "), "{last}");
    assert!(last.ends_with(", lost 0, leaked 0"), "{last}");
    let published: u64 = last
        .trim_start_matches("verdict: published ")
        .split(',')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .expect("a count");
    assert!(published > 50, "{last}");
    assert!(stdout.contains("published"), "a live summary was printed");
}

#[test]
fn every_bench_workload_runs_and_reports_json() {
    let dir = tempfile::tempdir().expect("tmp");
    let runs: [&[&str]; 8] = [
        &["bench", "idle", "--feeds", "150", "--json"],
        &["bench", "publish", "--window", "4", "--secs", "1", "--json"],
        &[
            "bench", "publish", "--window", "4", "--secs", "1", "--stream", "--json",
        ],
        &["bench", "e2e", "--rate", "200", "--secs", "1", "--json"],
        &["bench", "fanout", "--feeds", "3", "--count", "50", "--json"],
        &["bench", "drain", "--count", "300", "--json"],
        &["bench", "restart", "--count", "300", "--json"],
        &[
            "bench", "soak", "--nodes", "12", "--feeds", "3", "--rate", "5", "--secs", "2",
            "--sample", "1", "--json",
        ],
    ];
    for args in runs {
        let out = ok(liaison(args, dir.path()));
        let report: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
        for key in ["workload", "msgs_per_s", "p50_us", "p99_us", "count"] {
            assert!(report.get(key).is_some(), "{args:?}: no {key} in {report}");
        }
        assert!(
            report["count"].as_u64().unwrap_or(0) > 0,
            "{args:?}: {report}"
        );
        if args[1] == "soak" {
            assert_eq!(report["errors"], 0, "{report}");
            assert!(
                report["samples"].as_array().is_some_and(|s| !s.is_empty()),
                "{report}"
            );
            assert!(
                report["rss_max_mib"].as_f64().unwrap_or(0.0) > 0.0,
                "{report}"
            );
        }
    }
}
