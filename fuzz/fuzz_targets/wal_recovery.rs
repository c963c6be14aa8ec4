//! Recovery from arbitrary write-ahead log files: the first bytes choose
//! the checkpoint and the mode, the rest is cut into up to three files.
//! Never a panic; what is replayed follows the checkpoint in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liaison::store::{WalRecovery, plan_wal_recovery};

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<16>() else {
        return;
    };
    let checkpoint = &head[..13];
    let mode = match head[13] % 3 {
        0 => WalRecovery::Strict,
        1 => WalRecovery::PointInTime,
        _ => WalRecovery::SkipDamaged,
    };
    let cuts = usize::from(head[14] % 4);
    let mut files = Vec::new();
    let step = rest.len() / (cuts + 1).max(1);
    for i in 0..=cuts {
        let end = if i == cuts { rest.len() } else { (i + 1) * step };
        files.push((u32::from(head[15].wrapping_add(i as u8)), rest[i * step..end].to_vec()));
    }
    let with_checkpoint = head[13] & 0x80 != 0;
    if let Ok(lsns) = plan_wal_recovery(files, with_checkpoint.then_some(checkpoint), mode) {
        assert!(lsns.windows(2).all(|w| w[0] < w[1]), "replayed out of order");
    }
});
