//! kill -9 of either broker in the middle of a federation transfer: every
//! alert arrives once, in order — nothing lost, nothing doubled. The broker
//! that is killed runs as a child process (`liaison serve --config` with a
//! `[[peer]]` entry, as an operator runs it); its peer runs in this process.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use liaison::client;
use liaison::federation::PeerConfig;
use liaison::proto as pb;
use liaison_testkit::*;

/// Alerts published in one go: enough for the transfer to take a while.
const N: usize = 4000;

const POLICY: &str = r#"
[[node]]
match = "TJ"
role = "post"

[[node]]
match = "AF"
role = "liaison_office"

[[agreement]]
between = ["TJ", "AF"]
categories = ["drugs"]
max_tlp = "amber"
"#;

/// A `serve` configuration file: the policy and one peer.
fn config_file(dir: &Path, peer: &str, country: &str, ca: &Path, url: Option<&str>) -> PathBuf {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let url = url.map_or(String::new(), |u| format!("url = \"{u}\"\n"));
    let text = format!(
        "policy = \"{}\"\n\n[[peer]]\nname = \"{peer}\"\nbroker = \"{}\"\nca = \"{}\"\n{url}",
        policy.display(),
        broker_of(country),
        ca.display()
    );
    let file = dir.join("serve.toml");
    std::fs::write(&file, text).expect("config");
    file
}

fn serve_child(pki: &Pki, data: &Path, config: &Path, listen: &str) -> ServeProcess {
    let mut cmd = ServeProcess::command(pki.path(), data);
    cmd.arg("--config").arg(config).args(["--listen", listen]);
    ServeProcess::spawn(cmd)
}

fn alerts(n: usize) -> (Vec<pb::Alert>, Vec<String>) {
    let alerts: Vec<pb::Alert> = (0..n)
        .map(|i| alert(pb::Category::Drugs, &format!("crossing {i:05}")))
        .collect();
    let headlines = alerts.iter().map(|a| a.headline.clone()).collect();
    (alerts, headlines)
}

/// Waits until the office's broker holds every alert, then checks that it
/// holds each once, in publication order.
async fn holds_all_once_in_order(office: &mut Client, expected: &[String]) {
    let got = wait_for_broker_alerts(office, expected.len()).await;
    let ids: HashSet<&str> = got
        .iter()
        .filter_map(|r| r.alert.as_ref().map(|a| a.id.as_str()))
        .collect();
    assert_eq!(ids.len(), got.len(), "an alert stored twice");
    assert_eq!(headlines(&got), expected, "in publication order");
}

/// The number of alerts `office` can see now.
async fn count(office: &mut Client) -> usize {
    broker_alerts(office).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exporting_broker_killed_mid_transfer_loses_and_doubles_nothing() {
    let (tj_pki, af_pki) = (Pki::national("TJ"), Pki::national("AF"));
    let tj_ca = tj_pki.ca_path();
    let af_policy = af_pki.path().join("policy.toml");
    std::fs::write(&af_policy, POLICY).expect("policy");
    let af = TestBroker::start_in(af_pki, |c| {
        c.policy_file = Some(af_policy);
        c.federation.peers = vec![PeerConfig {
            name: "tj".into(),
            broker: broker_of("TJ"),
            ca: tj_ca,
            crl: None,
            countries: vec![broker_of("TJ").country()],
            url: None,
        }];
    })
    .await;
    let work = tempfile::tempdir().expect("tmp");
    let config = config_file(work.path(), "af", "AF", &af.pki.ca_path(), Some(&af.url()));
    let data = work.path().join("tj-data");
    let tj = serve_child(&tj_pki, &data, &config, "127.0.0.1:0");
    let mut post = client::connect(&tj.url, Some(&tj_pki.node(TJ_POST)))
        .await
        .expect("connect");
    let (batch, expected) = alerts(N);
    publish_many(&mut post, batch).await;
    let mut office = af.client(AF_OFFICE).await;
    let seen = eventually("the transfer has begun", || {
        let mut office = office.clone();
        async move {
            match count(&mut office).await {
                0 => Err("nothing yet"),
                n => Ok(n),
            }
        }
    })
    .await;
    tj.kill9();
    eprintln!("killed the exporting broker with {seen} of {N} transferred");
    let _tj = serve_child(&tj_pki, &data, &config, "127.0.0.1:0");
    holds_all_once_in_order(&mut office, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_importing_broker_killed_mid_transfer_loses_and_doubles_nothing() {
    let (tj_pki, af_pki) = (Pki::national("TJ"), Pki::national("AF"));
    let work = tempfile::tempdir().expect("tmp");
    // A port of its own, so that the restarted broker is where TJ dials.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let af_config = config_file(work.path(), "tj", "TJ", &tj_pki.ca_path(), None);
    let af_data = work.path().join("af-data");
    let af = serve_child(&af_pki, &af_data, &af_config, &listen);
    let tj_policy = tj_pki.path().join("policy.toml");
    std::fs::write(&tj_policy, POLICY).expect("policy");
    let af_ca = af_pki.ca_path();
    let af_url = af.url.clone();
    let tj = TestBroker::start_in(tj_pki, |c| {
        c.policy_file = Some(tj_policy);
        c.federation.peers = vec![PeerConfig {
            name: "af".into(),
            broker: broker_of("AF"),
            ca: af_ca,
            crl: None,
            countries: vec![broker_of("AF").country()],
            url: Some(af_url),
        }];
        c.federation.link.backoff_min = std::time::Duration::from_millis(50);
        c.federation.link.backoff_max = std::time::Duration::from_millis(500);
    })
    .await;
    let mut post = tj.client(TJ_POST).await;
    let (batch, expected) = alerts(N);
    publish_many(&mut post, batch).await;
    let office_files = af_pki.node(AF_OFFICE);
    let office = client::connect(&af.url, Some(&office_files))
        .await
        .expect("connect");
    let seen = eventually("the transfer has begun", || {
        let mut office = office.clone();
        async move {
            match count(&mut office).await {
                0 => Err("nothing yet"),
                n => Ok(n),
            }
        }
    })
    .await;
    af.kill9();
    eprintln!("killed the importing broker with {seen} of {N} transferred");
    let af = serve_child(&af_pki, &af_data, &af_config, &listen);
    let mut office = client::connect(&af.url, Some(&office_files))
        .await
        .expect("connect");
    holds_all_once_in_order(&mut office, &expected).await;
}
