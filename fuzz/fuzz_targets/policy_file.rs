//! The sharing policy file: never a panic; a policy that parses can be
//! compared with another.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liaison::policy::{Policy, diff, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse(text) {
        Ok(policy) => {
            let _ = diff(&Policy::open(), &policy).to_string();
            assert!(diff(&policy, &policy).is_empty());
        }
        Err(errors) => assert!(!errors.is_empty()),
    }
});
