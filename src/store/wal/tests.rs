//! The write-ahead log against a real sled database in a temporary
//! directory: recovery, checkpoints, file rotation and damage.

use super::*;
use std::time::Duration;

fn open_with(dir: &Path, config: WalConfig) -> Result<(sled::Db, sled::Tree, Wal), StoreError> {
    // sled releases its file lock when its I/O pool lets go of the last
    // handle, which can trail the drop of the previous `Db` by a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let db = loop {
        match sled::Config::new()
            .path(dir.join("db"))
            .flush_every_ms(None)
            .open()
        {
            Ok(db) => break db,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("could not acquire lock"), "{e}");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let log = db.open_tree("log").unwrap();
    let space = Arc::new(crate::store::space::Space::new(dir, 0, 0));
    let (wal, _) = Wal::open(dir, &db, &log, config, Arc::default(), None, space)?;
    Ok((db, log, wal))
}

fn open(dir: &Path) -> (sled::Db, sled::Tree, Wal) {
    open_with(dir, WalConfig::default()).expect("opens")
}

fn batch(ops: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut b = Batch::default();
    for (k, v) in ops {
        match v {
            Some(v) => b.insert(k.as_bytes(), v.as_bytes()),
            None => b.remove(k.as_bytes()),
        }
    }
    b.into_payload()
}

/// A crash: neither the final checkpoint nor the checkpointer runs.
fn crash(mut wal: Wal) {
    wal.checkpoints = None;
    let _ = wal.checkpointer.take().map(std::thread::JoinHandle::join);
    std::mem::forget(wal);
}

/// Appended and synced but never applied to sled: the next open
/// replays it, in order; a torn record after it is ignored.
#[test]
fn open_replays_synced_records_and_ignores_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let one = batch(&[("k1", Some("v1")), ("k2", Some("v2"))]);
    let two = batch(&[("k1", None), ("k3", Some("v3"))]);
    {
        let (_db, _log, mut wal) = open(dir.path());
        wal.append(&one).unwrap();
        let (file, _) = wal.append(&two).unwrap();
        // A third record, cut short as a kill would cut it.
        let mut torn = Vec::new();
        frame::encode(wal.next_lsn, 2, &batch(&[("k4", Some("v4"))]), &mut torn);
        file.write_all_at(&torn[..torn.len() - 3], wal.offset)
            .unwrap();
        file.sync_data().unwrap();
        crash(wal);
    }
    {
        let (_db, log, wal) = open(dir.path());
        assert_eq!(log.get("k1").unwrap(), None);
        assert_eq!(log.get("k2").unwrap().unwrap(), "v2".as_bytes());
        assert_eq!(log.get("k3").unwrap().unwrap(), "v3".as_bytes());
        assert_eq!(log.get("k4").unwrap(), None);
        assert_eq!(wal.next_lsn, 4, "not even the torn record's LSN is reused");
    }
    // Checkpointed: a third open replays nothing, even after the values
    // change behind the WAL's back.
    let (db, log, wal) = open(dir.path());
    log.insert("k2", "changed").unwrap();
    drop((wal, db, log));
    let (_db, log, _wal) = open(dir.path());
    assert_eq!(log.get("k2").unwrap().unwrap(), "changed".as_bytes());
}

/// A batch whose apply failed half-way (never reported applied) stays
/// above the checkpoint, even the final one of a clean close, and is
/// replayed whole at the next open.
#[test]
fn a_batch_not_applied_in_full_is_replayed_after_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_db, log, mut wal) = open(dir.path());
        let good = batch(&[("a", Some("1"))]);
        let (_, lsn) = wal.append(&good).unwrap();
        apply(&log, &good).unwrap();
        wal.applied(lsn);
        let broken = batch(&[("b", Some("2")), ("c", Some("3"))]);
        wal.append(&broken).unwrap().0.sync_data().unwrap();
        // Only the first operation made it into sled.
        log.insert("b", "2").unwrap();
    }
    let (_db, log, _wal) = open(dir.path());
    assert_eq!(log.get("a").unwrap().unwrap(), "1".as_bytes());
    assert_eq!(log.get("c").unwrap().unwrap(), "3".as_bytes());
}

