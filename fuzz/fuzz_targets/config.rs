//! The configuration file with its `KAFKA_*` overrides, through validation:
//! `NAME=value` lines, a `%%` line, then the TOML (see
//! `sluice::fuzzing::config`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        sluice::fuzzing::config(text);
    }
});
