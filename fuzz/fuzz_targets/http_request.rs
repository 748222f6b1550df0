//! What a client sends the health, metrics and admin endpoint, on one
//! connection.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice::fuzzing::http(data);
});
