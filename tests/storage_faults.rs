//! An operator's disk, power and files: a disk that fills up, a
//! write-ahead log damaged or cut or deleted after a crash, database files
//! that are damaged. Nothing acknowledged is dropped quietly, no sequence
//! number is given out twice, and every refusal names what is wrong.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use liaison::client;
use liaison::proto as pb;
use liaison_testkit::*;
use tonic::Code;

/// A small tmpfs of our own, so that its disk can be filled without
/// touching the machine's. Unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with a note on standard error) where mounting is not
    /// allowed; CI runs as root, where it is.
    fn mount(mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tmp");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file until the disk has less than `leave` bytes
    /// free (0: until it is full).
    fn fill(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0x5au8; 64 * 1024];
        loop {
            let free = liaison::store::free_bytes(self.path()).expect("statvfs");
            if free <= leave || (leave == 0 && free == 0) {
                break;
            }
            let n = usize::try_from(free.saturating_sub(leave))
                .unwrap_or(usize::MAX)
                .clamp(1, chunk.len());
            if f.write_all(&chunk[..n]).is_err() {
                break; // full
            }
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A broker whose data directory is on `fs`, with small WAL files.
async fn broker_on(fs: &Tmpfs, reserve: u64) -> TestBroker {
    let data = fs.path().join("store");
    TestBroker::start_with(|c| {
        c.data_dir = data;
        c.store.wal.file_bytes = 2 * 1024 * 1024;
        c.store.min_free_bytes = reserve;
        // A ballast in proportion to the 64 MiB disk.
        c.store.ballast_bytes = 8 * 1024 * 1024;
        c.store.cache_bytes = 8 * 1024 * 1024;
    })
    .await
}

/// Publishes until the broker refuses; returns the refusal.
async fn publish_until_refused(post: &Client) -> tonic::Status {
    eventually("the broker refuses alerts on a full disk", || {
        let mut post = post.clone();
        async move {
            post.publish(pb::PublishRequest {
                alert: Some(alert(pb::Category::Drugs, "on a full disk")),
            })
            .await
            .err()
            .ok_or("accepted")
        }
    })
    .await
}

async fn health(broker: &TestBroker) -> i32 {
    let channel = client::endpoint(&broker.url(), Some(&broker.pki.node(TJ_POST)))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "liaison.v1.Broker".into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status
}

async fn writes(broker: &TestBroker) -> String {
    let channel = client::endpoint(&broker.url(), Some(&broker.pki.node(TJ_POST)))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    pb::admin_client::AdminClient::new(channel)
        .stats(pb::AdminStatsRequest {})
        .await
        .expect("stats")
        .into_inner()
        .writes
}

async fn wait_for_health(broker: &TestBroker, serving: bool) {
    use tonic_health::pb::health_check_response::ServingStatus;
    let want = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    } as i32;
    eventually(&format!("health becomes {want}"), || async {
        (health(broker).await == want).then_some(()).ok_or(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_reserve_alerts_are_refused_reads_go_on_and_writes_resume_without_a_restart()
 {
    let Some(fs) = Tmpfs::mount(64) else { return };
    let mut broker = broker_on(&fs, 8 * 1024 * 1024).await;
    let mut post = broker.client(TJ_POST).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(publish(&mut post, alert(pb::Category::Drugs, &format!("{i}"))).await);
    }
    let filler = fs.fill(4 * 1024 * 1024);

    let refused = publish_until_refused(&post).await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("below the reserve")
            && refused.message().contains("nothing was stored"),
        "{refused:?}"
    );
    // Every refusal says the same, streamed ones too.
    let answers = post
        .publish_stream(tokio_stream::iter((0..5).map(|_| pb::PublishRequest {
            alert: Some(alert(pb::Category::Drugs, "streamed")),
        })))
        .await
        .expect("stream")
        .into_inner();
    let answers: Vec<_> = tokio_stream::StreamExt::collect::<Vec<_>>(answers).await;
    assert_eq!(answers.len(), 5);
    for a in answers {
        match a.expect("answer").result {
            Some(pb::publish_stream_response::Result::Error(e)) => {
                assert_eq!(e.code, Code::ResourceExhausted as i32, "{e:?}")
            }
            other => panic!("accepted on a full disk: {other:?}"),
        }
    }
    // Reads of what was acknowledged keep working, every one of them.
    for ack in &acked {
        post.get_alert(pb::GetAlertRequest { id: ack.id.clone() })
            .await
            .expect("an acknowledged alert is readable on a full disk");
    }
    wait_for_health(&broker, false).await;
    assert!(
        writes(&broker).await.starts_with("refused: "),
        "{}",
        writes(&broker).await
    );

    // Room again: accepted again, without a restart.
    std::fs::remove_file(filler).expect("remove filler");
    wait_for_health(&broker, true).await;
    let after = publish(&mut post, alert(pb::Category::Drugs, "room again")).await;
    assert!(after.seq > acked[19].seq);
    assert_eq!(writes(&broker).await, "accepting");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_full_to_the_last_byte_refuses_with_resource_exhausted_loses_nothing_and_shuts_down_cleanly()
 {
    let Some(fs) = Tmpfs::mount(64) else { return };
    // No reserve: the disk fills up for real.
    let mut broker = broker_on(&fs, 0).await;
    let mut post = broker.client(TJ_POST).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(publish(&mut post, alert(pb::Category::Drugs, &format!("{i}"))).await);
    }
    let filler = fs.fill(0);
    // Some publishes may still find room (the WAL file is allocated ahead);
    // once refused, every refusal is RESOURCE_EXHAUSTED.
    let mut refusals = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while refusals < 10 {
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        match post
            .publish(pb::PublishRequest {
                alert: Some(alert(pb::Category::Drugs, "full")),
            })
            .await
        {
            Ok(ack) => {
                assert_eq!(refusals, 0, "accepted after a refusal");
                acked.push(ack.into_inner());
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                refusals += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The store's ballast gave what sled still had to write its room.
    let ballast = fs.path().join("store").join("ballast");
    assert!(!ballast.exists(), "the ballast is released on a full disk");
    for ack in &acked {
        post.get_alert(pb::GetAlertRequest { id: ack.id.clone() })
            .await
            .expect("an acknowledged alert is readable on a full disk");
    }
    wait_for_health(&broker, false).await;
    // A shutdown on a full disk is clean.
    broker.stop().await;

    // With room again, a restart finds every acknowledged alert.
    std::fs::remove_file(filler).expect("remove filler");
    broker.restart().await;
    let mut post = broker.client(TJ_POST).await;
    for ack in &acked {
        let got = post
            .get_alert(pb::GetAlertRequest { id: ack.id.clone() })
            .await
            .expect("every acknowledged alert survived")
            .into_inner();
        assert_eq!(got.seq, ack.seq);
    }
    assert!(ballast.exists(), "with room again, the ballast is back");
    let next = publish(&mut post, alert(pb::Category::Drugs, "after")).await;
    assert!(
        acked.iter().all(|a| a.seq < next.seq),
        "a sequence number was reused"
    );
}

/// Publishes `n` alerts one at a time to a `liaison serve` child and kills
/// it with SIGKILL; returns the acknowledgements.
async fn publish_then_kill(pki: &Pki, data: &Path, n: usize) -> Vec<pb::PublishResponse> {
    // No checkpoint meanwhile: every record stays one the restart needs.
    let server = ServeProcess::spawn(serve_with(pki, data, &["--checkpoint-interval", "1h"]));
    let mut post = client::connect(&server.url, Some(&pki.node(TJ_POST)))
        .await
        .expect("connect");
    let mut acked = Vec::new();
    for i in 0..n {
        acked.push(
            publish(
                &mut post,
                alert(pb::Category::Drugs, &format!("alert number {i:03}")),
            )
            .await,
        );
    }
    server.kill9();
    acked
}

/// Flips one byte of the first occurrence of `needle` in `file`.
fn flip_in(file: &Path, needle: &[u8]) {
    let mut bytes = std::fs::read(file).expect("read");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the text is in the file");
    bytes[at] ^= 0x20;
    std::fs::write(file, bytes).expect("write");
}

fn serve_with(pki: &Pki, data: &Path, extra: &[&str]) -> Command {
    let mut cmd = ServeProcess::command(pki.path(), data);
    cmd.args(extra);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_write_ahead_log_refuses_to_start_until_the_operator_chooses_and_no_sequence_is_reused()
 {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("tmp");
    let store = data.path().join("store");
    let acked = publish_then_kill(&pki, &store, 30).await;
    let wal = store.join("wal/0.log");
    flip_in(&wal, b"alert number 012");

    // Refused, naming the file, the offset and the LSN, and never said to
    // be listening.
    let (status, stderr) = run_to_exit(serve_with(&pki, &store, &[]));
    assert!(!status.success());
    assert!(!stderr.contains("listening"), "{stderr}");
    assert!(
        stderr.contains("write-ahead log is damaged")
            && stderr.contains("0.log")
            && stderr.contains("offset")
            && stderr.contains("LSN")
            && stderr.contains("--wal-recovery"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The offline tools say the same instead of a clean bill of health.
    let mut verify = Command::new(env!("CARGO_BIN_EXE_liaison"));
    verify.args(["audit", "verify", "--data"]).arg(&store);
    let (status, stderr) = run_to_exit(verify);
    assert!(!status.success());
    assert!(stderr.contains("write-ahead log is damaged"), "{stderr}");

    // The operator keeps what comes before the damage.
    let server = ServeProcess::spawn(serve_with(
        &pki,
        &store,
        &["--wal-recovery", "point-in-time"],
    ));
    let mut post = client::connect(&server.url, Some(&pki.node(TJ_POST)))
        .await
        .expect("connect");
    for (i, ack) in acked.iter().enumerate() {
        let found = post
            .get_alert(pb::GetAlertRequest { id: ack.id.clone() })
            .await;
        assert_eq!(found.is_ok(), i < 12, "alert {i}: {found:?}");
    }
    // No sequence number once acknowledged is given to another alert.
    let next = publish(&mut post, alert(pb::Category::Drugs, "after recovery")).await;
    assert!(
        acked.iter().all(|a| a.seq < next.seq),
        "seq {} reused",
        next.seq
    );
    // The choice is in the audit trail.
    let channel = client::endpoint(&server.url, Some(&pki.node(TJ_POST)))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut trail = pb::admin_client::AdminClient::new(channel)
        .audit(pb::AdminAuditRequest { from_seq: 1 })
        .await
        .expect("audit")
        .into_inner();
    let mut recovery = None;
    while let Some(e) = trail.message().await.expect("entry") {
        if e.kind == "recovery" {
            recovery = Some(e);
        }
    }
    let recovery = recovery.expect("a recovery record");
    assert!(recovery.actor.contains("point-in-time"), "{recovery:?}");
    assert!(recovery.detail.contains("0.log"), "{recovery:?}");
    drop(server);

    // Once chosen, the damage is behind the checkpoint: the next start is
    // an ordinary one.
    let server = ServeProcess::start(pki.path(), &store);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_damaged_keeps_every_intact_record_after_the_damage() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("tmp");
    let store = data.path().join("store");
    let acked = publish_then_kill(&pki, &store, 30).await;
    flip_in(&store.join("wal/0.log"), b"alert number 012");
    let server = ServeProcess::spawn(serve_with(
        &pki,
        &store,
        &["--wal-recovery", "skip-damaged"],
    ));
    let mut post = client::connect(&server.url, Some(&pki.node(TJ_POST)))
        .await
        .expect("connect");
    for (i, ack) in acked.iter().enumerate() {
        let found = post
            .get_alert(pb::GetAlertRequest { id: ack.id.clone() })
            .await;
        assert_eq!(found.is_ok(), i != 12, "alert {i}: {found:?}");
    }
    let next = publish(&mut post, alert(pb::Category::Drugs, "after recovery")).await;
    assert!(acked.iter().all(|a| a.seq < next.seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_or_deleted_log_after_a_crash_is_refused_but_not_after_a_clean_stop() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("tmp");
    let store = data.path().join("store");
    publish_then_kill(&pki, &store, 10).await;
    let wal = store.join("wal/0.log");
    let saved = std::fs::read(&wal).expect("read");

    // Cut.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .and_then(|f| f.set_len(2000))
        .expect("truncate");
    let (status, stderr) = run_to_exit(serve_with(&pki, &store, &[]));
    assert!(!status.success() && stderr.contains("was cut"), "{stderr}");

    // Deleted.
    std::fs::remove_dir_all(store.join("wal")).expect("rm wal");
    let (status, stderr) = run_to_exit(serve_with(&pki, &store, &[]));
    assert!(
        !status.success() && stderr.contains("missing") && stderr.contains("0.log"),
        "{stderr}"
    );

    // Put back whole, it starts; after a clean stop the log may go.
    std::fs::create_dir_all(store.join("wal")).expect("mkdir");
    std::fs::write(&wal, saved).expect("restore");
    let server = ServeProcess::start(pki.path(), &store);
    assert!(server.terminate().success(), "a clean stop");
    std::fs::remove_dir_all(store.join("wal")).expect("rm wal");
    let server = ServeProcess::start(pki.path(), &store);
    let mut officer = client::connect(&server.url, Some(&pki.node(AF_OFFICE)))
        .await
        .expect("connect");
    assert_eq!(broker_alerts(&mut officer).await.len(), 10);
}

#[test]
fn damaged_database_files_are_refused_with_a_message_that_names_the_directory() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("tmp");
    let store = data.path().join("store");
    runtime.block_on(async {
        let server = ServeProcess::start(pki.path(), &store);
        let mut post = client::connect(&server.url, Some(&pki.node(TJ_POST)))
            .await
            .expect("connect");
        publish_many(
            &mut post,
            (0..2000)
                .map(|i| alert(pb::Category::Drugs, &format!("{i}")))
                .collect(),
        )
        .await;
        assert!(server.terminate().success());
    });
    let pristine = std::fs::read(store.join("db")).expect("db");

    // Garbage over sled's database file: sled either panics reading it or
    // opens it as an empty database; both are refused.
    std::fs::write(store.join("db"), vec![0xab; pristine.len()]).expect("write");
    for cmd in [serve_with(&pki, &store, &[]), {
        let mut c = Command::new(env!("CARGO_BIN_EXE_liaison"));
        c.args(["audit", "verify", "--data"]).arg(&store);
        c
    }] {
        let (status, stderr) = run_to_exit(cmd);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("the database in {} is damaged", store.display()))
                && stderr.contains("backup"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // A garbage settings file.
    std::fs::write(store.join("db"), &pristine).expect("restore");
    std::fs::write(store.join("conf"), "this is not sled's configuration\n").expect("conf");
    let (status, stderr) = run_to_exit(serve_with(&pki, &store, &[]));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("conf") && stderr.contains("checksum"),
        "{stderr}"
    );
}
