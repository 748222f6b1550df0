//! Kafka record headers as the consumer reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|headers: Vec<(String, Option<Vec<u8>>)>| {
    sluice::fuzzing::headers(&headers);
});