/// Files fill, end with a marker naming the next, are checkpointed and
/// reused; a reopen replays only what is above the checkpoint.
#[test]
fn full_files_are_reused_after_their_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        file_bytes: 64 * 1024,
        ..WalConfig::default()
    };
    let (db, log, mut wal) = open_with(dir.path(), config).unwrap();
    let value = vec![7u8; 4096];
    let write = |wal: &mut Wal, i: u32| {
        let mut b = Batch::default();
        b.insert(i.to_be_bytes(), &value);
        let payload = b.into_payload();
        let (_, lsn) = wal.append(&payload).unwrap();
        apply(&log, &payload).unwrap();
        wal.applied(lsn);
    };
    // Fill the first file and start the second.
    for i in 0..20 {
        write(&mut wal, i);
    }
    let files = || files::read_files(&dir.path().join("wal")).unwrap().len();
    assert_eq!(files(), 2);
    // Readiness: the first file's checkpoint returns it as a spare.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while lock(&wal.spare).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(Duration::from_millis(1));
    }
    for i in 20..35 {
        write(&mut wal, i);
    }
    assert_eq!(files(), 2, "the checkpointed file was reused");
    let next = wal.next_lsn;
    crash(wal);
    drop((db, log));
    let (_db, log, wal) = open_with(dir.path(), config).unwrap();
    assert_eq!(log.len(), 35 + 1, "the records and the checkpoint");
    assert!(wal.next_lsn >= next);
}

/// A full file says where the log goes on; that file deleted after a
/// crash is damage, and the open says which file, which offset and
/// which LSN.
#[test]
fn a_deleted_file_of_the_log_refuses_the_open_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        file_bytes: 64 * 1024,
        ..WalConfig::default()
    };
    let (db, log, mut wal) = open_with(dir.path(), config).unwrap();
    for i in 0u32..20 {
        let mut b = Batch::default();
        b.insert(i.to_be_bytes(), vec![1u8; 4096]);
        let payload = b.into_payload();
        let (file, lsn) = wal.append(&payload).unwrap();
        file.sync_data().unwrap();
        apply(&log, &payload).unwrap();
        wal.applied(lsn);
        wal.shared.synced_through(lsn);
    }
    let newest = wal.number;
    crash(wal);
    drop((db, log));
    std::fs::remove_file(dir.path().join(format!("wal/{newest}.log"))).unwrap();
    let Err(StoreError::WalDamaged { file, lsn, .. }) = open_with(dir.path(), config) else {
        panic!("a deleted file was not noticed");
    };
    assert!(file.ends_with(format!("wal/{newest}.log")), "{file:?}");
    assert!(lsn > 1);
    // The operator's choice opens it, keeping what is there.
    let lenient = WalConfig {
        recovery: Mode::PointInTime,
        ..config
    };
    let (_db, log, _wal) = open_with(dir.path(), lenient).expect("opens with the choice");
    assert!(log.get(0u32.to_be_bytes()).unwrap().is_some());
}

/// A checkpoint value that neither format wrote (found by fuzzing, with an
/// LSN whose successor overflowed) refuses the open, naming the directory
/// and the checkpoint, instead of replaying from a wrapped-around LSN.
#[test]
fn a_damaged_checkpoint_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (db, log, wal) = open(dir.path());
        drop(wal);
        let mut value = log
            .get(keys::META_WAL_CHECKPOINT)
            .unwrap()
            .unwrap()
            .to_vec();
        value[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        log.insert(keys::META_WAL_CHECKPOINT, value).unwrap();
        db.flush().unwrap();
    }
    match open_with(dir.path(), WalConfig::default()) {
        Err(StoreError::Damaged { dir: named, detail }) => {
            assert_eq!(named, dir.path());
            assert!(detail.contains("checkpoint is damaged"), "{detail}");
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a damaged checkpoint was accepted"),
    }
}
