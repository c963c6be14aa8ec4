//! Recovery planning: torn tails, damage and the operator's modes.

use super::*;
use crate::store::command::Batch;

const SIZE: u64 = 8192;

/// A file of `records` (lsn, synced, payload).
fn file(number: u32, records: &[(u64, u64, Vec<u8>)]) -> WalFile {
    let mut bytes = frame::file_header(SIZE).to_vec();
    for (lsn, synced, payload) in records {
        frame::encode(*lsn, *synced, payload, &mut bytes);
    }
    bytes.resize(SIZE as usize, 0);
    WalFile {
        number,
        path: PathBuf::from(format!("wal/{number}.log")),
        bytes,
    }
}

fn payload(key: &str) -> Vec<u8> {
    let mut b = Batch::default();
    b.insert(key, "v");
    b.into_payload()
}

/// Records 1..=n, each saying the one before it was synced.
fn run(n: u64) -> Vec<(u64, u64, Vec<u8>)> {
    (1..=n)
        .map(|l| (l, l - 1, payload(&format!("k{l}"))))
        .collect()
}

fn running(lsn: u64) -> Checkpoint {
    Checkpoint {
        lsn,
        clean: false,
        active: Some(0),
        legacy: false,
    }
}

fn lsns(list: &[(u64, &[u8])]) -> Vec<u64> {
    list.iter().map(|(l, _)| *l).collect()
}

/// The offset of record `lsn` in a file made by [`file`].
fn offset_of(f: &WalFile, lsn: u64) -> usize {
    let mut offset = FILE_HEADER;
    loop {
        let At::Record(r) = frame::parse(&f.bytes, offset) else {
            panic!("no record {lsn}");
        };
        if r.lsn == lsn {
            return offset;
        }
        offset = r.end();
    }
}

#[test]
fn an_intact_log_replays_everything_above_the_checkpoint() {
    let files = [file(0, &run(5))];
    let plan = plan(&files, running(2), Mode::Strict).expect("intact");
    assert_eq!(lsns(&plan.replay), [3, 4, 5]);
    assert_eq!(plan.newest, 5);
    assert!(!plan.maybe_acked_lost);
}

#[test]
fn a_torn_tail_is_discarded_and_moves_sequences_on() {
    let mut f = file(0, &run(3));
    // Record 4 written half-way.
    let end = offset_of(&f, 3)
        + match frame::parse(&f.bytes, offset_of(&f, 3)) {
            At::Record(r) => r.end() - r.offset,
            _ => unreachable!(),
        };
    let mut torn = Vec::new();
    frame::encode(4, 3, &payload("k4"), &mut torn);
    f.bytes[end..end + torn.len() - 2].copy_from_slice(&torn[..torn.len() - 2]);
    let files = [f];
    let plan = plan(&files, running(0), Mode::Strict).expect("a torn tail is normal");
    assert_eq!(lsns(&plan.replay), [1, 2, 3]);
    assert_eq!(plan.newest, 4, "the torn record's LSN is not reused");
    assert!(plan.maybe_acked_lost);
    assert_eq!(plan.notes.len(), 1, "{:?}", plan.notes);
}

#[test]
fn a_flipped_byte_with_intact_records_after_it_is_damage() {
    let mut f = file(0, &run(6));
    let at = offset_of(&f, 3);
    f.bytes[at + RECORD_HEADER] ^= 1;
    let files = [f];
    let damage = plan(&files, running(0), Mode::Strict).expect_err("damage");
    assert_eq!(damage.lsn, 3);
    assert_eq!(damage.offset, at as u64, "where LSN 3 should be");
    assert_eq!(damage.file, PathBuf::from("wal/0.log"));

    let kept = plan(&files, running(0), Mode::PointInTime).expect("point in time");
    assert_eq!(lsns(&kept.replay), [1, 2]);
    assert_eq!(lsns(&kept.discarded), [4, 5, 6]);
    assert!(kept.maybe_acked_lost);
    let skipped = plan(&files, running(0), Mode::SkipDamaged).expect("skip");
    assert_eq!(lsns(&skipped.replay), [1, 2, 4, 5, 6]);
}

#[test]
fn a_hole_nothing_later_vouches_for_is_a_torn_tail_after_a_power_cut() {
    // Records 3 and 4 were written while 2 was being synced; 3 was lost.
    let records = vec![
        (1, 0, payload("a")),
        (2, 1, payload("b")),
        (4, 1, payload("d")),
    ];
    let files = [file(0, &records)];
    let plan = plan(&files, running(0), Mode::Strict).expect("not damage");
    assert_eq!(lsns(&plan.replay), [1, 2]);
    assert_eq!(lsns(&plan.discarded), [4]);
    assert!(plan.maybe_acked_lost);
}

#[test]
fn a_cut_file_and_missing_files_are_damage() {
    let mut cut = file(0, &run(4));
    cut.bytes.truncate(offset_of(&cut, 3));
    let files = [cut];
    let damage = plan(&files, running(0), Mode::Strict).expect_err("cut");
    assert!(damage.detail.contains("cut"), "{damage:?}");

    // The file the checkpoint names is gone.
    let files = [file(1, &[])];
    let damage = plan(&files, running(7), Mode::Strict).expect_err("missing");
    assert_eq!(damage.file, PathBuf::from("wal/0.log"));
    assert_eq!(damage.lsn, 8);
    // ... which is fine after a clean stop.
    let clean = Checkpoint {
        clean: true,
        ..running(7)
    };
    assert!(plan(&files, clean, Mode::Strict).is_ok());

    // A full file's end marker names a file that is gone.
    let mut records = run(2);
    records.push((3, 2, Batch::next_file("1.log").into_payload()));
    let files = [file(0, &records)];
    let damage = plan(&files, running(0), Mode::Strict).expect_err("missing next");
    assert_eq!(damage.file, PathBuf::from("wal/1.log"));
    assert_eq!(damage.lsn, 4);
}

#[test]
fn stale_records_of_a_reused_file_are_ignored() {
    // The file held 1..=6 before it was checkpointed and reused; the new
    // run overwrote its start with 7 and 8.
    let old = file(0, &run(6));
    let new = file(0, &[(7, 6, payload("x")), (8, 7, payload("y"))]);
    let mut bytes = old.bytes.clone();
    let end = offset_of(&new, 8)
        + match frame::parse(&new.bytes, offset_of(&new, 8)) {
            At::Record(r) => r.end() - r.offset,
            _ => unreachable!(),
        };
    bytes[..end].copy_from_slice(&new.bytes[..end]);
    let files = [WalFile { bytes, ..old }];
    let plan = plan(&files, running(6), Mode::Strict).expect("stale data is not damage");
    assert_eq!(lsns(&plan.replay), [7, 8]);
    assert!(!plan.maybe_acked_lost);
}
