//! Dead letters as `sluice dlq list|stats|replay` read them: after a first
//! byte with its low bit clear, any value a dead-letter topic may hold;
//! with it set, a letter the daemon writes for a generated message, read
//! back.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::Message;

/// A letter written for `message` into a topic taking `max_bytes`.
#[derive(Debug, Arbitrary)]
struct Written {
    message: Message,
    reason: String,
    kind: u8,
    max_bytes: u32,
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    if first & 1 == 0 {
        sluice::fuzzing::dead_letter_value(rest);
        return;
    }
    let Ok(w) = Written::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    // Below the envelope's own framing nothing fits; above a few MiB the
    // fuzzer only spends its time copying.
    let max_bytes = 4096 + (w.max_bytes as usize % (4 << 20));
    sluice::fuzzing::dead_letter_round_trip(&w.message.host(), &w.reason, w.kind, max_bytes);
});
