//! The configuration files of `serve` and `agent`.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// What `config.rs` uses of its sibling module in the binary.
mod alert_args {
    use anyhow::{Context, Result};

    pub fn parse_duration(s: &str) -> Result<std::time::Duration> {
        humantime::parse_duration(s)
            .with_context(|| format!("`{s}` is not a duration such as 30s or 250ms"))
    }
}

#[path = "../../src/cli/config.rs"]
#[allow(dead_code)]
mod config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for kind in [config::Kind::Serve, config::Kind::Agent] {
        if let Err(errors) = config::settings(text, kind, |_| false) {
            assert!(!errors.is_empty());
        }
    }
    let _ = config::kind_of(text);
});
