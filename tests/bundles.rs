//! Offline bundles (docs/bundles.md): a cut-off post's alerts carried to
//! the centre on a stick and the receipt carried back; the centre's alerts
//! carried to the post's inbox and its receipt back; the same alerts later
//! arriving by link stored once; and every bad bundle refused with nothing
//! stored.

use liaison::bundle::{self, BundleError, Party, Peer};
use liaison::proto as pb;
use liaison::proto::admin_client::AdminClient;
use liaison::store::{Store, StoreConfig};
use liaison_testkit::*;
use tonic::transport::Channel;

/// An upstream nobody listens on: the post is cut off.
const CUT_OFF: &str = "https://127.0.0.1:9";

async fn admin(broker: &TestBroker) -> AdminClient<Channel> {
    let channel = liaison::client::endpoint(&broker.url(), Some(&broker.pki.node(TJ_CUSTOMS)))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    AdminClient::new(channel)
        .max_decoding_message_size(bundle::MAX_FILE_BYTES + 4096)
        .max_encoding_message_size(bundle::MAX_FILE_BYTES + 4096)
}

async fn import(
    broker: &TestBroker,
    file: Vec<u8>,
    expect: &str,
) -> Result<pb::ImportBundleResponse, tonic::Status> {
    admin(broker)
        .await
        .import_bundle(pb::ImportBundleRequest {
            bundle: file,
            expect: expect.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The post's keys and the broker's certificate, as `liaison bundle` at
/// the post reads them.
fn post_side(broker: &TestBroker, urn: &str) -> (Party, Peer) {
    let party = Party::load(&broker.pki.node(urn)).expect("post keys");
    let centre = Peer::load(&broker.pki.broker_files().cert).expect("broker cert");
    (party, centre)
}

/// A post: its agent's data directory, run by `liaison agent` processes
/// (cut off, or linked to the broker) and, stopped, by bundle commands.
struct Post {
    data: tempfile::TempDir,
    certs: std::path::PathBuf,
}

impl Post {
    fn new(broker: &TestBroker) -> Post {
        broker.pki.node(TJ_POST);
        Post {
            data: tempfile::tempdir().expect("tmp"),
            certs: broker.pki.path().to_owned(),
        }
    }

    fn agent(&self, upstream: &str) -> AgentProcess {
        AgentProcess::start(upstream, &self.certs, &cert_name(TJ_POST), self.data.path())
    }

    /// Publishes at a cut-off agent, then stops it.
    async fn publish_cut_off(&self, alerts: Vec<pb::Alert>) -> Vec<String> {
        let agent = self.agent(CUT_OFF);
        let mut local = agent.client().await;
        let mut ids = Vec::new();
        for a in alerts {
            ids.push(publish(&mut local, a).await.id);
        }
        drop(local);
        stop(agent).await;
        ids
    }

    /// The stopped agent's store, as `liaison bundle --agent-data` opens it.
    fn store(&self) -> Store {
        Store::open(self.data.path(), StoreConfig::default()).expect("agent store")
    }
}

/// Stops an agent process, the runtime running meanwhile (so that the
/// connections of dropped clients close and it need not wait for them).
async fn stop(agent: AgentProcess) {
    let status = tokio::task::spawn_blocking(move || agent.terminate())
        .await
        .expect("join");
    assert!(status.success(), "{status:?}");
}

async fn export_outbox(post: &Post, broker: &TestBroker) -> bundle::post::Exported {
    let (party, centre) = post_side(broker, TJ_POST);
    let store = post.store();
    let exported = bundle::post::export(&store, &party, &centre, 10_000, 32 << 20).expect("export");
    store.close().await.expect("close");
    exported
}

async fn ack_outbox(
    post: &Post,
    broker: &TestBroker,
    receipt: &[u8],
) -> Result<bundle::post::Acked, BundleError> {
    let (party, centre) = post_side(broker, TJ_POST);
    let store = post.store();
    let acked = bundle::post::ack(&store, &party, &centre, receipt).await;
    store.close().await.expect("close");
    acked
}

fn count(records: &[pb::AlertRecord], headline: &str) -> usize {
    headlines(records).iter().filter(|h| *h == headline).count()
}

#[tokio::test]
async fn a_cut_off_posts_alerts_travel_by_bundle_and_the_receipt_empties_exactly_its_outbox() {
    let broker = TestBroker::start().await;
    let post = Post::new(&broker);
    let first = post
        .publish_cut_off(
            (0..5)
                .map(|i| {
                    let mut a = alert(pb::Category::Drugs, &format!("bundle one #{i}"));
                    if i == 3 {
                        a.urgency = pb::Urgency::Immediate as i32;
                    }
                    a
                })
                .collect(),
        )
        .await;
    let b1 = export_outbox(&post, &broker).await;
    assert_eq!((b1.alerts, b1.remaining), (5, 0));
    // Published after the export: not in the bundle, so not acknowledged.
    post.publish_cut_off(
        (0..2)
            .map(|i| alert(pb::Category::Drugs, &format!("bundle two #{i}")))
            .collect(),
    )
    .await;

    let answer = import(&broker, b1.file.clone(), "alerts")
        .await
        .expect("import");
    assert_eq!(
        (
            answer.stored,
            answer.duplicates,
            answer.refused,
            answer.retry
        ),
        (5, 0, 0, 0)
    );
    assert_eq!(answer.from, TJ_POST);
    let mut officer = broker.client(TJ_CUSTOMS).await;
    let stored = broker_alerts(&mut officer).await;
    assert_eq!(stored.len(), 5);
    for r in &stored {
        let a = r.alert.as_ref().expect("alert");
        assert_eq!(
            a.origin.as_ref().expect("origin").urn,
            TJ_POST,
            "stored under the post's identity"
        );
        assert!(first.contains(&a.id), "same ids as at the post");
    }

    let acked = ack_outbox(&post, &broker, &answer.receipt)
        .await
        .expect("ack");
    assert_eq!(
        acked.removed, 5,
        "exactly the receipt's alerts leave the outbox"
    );
    let store = post.store();
    let stats = store.outbox_stats().expect("stats");
    assert_eq!((stats.depth, stats.forwarded), (2, 5));
    store.close().await.expect("close");
    drop(store);
    // A receipt is applied once.
    let again = ack_outbox(&post, &broker, &answer.receipt).await;
    assert!(
        matches!(again, Err(BundleError::Replayed { .. })),
        "{again:?}"
    );

    // The second bundle is imported, its receipt lost; then the link comes
    // back and carries the same two alerts: stored once.
    let b2 = export_outbox(&post, &broker).await;
    assert_eq!(b2.alerts, 2);
    let answer2 = import(&broker, b2.file, "alerts").await.expect("import 2");
    assert_eq!(answer2.stored, 2);
    let linked = post.agent(&broker.url());
    eventually("the link drained the outbox", || async {
        let s = agent_status(&linked.url).await;
        if s.outbox_depth == 0 {
            Ok(())
        } else {
            Err(s.outbox_depth)
        }
    })
    .await;
    stop(linked).await;
    let stored = broker_alerts(&mut officer).await;
    assert_eq!(stored.len(), 7, "{:?}", headlines(&stored));
    for i in 0..2 {
        assert_eq!(count(&stored, &format!("bundle two #{i}")), 1);
    }
    // The late receipt changes nothing now.
    let late = ack_outbox(&post, &broker, &answer2.receipt)
        .await
        .expect("late ack");
    assert_eq!(late.removed, 0);

    // And a bundle of an alert that came by link first: a duplicate.
    let dup = alert(pb::Category::Arms, "came by link first");
    post.publish_cut_off(vec![dup.clone()]).await;
    let b3 = export_outbox(&post, &broker).await;
    publish(&mut broker.client(TJ_POST).await, dup).await;
    let answer3 = import(&broker, b3.file, "alerts").await.expect("import 3");
    assert_eq!((answer3.stored, answer3.duplicates), (0, 1));
    assert_eq!(broker_alerts(&mut officer).await.len(), 8);
}

#[tokio::test]
async fn the_centres_alerts_reach_a_cut_off_posts_inbox_and_its_receipt_moves_the_feed() {
    let broker = TestBroker::start().await;
    // Commissioned while connected: its inbox feed exists at the broker.
    let mut agent = TestAgent::start(&broker, &broker.url(), TJ_POST, |_| {}).await;
    let mut centre = broker.client(TJ_CUSTOMS).await;
    publish(&mut centre, alert(pb::Category::Drugs, "by link")).await;
    agent
        .wait_until("the inbox has the first", |s| s.inbox_total == 1)
        .await;
    agent.stop().await;

    for i in 0..3 {
        publish(
            &mut centre,
            alert(pb::Category::Drugs, &format!("by stick #{i}")),
        )
        .await;
    }
    let post_cert = std::fs::read(&broker.pki.node(TJ_POST).cert).expect("cert");
    let export = |max| {
        let cert = post_cert.clone();
        let broker = &broker;
        async move {
            admin(broker)
                .await
                .export_bundle(pb::ExportBundleRequest {
                    recipient_certificate: cert,
                    feed: String::new(),
                    max_alerts: max,
                    max_bytes: 0,
                })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let out = export(2).await.expect("export");
    assert_eq!(
        (out.alerts, out.remaining),
        (2, 1),
        "limits leave the rest for the next"
    );
    let out = export(0).await.expect("export");
    assert_eq!(
        (out.alerts, out.remaining),
        (3, 0),
        "nothing moves before the receipt"
    );

    let (party, centre_cert) = post_side(&broker, TJ_POST);
    let dir = agent.config.data_dir.clone();
    let store = eventually("the stopped agent's store opens", || {
        let dir = dir.clone();
        async move { Store::open(&dir, StoreConfig::default()) }
    })
    .await;
    let core = liaison::broker::Broker::new(
        store.clone(),
        liaison::broker::BrokerConfig::default(),
        tokio_util::sync::CancellationToken::new(),
    );
    let imported = bundle::post::import(&core, &party, &centre_cert, &out.bundle)
        .await
        .expect("import at the post");
    assert_eq!(imported.counts.stored, 3);
    let replay = bundle::post::import(&core, &party, &centre_cert, &out.bundle).await;
    assert!(
        matches!(replay, Err(BundleError::Replayed { .. })),
        "{replay:?}"
    );
    assert_eq!(
        store.outbox_stats().expect("stats").depth,
        0,
        "inbox alerts are not forwarded back"
    );
    drop(core);
    store.close().await.expect("close");
    drop(store);

    // An alert bundle is not a receipt: refused, nothing done.
    let wrong = import(&broker, out.bundle.clone(), "receipt")
        .await
        .expect_err("not for the broker");
    assert_eq!(wrong.code(), tonic::Code::InvalidArgument, "{wrong:?}");
    let answer = import(&broker, imported.receipt.clone(), "receipt")
        .await
        .expect("receipt");
    assert_eq!(answer.acknowledged, 3);
    let after = export(0).await.expect("export");
    assert_eq!(
        after.alerts, 0,
        "the feed's cursor moved past what the post has"
    );

    // The link comes back: only what is new comes down.
    agent.config.upstream = broker.url();
    agent.restart().await;
    publish(&mut centre, alert(pb::Category::Drugs, "by link again")).await;
    let status = agent
        .wait_until("the inbox has the newest", |s| s.inbox_total >= 5)
        .await;
    assert_eq!(status.inbox_total, 5, "nothing came down twice");
    // While the post is online, the link serves its feed.
    let busy = export(0).await.expect_err("feed busy");
    assert_eq!(busy.code(), tonic::Code::FailedPrecondition, "{busy:?}");
    agent.stop().await;
}

/// A bundle of one alert from `party` to the broker.
fn outbox_bundle(party: &Party, to: &Peer, headline: &str) -> Vec<u8> {
    let mut a = alert(pb::Category::Drugs, headline);
    a.origin = Some(pb::Origin {
        urn: TJ_POST.into(),
        ..Default::default()
    });
    party
        .seal(
            to,
            pb::bundle_body::Content::Outbox(pb::BundleAlerts { alerts: vec![a] }),
        )
        .expect("seal")
        .1
}

#[tokio::test]
async fn bad_bundles_are_refused_with_a_clear_message_and_nothing_stored() {
    let broker = TestBroker::start().await;
    let (party, centre) = post_side(&broker, TJ_POST);
    let good = outbox_bundle(&party, &centre, "good");

    let mut tampered = good.clone();
    let at = tampered.len() - 40;
    tampered[at] ^= 0x01;
    let truncated = good[..good.len() - 100].to_vec();

    // Signed by a post of another state's PKI, encrypted to this broker.
    let foreign = Pki::new();
    let stranger = Party::load(&foreign.node(TJ_POST)).expect("stranger");
    let forged = outbox_bundle(&stranger, &centre, "forged");

    // Addressed to another broker.
    let other = Pki::new();
    let elsewhere = Peer::load(&other.broker_files().cert).expect("other broker");
    let misaddressed = outbox_bundle(&party, &elsewhere, "elsewhere");

    // A receipt-shaped bundle the broker did not ask for, and noise.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("tampered", tampered, "does not decrypt"),
        ("truncated", truncated, "damaged or truncated"),
        ("foreign-signed", forged, "signer is not trusted"),
        ("wrongly addressed", misaddressed, "not to this node"),
        (
            "not a bundle",
            b"-----BEGIN CERTIFICATE-----".to_vec(),
            "not a liaison bundle",
        ),
    ];
    for (what, file, says) in cases {
        let refused = import(&broker, file, "alerts").await.expect_err(what);
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{what}: {refused:?}"
        );
        assert!(
            refused.message().contains(says),
            "{what}: {}",
            refused.message()
        );
    }
    let mut officer = broker.client(TJ_CUSTOMS).await;
    assert!(
        broker_alerts(&mut officer).await.is_empty(),
        "nothing of a refused bundle is stored"
    );

    // The good one goes in once; its replay is refused.
    let ok = import(&broker, good.clone(), "alerts").await.expect("good");
    assert_eq!(ok.stored, 1);
    let replay = import(&broker, good, "alerts").await.expect_err("replay");
    assert_eq!(replay.code(), tonic::Code::AlreadyExists, "{replay:?}");
    assert!(
        replay.message().contains("taken in once"),
        "{}",
        replay.message()
    );

    // A revoked post's bundles are refused from the moment of revocation.
    let late = outbox_bundle(&party, &centre, "after revocation");
    liaison::pki::revoke(broker.pki.path(), &cert_name(TJ_POST)).expect("revoke");
    let revoked = import(&broker, late, "alerts").await.expect_err("revoked");
    assert!(
        revoked.message().contains("signer is not trusted"),
        "{}",
        revoked.message()
    );
    assert_eq!(broker_alerts(&mut officer).await.len(), 1);

    // The refusals are in the audit trail.
    let mut trail = admin(&broker)
        .await
        .audit(pb::AdminAuditRequest { from_seq: 1 })
        .await
        .expect("audit")
        .into_inner();
    let mut refusals = 0;
    while let Some(e) = trail.message().await.expect("entry") {
        refusals += usize::from(e.kind == "bundle_refused");
    }
    assert_eq!(refusals, 7);
}

#[tokio::test]
async fn a_post_takes_receipts_only_from_its_broker_and_whole() {
    let broker = TestBroker::start().await;
    let post = Post::new(&broker);
    post.publish_cut_off(vec![alert(pb::Category::Drugs, "queued")])
        .await;
    let b = export_outbox(&post, &broker).await;
    let answer = import(&broker, b.file, "alerts").await.expect("import");

    let mut tampered = answer.receipt.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x80;
    // A receipt-shaped bundle from another node of the same CA.
    let (neighbour, _) = post_side(&broker, TJ_POST_2);
    let (me, _) = post_side(&broker, TJ_POST);
    let not_the_broker = neighbour
        .seal(
            me.me(),
            pb::bundle_body::Content::Receipt(pb::BundleReceipt {
                bundle: b.id.to_string(),
                items: Vec::new(),
                feed: String::new(),
            }),
        )
        .expect("seal")
        .1;
    for (what, file, says) in [
        ("tampered", tampered, "does not decrypt"),
        ("not the broker's", not_the_broker, "not the broker"),
    ] {
        let refused = ack_outbox(&post, &broker, &file).await.expect_err(what);
        assert!(refused.to_string().contains(says), "{what}: {refused}");
    }
    let store = post.store();
    assert_eq!(
        store.outbox_stats().expect("stats").depth,
        1,
        "nothing left the outbox"
    );
    store.close().await.expect("close");
    drop(store);
    let acked = ack_outbox(&post, &broker, &answer.receipt)
        .await
        .expect("the real one");
    assert_eq!(acked.removed, 1);
}

/// The README's round trip, command by command: an encrypted agent cut
/// off, its bundle to the centre and the receipt back, and the centre's
/// alerts to the post's inbox and the post's receipt back.
#[tokio::test]
async fn the_readme_round_trip_works_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let run = Cli::new(dir.path());
    run.ok(&["certs", "init", "--dir", "certs"]);
    for (urn, name) in [
        (TJ_POST, "ishkashim"),
        ("urn:liaison:TJ:border-guard:admin", "admin"),
    ] {
        run.ok(&[
            "certs", "issue", "--dir", "certs", "--node", urn, "--name", name,
        ]);
    }
    let certs = dir.path().join("certs");
    let broker = ServeProcess::start(&certs, &dir.path().join("data"));
    let admin = run.node(&broker.url, "certs", "admin");
    let key = ["--key-file", "post-key/ishkashim.key"];
    let post = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend([
            "--agent-data",
            "post-data",
            "--certs",
            "certs",
            "--name",
            "ishkashim",
        ]);
        all.extend(key);
        run.ok(&all)
    };

    // The post, cut off, encrypted at rest.
    let mut cmd =
        AgentProcess::command(CUT_OFF, &certs, "ishkashim", &dir.path().join("post-data"));
    cmd.current_dir(dir.path()).args(key);
    let agent = AgentProcess::spawn(cmd);
    let agent_cli = Cli::new(dir.path());
    for i in 0..3 {
        agent_cli.ok(&[
            "publish",
            "--broker",
            &agent.url,
            "--category",
            "drugs",
            "--severity",
            "severe",
            "--headline",
            &format!("Convoy {i} at the ford"),
        ]);
    }
    stop(agent).await;

    let said = post(&["bundle", "export", "--out", "ishkashim-1.bundle"]);
    assert!(said.contains("with 3 queued alerts"), "{said}");
    let on_the_stick = std::fs::read(dir.path().join("ishkashim-1.bundle")).expect("bundle");
    assert!(
        !on_the_stick.windows(6).any(|w| w == b"Convoy"),
        "the bundle holds the headline in clear"
    );
    let said = admin.ok(&["bundle", "import", "ishkashim-1.bundle"]);
    assert!(said.contains("3 stored"), "{said}");
    let said = post(&["bundle", "ack", "ishkashim-1.bundle.receipt"]);
    assert!(
        said.contains("3 alerts left the outbox, 0 still queued"),
        "{said}"
    );
    // Replays are refused, with the reason.
    let again = admin.run(&["bundle", "import", "ishkashim-1.bundle"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("ALREADY_EXISTS"));

    // The other way: the centre's alert to the post's inbox.
    admin.ok(&[
        "publish",
        "--category",
        "drugs",
        "--severity",
        "severe",
        "--headline",
        "Centre warns",
    ]);
    let said = admin.ok(&[
        "bundle",
        "export",
        "--for",
        "certs/ishkashim.crt",
        "--out",
        "to-ishkashim.bundle",
    ]);
    assert!(said.contains("with 1 alerts"), "{said}");
    let said = post(&["bundle", "import", "to-ishkashim.bundle"]);
    assert!(said.contains("1 stored"), "{said}");
    let said = admin.ok(&["bundle", "ack", "to-ishkashim.bundle.receipt"]);
    assert!(
        said.contains("1 deliveries of its feed acknowledged"),
        "{said}"
    );
    let said = admin.ok(&[
        "bundle",
        "export",
        "--for",
        "certs/ishkashim.crt",
        "--out",
        "none.bundle",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&said).expect("json");
    assert_eq!(v["alerts"], 0, "{said}");
    drop(broker);
}
