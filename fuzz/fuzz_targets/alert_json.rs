//! The command line's JSON alert input (`liaison publish --json FILE`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/cli/json.rs"]
#[allow(dead_code)]
mod json;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = json::alert_from_json(&value);
    }
});
