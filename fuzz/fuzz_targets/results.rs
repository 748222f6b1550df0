//! What a handler returns for the messages of a call, guest to host, and
//! the output bounds: any bytes as `handle-packed` results; and results
//! given through `handle-batch` and, encoded by the SDK, through
//! `handle-packed`, which must come to the same.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{Limits, Returned};

#[derive(Debug, Arbitrary)]
enum Input {
    Bytes {
        bytes: Vec<u8>,
        expected: u8,
        limits: Limits,
    },
    Results {
        results: Vec<Returned>,
        expected: u8,
        limits: Limits,
    },
}

fuzz_target!(|input: Input| {
    match input {
        Input::Bytes {
            bytes,
            expected,
            limits,
        } => {
            let _ = sluice::fuzzing::packed_results(&bytes, usize::from(expected), &limits.host());
        }
        Input::Results {
            results,
            expected,
            limits,
        } => both_ways_agree(&results, usize::from(expected), limits),
    }
});

fn both_ways_agree(results: &[Returned], expected: usize, limits: Limits) {
    let limits = limits.host();
    let batch = sluice::fuzzing::batch_results(
        results.iter().map(Returned::host).collect(),
        expected,
        &limits,
    );
    let encoded = sluice_guest::fuzzing::encode_results(
        &results.iter().map(Returned::sdk).collect::<Vec<_>>(),
    );
    let packed = sluice::fuzzing::packed_results(&encoded, expected, &limits);
    if results.len() > expected {
        assert!(
            packed.is_err(),
            "more packed results than messages were taken"
        );
        return;
    }
    let packed = packed.unwrap_or_else(|e| panic!("the host refuses what the SDK encoded: {e}"));
    // Packed results stop at outputs over a bound; the pipeline stops
    // there in both cases.
    assert_eq!(packed.as_slice(), &batch[..packed.len()]);
    for (returned, decoded) in results.iter().zip(&packed) {
        if let (Returned::Outputs(outputs), Ok(got)) = (returned, decoded) {
            assert_eq!(outputs.len(), got.len());
            assert!(outputs.iter().zip(got).all(|(o, g)| o.is(g)));
        }
    }
}
