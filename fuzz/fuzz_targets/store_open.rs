//! A store whose write-ahead log file holds arbitrary bytes after a crash:
//! it opens, or refuses with an error; it never panics, and whatever it
//! opens with can be read through.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liaison::store::{Store, StoreConfig, WalConfig, WalRecovery};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tmp");
    let wal = dir.path().join("wal");
    std::fs::create_dir_all(&wal).expect("wal dir");
    std::fs::write(wal.join("0.log"), data).expect("write");
    let config = StoreConfig {
        cache_bytes: 1 << 20,
        recent_bytes: 1 << 20,
        min_free_bytes: 0,
        wal: WalConfig {
            file_bytes: 1 << 16,
            recovery: if data.first().is_some_and(|b| b & 1 == 1) {
                WalRecovery::SkipDamaged
            } else {
                WalRecovery::Strict
            },
            ..WalConfig::default()
        },
        ..StoreConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Ok(store) = Store::open(dir.path(), config) {
        let _ = store.scan(liaison::alert::Seq(1), 1000);
        let _ = store.audit_records(1, 1000);
        runtime.block_on(async {
            let _ = store.close().await;
        });
    }
});
