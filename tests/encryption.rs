//! Encryption at rest and the emergency wipe (docs/security.md): what a
//! seized laptop's disk gives away, what the right and the wrong key do,
//! and what a wipe leaves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use liaison::flaky::{FlakyProxy, Mode};
use liaison::proto as pb;
use liaison::store::KeySource;
use liaison_testkit::*;
use tokio_util::sync::CancellationToken;

/// Words no other test writes, in the headline and the description.
const SECRET: &str = "ZEBRA-CROSSING-7731";
const SECRET_TOO: &str = "heroin in a fuel tanker, plates 01-KX-774";

/// Every file under `dir` holding `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read file");
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(p);
                }
            }
        }
    }
    found
}

/// Every file under `dir` with its contents (to prove nothing changed).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

/// An upstream nobody listens on: the post is cut off.
const CUT_OFF: &str = "https://127.0.0.1:9";

/// A PKI with the post's certificate, `post`, for `liaison agent`
/// processes.
fn post_pki() -> Pki {
    let pki = Pki::new();
    liaison::pki::issue_node(
        pki.path(),
        &TJ_POST.parse().expect("urn"),
        "post",
        30,
        false,
    )
    .expect("issue");
    pki
}

/// `liaison agent` as the post on `data`, its store encrypted with
/// `key_file`, cut off from its broker.
fn cut_off_agent(pki: &Pki, data: &Path, key_file: &Path) -> Command {
    let mut c = AgentProcess::command(CUT_OFF, pki.path(), "post", data);
    c.arg("--key-file").arg(key_file);
    c
}

fn secret_alert(i: usize) -> pb::Alert {
    let mut a = alert(pb::Category::Drugs, &format!("{SECRET} seizure {i}"));
    a.description = SECRET_TOO.into();
    a
}

/// Publishes secret alerts through an agent (with a key file when
/// `encrypted`), lets them forward, has one come down into its inbox, and
/// returns which files of its stopped data directory hold the secrets.
async fn secrets_left_by_an_agent(encrypted: bool) -> Vec<PathBuf> {
    let broker = TestBroker::start().await;
    let keys = tempfile::tempdir().expect("tmp");
    let key_file = keys.path().join("post.key");
    let mut agent = TestAgent::start(&broker, &broker.url(), TJ_POST, |c| {
        if encrypted {
            c.store.key = Some(KeySource::File(key_file.clone()));
        }
    })
    .await;
    let mut local = agent.client().await;
    for i in 0..20 {
        publish(&mut local, secret_alert(i)).await;
    }
    let mut officer = broker.client(AF_OFFICE).await;
    wait_for_broker_alerts(&mut officer, 20).await;
    // One for the post, into its inbox.
    let mut centre = broker.client(TJ_CUSTOMS).await;
    publish(&mut centre, secret_alert(99)).await;
    agent
        .wait_until("forwarded, and the inbox has the centre's alert", |s| {
            s.outbox_depth == 0 && s.inbox_total >= 1
        })
        .await;
    agent.stop().await;
    let data = agent.config.data_dir.clone();
    assert!(
        std::fs::read_dir(&data).expect("data dir").count() > 0,
        "the store wrote its files"
    );
    assert_eq!(key_file.exists(), encrypted, "a key file only when asked");
    if encrypted {
        assert!(
            files_holding(keys.path(), SECRET.as_bytes()).is_empty(),
            "nor is it in the key file"
        );
    }
    let mut found = files_holding(&data, SECRET.as_bytes());
    found.extend(files_holding(&data, SECRET_TOO.as_bytes()));
    found
}

#[tokio::test]
async fn an_encrypted_agent_leaves_no_headline_in_its_files_and_a_clear_one_does() {
    // Without encryption the search finds the words (so it works)...
    let clear = secrets_left_by_an_agent(false).await;
    assert!(
        !clear.is_empty(),
        "a store without encryption holds the headline in clear"
    );
    // ...and with it, no file of the data directory holds them: not sled's
    // files (forwarded, deleted outbox values included), not the
    // write-ahead log.
    let sealed = secrets_left_by_an_agent(true).await;
    assert!(sealed.is_empty(), "found in clear in {sealed:?}");
}

