//! The JSON alert input of the command line (`liaison publish --json FILE`)
//! and of the console's compose form (`liaison::json`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = liaison::json::alert_from_json(&value);
    }
});
