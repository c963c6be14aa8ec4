//! The policy commands an operator runs against a live broker, and what a
//! broker's log looks like when it goes to a file.

use std::process::{Command, Output, Stdio};

use liaison_testkit::*;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const POLICY: &str = r#"
[[node]]
match = "TJ"
role = "post"
publish = ["drugs"]

[[node]]
match = "urn:liaison:TJ:border-guard:admin"
role = "administrator"
subscribe = false

[[agreement]]
between = ["TJ", "AF"]
categories = ["drugs"]
max_tlp = "amber"
"#;

#[test]
fn policy_check_shows_what_a_file_would_change_and_reload_puts_it_in_force() {
    let dir = tempfile::tempdir().expect("tmp");
    let cli = Cli::new(dir.path());
    let certs = dir.path().join("certs");
    assert!(
        cli.run(&["certs", "init", "--dir", "certs"])
            .status
            .success()
    );
    let issue = cli.run(&[
        "certs",
        "issue",
        "--dir",
        "certs",
        "--node",
        "urn:liaison:TJ:border-guard:admin",
        "--name",
        "admin",
    ]);
    assert!(issue.status.success(), "{}", text(&issue));
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let mut cmd = ServeProcess::command(&certs, &dir.path().join("data"));
    cmd.arg("--policy").arg(&policy);
    let server = ServeProcess::spawn(cmd);

    // An empty file is not a policy, and says why.
    std::fs::write(dir.path().join("empty.toml"), "").expect("write");
    let empty = cli.run(&["policy", "check", "empty.toml"]);
    assert!(!empty.status.success());
    assert!(text(&empty).contains("no_nodes = true"), "{}", text(&empty));

    // A new version, checked against the policy in force.
    let new = POLICY.replace(r#"max_tlp = "amber""#, r#"max_tlp = "green""#)
        + "\n[[node]]\nmatch = \"AF\"\nrole = \"liaison_office\"\n";
    std::fs::write(dir.path().join("new.toml"), &new).expect("write");
    let admin = cli.node(&server.url, "certs", "admin");
    let check = admin.run(&["policy", "check", "new.toml"]);
    assert!(check.status.success(), "{}", text(&check));
    let out = text(&check);
    assert!(out.contains("valid (3 nodes, 1 agreements)"), "{out}");
    assert!(out.contains("+ node AF (liaison_office"), "{out}");
    assert!(
        out.contains("+ agreement TJ-AF (drugs up to green)"),
        "{out}"
    );
    assert!(
        out.contains("- agreement TJ-AF (drugs up to amber)"),
        "{out}"
    );

    // Checking changed nothing; reloading the broker's own file does.
    let reload = ["policy", "reload"];
    let same = admin.run(&reload);
    assert!(same.status.success(), "{}", text(&same));
    assert!(text(&same).contains("no change"), "{}", text(&same));
    std::fs::write(&policy, &new).expect("write");
    let applied = admin.run(&reload);
    assert!(applied.status.success(), "{}", text(&applied));
    assert!(text(&applied).contains("+ node AF"), "{}", text(&applied));

    // A cut file is refused, and the broker says so.
    std::fs::write(&policy, new.split("[[agreement]]").next().expect("half")).expect("write");
    let refused = admin.run(&reload);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("FailedPrecondition") || text(&refused).contains("was refused"),
        "{}",
        text(&refused)
    );
}

#[test]
fn a_broker_logging_to_a_file_writes_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("broker.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics", "off"])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("serve");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("ready");
    assert!(line.starts_with("liaison: listening"), "{line}");
    let _ = child.kill();
    let _ = child.wait();
    let written = std::fs::read_to_string(&log).expect("log");
    assert!(written.contains("WARN"), "{written}");
    assert!(
        !written.contains('\u{1b}'),
        "colour codes in a file: {written:?}"
    );
}
