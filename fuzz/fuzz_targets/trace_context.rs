//! The `traceparent` and `tracestate` headers a message carries: the input
//! is the first, a newline, then the second.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (parent, state) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    sluice::fuzzing::trace_context(parent, state);
});
