//! Every input a fuzz target crashed on (`fuzz/regressions/TARGET/`), run
//! again through the same steps as that target, so that `cargo test` keeps
//! each fixed. The harness here mirrors `fuzz/fuzz_targets/TARGET.rs`; keep
//! the two in step.

use std::path::{Path, PathBuf};

use liaison::store::{WalRecovery, plan_wal_recovery};

/// The inputs saved for `target`, with their names.
fn regressions(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let bytes = std::fs::read(&path).expect("readable input");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

/// `fuzz_targets/wal_recovery.rs`: the first 16 bytes choose the checkpoint
/// and the mode, the rest is cut into up to four files.
fn wal_recovery(data: &[u8]) -> Option<Result<Vec<u64>, String>> {
    let (head, rest) = data.split_first_chunk::<16>()?;
    let checkpoint = &head[..13];
    let mode = match head[13] % 3 {
        0 => WalRecovery::Strict,
        1 => WalRecovery::PointInTime,
        _ => WalRecovery::SkipDamaged,
    };
    let cuts = usize::from(head[14] % 4);
    let step = rest.len() / (cuts + 1);
    let files = (0..=cuts)
        .map(|i| {
            let end = if i == cuts {
                rest.len()
            } else {
                (i + 1) * step
            };
            let number = u32::from(head[15].wrapping_add(u8::try_from(i).unwrap_or(0)));
            (number, rest[i * step..end].to_vec())
        })
        .collect();
    let with_checkpoint = head[13] & 0x80 != 0;
    let plan = plan_wal_recovery(files, with_checkpoint.then_some(checkpoint), mode);
    if let Ok(lsns) = &plan {
        assert!(
            lsns.windows(2).all(|w| w[0] < w[1]),
            "replayed out of order"
        );
    }
    Some(plan)
}

#[test]
fn wal_recovery_inputs_that_crashed_are_answered() {
    let inputs = regressions("wal_recovery");
    assert!(!inputs.is_empty(), "the saved inputs are there");
    for (path, bytes) in inputs {
        let planned = wal_recovery(&bytes);
        assert!(planned.is_some(), "{} is a whole input", path.display());
    }
}

/// The first crash (`checkpoint-lsn-max`): a checkpoint whose LSN is the
/// largest u64 made "the next LSN" overflow. Such a value is damage, and
/// recovery says so instead of replaying from a wrapped-around LSN.
#[test]
fn a_checkpoint_past_any_lsn_is_refused_as_damage() {
    let mut checkpoint = [0u8; 13];
    checkpoint[..8].copy_from_slice(&u64::MAX.to_be_bytes());
    checkpoint[12] = 0;
    let refused = plan_wal_recovery(
        vec![(0, b"not a write-ahead log".to_vec())],
        Some(&checkpoint),
        WalRecovery::SkipDamaged,
    )
    .expect_err("refused");
    assert!(
        refused.contains("checkpoint is damaged") && refused.contains("past any a log reaches"),
        "{refused}"
    );
}
