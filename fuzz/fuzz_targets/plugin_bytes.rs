//! A plugin file's raw bytes through the load path of `sluice check` and
//! the daemon.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice::fuzzing::plugin(data);
});