#[tokio::test]
async fn the_right_key_reopens_the_store_and_a_wrong_key_or_none_is_refused_with_nothing_changed() {
    let broker = TestBroker::start().await;
    let proxy = FlakyProxy::start(broker.addr, Mode::Cut)
        .await
        .expect("proxy");
    let keys = tempfile::tempdir().expect("tmp");
    let key_file = keys.path().join("post.key");
    let mut agent = TestAgent::start(&broker, &proxy.url(), TJ_POST, |c| {
        c.store.key = Some(KeySource::File(key_file.clone()));
    })
    .await;
    let mut local = agent.client().await;
    for i in 0..10 {
        publish(&mut local, secret_alert(i)).await;
    }
    agent.stop().await;
    let data = agent.config.data_dir.clone();
    let before = snapshot(&data);

    let refused = |key: Option<KeySource>| {
        let mut config = agent.config.clone();
        config.store.key = key;
        async move {
            match liaison::agent::open(config, CancellationToken::new()).await {
                Ok(_) => panic!("the agent opened its store"),
                Err(e) => e.to_string(),
            }
        }
    };
    let e = refused(None).await;
    assert!(
        e.contains("encrypted") && e.contains("--key-file"),
        "no key: {e}"
    );
    let other = keys.path().join("other.key");
    liaison::store::vault::new_key_file(&other).expect("key file");
    let e = refused(Some(KeySource::File(other))).await;
    assert!(e.contains("not this store's key"), "wrong key: {e}");
    let e = refused(Some(KeySource::Passphrase(
        "a passphrase of some length".to_owned().into(),
    )))
    .await;
    assert!(
        e.contains("key file"),
        "a passphrase for a key-file store: {e}"
    );
    let e = refused(Some(KeySource::File(keys.path().join("gone.key")))).await;
    assert!(e.contains("gone.key"), "a missing key file is named: {e}");
    assert!(
        snapshot(&data) == before,
        "a refused start changes nothing in the data directory"
    );

    // The right key: the queued alerts are there and go upstream.
    agent.restart().await;
    assert_eq!(agent.status().await.outbox_depth, 10);
    proxy.set(Mode::Pass);
    let mut officer = broker.client(AF_OFFICE).await;
    let got = wait_for_broker_alerts(&mut officer, 10).await;
    assert!(headlines(&got).iter().all(|h| h.starts_with(SECRET)));
}

#[tokio::test]
async fn a_passphrase_store_reopens_with_its_passphrase_only() {
    let broker = TestBroker::start().await;
    let pass = |p: &str| Some(KeySource::Passphrase(p.to_owned().into()));
    let mut agent = TestAgent::start(&broker, &broker.url(), TJ_POST, |c| {
        c.store.key = pass("correct horse battery staple");
    })
    .await;
    let mut local = agent.client().await;
    publish(&mut local, secret_alert(1)).await;
    agent.stop().await;
    let mut config = agent.config.clone();
    config.store.key = pass("wrong horse battery staple");
    let e = liaison::agent::open(config, CancellationToken::new())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("passphrase is wrong"), "{e}");
    agent.restart().await;
    agent
        .wait_until("reopened and forwarded", |s| s.forwarded_total >= 1)
        .await;
}

#[tokio::test]
async fn an_encrypted_broker_keeps_its_alerts_sealed_and_reads_them_after_a_restart() {
    let keys = tempfile::tempdir().expect("tmp");
    let key_file = keys.path().join("broker.key");
    let mut broker = TestBroker::start_with(|c| {
        c.store.key = Some(KeySource::File(key_file.clone()));
    })
    .await;
    let mut post = broker.client(TJ_POST).await;
    for i in 0..5 {
        publish(&mut post, secret_alert(i)).await;
    }
    let mut officer = broker.client(AF_OFFICE).await;
    let got = wait_for_broker_alerts(&mut officer, 5).await;
    assert_eq!(got.len(), 5);
    broker.restart().await;
    let mut officer = broker.client(AF_OFFICE).await;
    assert_eq!(
        broker_alerts(&mut officer).await.len(),
        5,
        "read back after a restart"
    );
    broker.stop().await;
    let found = files_holding(&broker.data_dir(), SECRET.as_bytes());
    assert!(found.is_empty(), "found in clear in {found:?}");

    // The audit trail of the stopped broker, verified offline: with the key
    // (its records are sealed too), and refused without it.
    let verify = |key: Option<&Path>| {
        let mut c = Command::new(liaison_bin());
        c.args(["audit", "verify", "--data"]).arg(broker.data_dir());
        if let Some(k) = key {
            c.arg("--key-file").arg(k);
        }
        c.env_remove("LIAISON_KEY_FILE")
            .output()
            .expect("audit verify")
    };
    let out = verify(Some(&key_file));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("intact"), "{said}");
    let out = verify(None);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("encrypted"),
        "{said}"
    );
}

