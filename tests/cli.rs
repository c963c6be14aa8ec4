//! The command line as the README uses it: certs, serve, publish,
//! subscribe, get, history, run as separate processes.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use liaison_testkit::{Cli, ServeProcess};

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
    let cli = Cli::new(dir.path());
    cli.ok(&[
        "certs",
        "init",
        "--dir",
        "pki",
        "--host",
        "broker.tj.example",
    ]);
    cli.ok(&[
        "certs",
        "issue",
        "--dir",
        "pki",
        "--node",
        "urn:liaison:TJ:border-guard:ishkashim",
        "--name",
        "ishkashim",
    ]);
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
    assert!(!cli.run(&["certs", "init", "--dir", "pki"]).status.success());
    let bad = cli.run(&[
        "certs",
        "issue",
        "--dir",
        "pki",
        "--node",
        "urn:liaison:tj:x:y",
        "--name",
        "x",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a liaison identity"));

    // Revocation writes a signed list beside the CA; a second time is a no-op.
    let revoked = cli.ok(&["certs", "revoke", "--dir", "pki", "--name", "ishkashim"]);
    assert!(revoked.contains("revoked ishkashim.crt"), "{revoked}");
    let crl = std::fs::read_to_string(dir.path().join("pki/ca.crl")).expect("ca.crl");
    assert!(crl.starts_with("-----BEGIN X509 CRL"), "{crl}");
    let again = cli.ok(&["certs", "revoke", "--dir", "pki", "--name", "ishkashim"]);
    assert!(
        again.contains("already revoked") && again.contains("(1 revoked)"),
        "{again}"
    );
    let missing = cli.run(&["certs", "revoke", "--dir", "pki", "--name", "nobody"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nobody.crt"));
}

#[test]
fn quick_start_serve_issue_publish_subscribe_get() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let cli = Cli::new(d);
    cli.ok(&["certs", "init", "--dir", "certs"]);
    let server = ServeProcess::start(&d.join("certs"), &d.join("data"));
    let url = server.url.clone();
    cli.ok(&[
        "certs",
        "issue",
        "--dir",
        "certs",
        "--node",
        "urn:liaison:TJ:border-guard:ishkashim",
        "--name",
        "ishkashim",
    ]);
    cli.ok(&[
        "certs",
        "issue",
        "--dir",
        "certs",
        "--node",
        "urn:liaison:AF:border-police:sher-khan",
        "--name",
        "sher-khan",
    ]);

    let ack = cli.node(&url, "certs", "ishkashim").ok(&[
        "publish",
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
    ]);
    let ack: serde_json::Value = serde_json::from_str(ack.trim()).expect("ack is JSON");
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["duplicate"], false);
    let id = ack["id"].as_str().expect("id").to_owned();

    let line = cli.node(&url, "certs", "sher-khan").ok(&[
        "subscribe",
        "--feed",
        "main",
        "--from",
        "all",
        "--category",
        "drugs",
        "--json",
        "--limit",
        "1",
    ]);
    let delivered: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    assert_eq!(delivered["alert"]["id"], id.as_str());
    assert_eq!(
        delivered["alert"]["origin"]["urn"],
        "urn:liaison:TJ:border-guard:ishkashim"
    );
    assert_eq!(delivered["alert"]["parameters"][0]["integer"], 42);

    // The feed acknowledged it: resuming finds nothing old, only what is new.
    cli.node(&url, "certs", "ishkashim").ok(&[
        "publish",
        "--category",
        "drugs",
        "--tlp",
        "green",
        "--headline",
        "second",
    ]);
    let line = cli.node(&url, "certs", "sher-khan").ok(&[
        "subscribe",
        "--feed",
        "main",
        "--json",
        "--limit",
        "1",
    ]);
    let delivered: serde_json::Value = serde_json::from_str(line.trim()).expect("JSON");
    assert_eq!(delivered["alert"]["headline"], "second");

    let got = cli
        .node(&url, "certs", "sher-khan")
        .ok(&["get", &id, "--json"]);
    let got: serde_json::Value = serde_json::from_str(got.trim()).expect("JSON");
    assert_eq!(got["alert"]["marking"]["tlp"], "amber");

    let history = cli
        .node(&url, "certs", "ishkashim")
        .ok(&["history", "--json"]);
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
    let bad = cli.node(&url, "certs", "ishkashim").run(&[
        "publish",
        "--category",
        "drugs",
        "--headline",
        "x",
        "--tlp",
        "red",
    ]);
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
        cli.ok(&args)
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
    let cli = Cli::new(d);
    cli.ok(&["certs", "init", "--dir", "certs"]);
    cli.ok(&[
        "certs",
        "issue",
        "--dir",
        "certs",
        "--node",
        "urn:liaison:TJ:border-guard:ishkashim",
        "--name",
        "ishkashim",
    ]);
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

    let ack = cli.ok(&[
        "publish",
        "--broker",
        &local,
        "--category",
        "arms",
        "--severity",
        "extreme",
        "--headline",
        "cache found",
    ]);
    let ack: serde_json::Value = serde_json::from_str(ack.trim()).expect("JSON");
    let id = ack["id"].as_str().expect("id").to_owned();

    // Forwarded upstream under the post's identity (bounded wait).
    let deadline = std::time::Instant::now() + liaison_testkit::PATIENCE;
    loop {
        let status = cli.ok(&["agent", "status", "--agent", &local, "--json"]);
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
    let got = cli.ok(&[
        "get",
        "--broker",
        &server.url,
        "--certs",
        "certs",
        "--name",
        "ishkashim",
        &id,
        "--json",
    ]);
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
    let cli = Cli::new(d);
    for example in ["liaison.example.toml", "agent.example.toml"] {
        let out = cli.ok(&[
            "config",
            "check",
            repo.join(example).to_str().expect("utf-8"),
        ]);
        assert!(out.contains("valid"), "{out}");
    }
    std::fs::write(
        d.join("bad.toml"),
        "data = \"x\"\nlisten = \"nowhere\"\nretain = \"soon\"\ncolour = \"red\"\n",
    )
    .expect("write");
    let bad = cli.run(&["config", "check", "bad.toml"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("bad.toml:4: `colour` is not a setting of `serve`"),
        "{stderr}"
    );
    assert!(stderr.contains("bad.toml:3: retain:"), "{stderr}");

    // A broker from a file: its data directory comes from the file, the
    // listen address from the flag typed after it.
    cli.ok(&["certs", "init", "--dir", "pki"]);
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
    cli.ok(&[
        "certs",
        "issue",
        "--dir",
        "pki",
        "--node",
        "urn:liaison:TJ:border-guard:ishkashim",
        "--name",
        "p",
    ]);
    let ack = cli.ok(&[
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
    ]);
    let ack: serde_json::Value = serde_json::from_str(ack.trim()).expect("JSON");
    let got = cli.ok(&[
        "get",
        "--broker",
        &server.url,
        "--certs",
        "pki",
        "--name",
        "p",
        ack["id"].as_str().expect("id"),
        "--json",
    ]);
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
    let stdout = demo(&["demo", "--duration", "10s"]);
    assert!(stdout.contains("(1 broker(s) checked)"), "{stdout}");
}

#[test]
fn the_federated_demo_region_runs_and_its_verdict_reports_nothing_lost_or_leaked() {
    let stdout = demo(&["demo", "--federated", "--duration", "10s"]);
    assert!(stdout.contains("6 national brokers"), "{stdout}");
    assert!(
        stdout.contains("every alert stored once per broker (6 broker(s) checked)"),
        "{stdout}"
    );
}

/// Runs a demo; its output, once it ended with a clean verdict.
fn demo(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let cli = Cli::new(dir.path());
    let out = cli.run(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
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
    stdout
}

#[test]
fn every_bench_workload_runs_and_reports_json() {
    let dir = tempfile::tempdir().expect("tmp");
    let cli = Cli::new(dir.path());
    let runs: [&[&str]; 9] = [
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
            "bench",
            "federation",
            "--count",
            "300",
            "--rate",
            "100",
            "--secs",
            "1",
            "--json",
        ],
        &[
            "bench", "soak", "--nodes", "12", "--feeds", "3", "--rate", "5", "--secs", "2",
            "--sample", "1", "--json",
        ],
    ];
    for args in runs {
        let out = cli.ok(args);
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