#[test]
fn wipe_destroys_the_keys_stops_the_agent_and_leaves_nothing_readable() {
    let t = tempfile::tempdir().expect("tmp");
    let pki = post_pki();
    let data = t.path().join("agent-data");
    let key_file = t.path().join("keys/post.key");
    // A running encrypted agent (its upstream unreachable: the post is cut
    // off), with a queued alert.
    let mut agent = AgentProcess::spawn(cut_off_agent(&pki, &data, &key_file));
    assert!(key_file.exists() && data.join("vault").exists());

    let out = Command::new(liaison_bin())
        .args(["agent", "wipe", "--json", "--data"])
        .arg(&data)
        .arg("--key-file")
        .arg(&key_file)
        .output()
        .expect("wipe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        report["keys_destroyed"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert_eq!(report["data_removed"], true);
    assert_eq!(
        report["agents_stopped"],
        serde_json::json!([agent.child.id()]),
        "the running agent, which holds the key in memory, is stopped"
    );
    assert!(
        report["took_ms"].as_f64().expect("took") < 1000.0,
        "{report}"
    );
    assert!(!key_file.exists() && !data.exists());
    let status = agent.child.wait().expect("reaped");
    assert!(!status.success(), "killed");

    // A store whose key is gone (the data left behind) refuses to start.
    let data2 = t.path().join("second");
    let key2 = t.path().join("second.key");
    drop(AgentProcess::spawn(cut_off_agent(&pki, &data2, &key2)));
    std::fs::remove_file(&key2).expect("key gone");
    let (status, said) = run_to_exit(cut_off_agent(&pki, &data2, &key2));
    assert!(!status.success());
    assert!(
        said.contains("second.key") && said.contains("wiped"),
        "names the missing key: {said}"
    );
}

#[tokio::test]
async fn acknowledged_alerts_of_an_encrypted_agent_survive_kill_9() {
    let t = tempfile::tempdir().expect("tmp");
    let pki = post_pki();
    let data = t.path().join("agent-data");
    let key_file = t.path().join("post.key");
    let agent = AgentProcess::spawn(cut_off_agent(&pki, &data, &key_file));
    let mut local = liaison::client::connect(&agent.url, None)
        .await
        .expect("connect");
    let mut ids = Vec::new();
    for i in 0..50 {
        let a = secret_alert(i);
        ids.push(a.id.clone());
        publish(&mut local, a).await;
    }
    // Acknowledged, then SIGKILL: no shutdown, no checkpoint.
    agent.kill9();
    let agent = AgentProcess::spawn(cut_off_agent(&pki, &data, &key_file));
    let status = agent_status(&agent.url).await;
    assert_eq!(
        status.outbox_depth, 50,
        "every acknowledged alert is queued"
    );
    let mut local = liaison::client::connect(&agent.url, None)
        .await
        .expect("connect");
    for id in [&ids[0], &ids[49]] {
        let got = local
            .get_alert(pb::GetAlertRequest { id: id.clone() })
            .await
            .expect("read back")
            .into_inner();
        let headline = got.alert.map(|a| a.headline);
        assert!(headline.is_some_and(|h| h.starts_with(SECRET)));
    }
    drop(agent);
    assert!(files_holding(&data, SECRET.as_bytes()).is_empty());
}

#[test]
fn rekey_moves_an_agent_from_a_key_file_to_a_passphrase() {
    let t = tempfile::tempdir().expect("tmp");
    let pki = post_pki();
    let data = t.path().join("agent-data");
    let key_file = t.path().join("post.key");
    drop(AgentProcess::spawn(cut_off_agent(&pki, &data, &key_file)));

    let out = Command::new(liaison_bin())
        .args(["agent", "rekey", "--new-passphrase", "--data"])
        .arg(&data)
        .arg("--key-file")
        .arg(&key_file)
        .env("LIAISON_NEW_PASSPHRASE", "the officer's new passphrase")
        .output()
        .expect("rekey");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The old key file no longer opens it; the passphrase does.
    let (status, said) = run_to_exit(cut_off_agent(&pki, &data, &key_file));
    assert!(!status.success());
    assert!(said.contains("passphrase"), "{said}");
    let mut new = AgentProcess::command(CUT_OFF, pki.path(), "post", &data);
    new.arg("--passphrase")
        .env("LIAISON_PASSPHRASE", "the officer's new passphrase");
    drop(AgentProcess::spawn(new));
}
