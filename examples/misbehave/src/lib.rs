//! A handler that misbehaves on request, to show (and test) how Sluice
//! contains a bad module: errors, panics, endless loops, memory and stack
//! exhaustion, fan-out and slowness. Exercised by tests/tests/runtime.rs.
//!
//! The value is the instruction:
//!
//! | value       | behaviour                                                       |
//! | ----------- | --------------------------------------------------------------- |
//! | `ok:TEXT`   | emits `TEXT`                                                    |
//! | `retry:N`   | retryable error while `attempt < N`, then emits the value       |
//! | `permanent` | permanent error                                                 |
//! | `panic`     | panics (the instance traps)                                     |
//! | `loop`      | never returns                                                   |
//! | `oom`       | allocates and touches 1 MiB chunks until allocation fails, which aborts (traps) |
//! | `stack`     | recurses without bound until the stack is exhausted (traps)     |
//! | `fanout:N`  | emits N outputs with values `0` .. `N-1`                        |
//! | `slow:MS`   | busy-waits MS milliseconds, then emits the value                |
//! | otherwise   | emits the value unchanged (also when absent or not UTF-8)       |
//!
//! A recognised instruction with a malformed number (`retry:x`) is a
//! permanent error. Outputs keep the key and go to route config
//! `output_topic` (default `<input topic>.out`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use sluice_guest::{HandlerError, Message, Output};

/// The SDK's allocator, as in the other examples: a handler that exhausts
/// its memory or traps with it fails exactly as with the standard one.
#[global_allocator]
static ALLOCATOR: sluice_guest::Allocator = sluice_guest::Allocator::new();

struct Misbehave;

impl sluice_guest::Handler for Misbehave {
    fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
        let topic = sluice_guest::config_or_else("output_topic", || format!("{}.out", msg.topic));
        let emit = |value: Option<Vec<u8>>| Output {
            topic: topic.clone(),
            key: msg.key.clone(),
            value,
            headers: Vec::new(),
        };
        let passthrough = || Ok(vec![emit(msg.value.clone())]);

        let Some(instruction) = msg
            .value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
        else {
            return passthrough();
        };
        let (verb, arg) = instruction.split_once(':').unwrap_or((instruction, ""));
        match verb {
            "ok" => Ok(vec![emit(Some(arg.as_bytes().to_vec()))]),
            "retry" => {
                let wanted: u32 = number(instruction, arg)?;
                if msg.attempt < wanted {
                    Err(HandlerError::retryable(format!(
                        "attempt {} of {wanted}: asked to fail",
                        msg.attempt
                    )))
                } else {
                    passthrough()
                }
            }
            "permanent" => Err(HandlerError::permanent("asked to fail permanently")),
            "panic" => panic!("misbehave: asked to panic"),
            "loop" => spin_forever(),
            "oom" => exhaust_memory(),
            "stack" => {
                black_box(recurse(0));
                passthrough()
            }
            "fanout" => {
                let n: u32 = number(instruction, arg)?;
                Ok((0..n)
                    .map(|i| emit(Some(i.to_string().into_bytes())))
                    .collect())
            }
            "slow" => {
                let ms: u64 = number(instruction, arg)?;
                busy_wait(Duration::from_millis(ms));
                passthrough()
            }
            _ => passthrough(),
        }
    }
}

/// Parses the instruction's numeric argument.
fn number<T: std::str::FromStr>(instruction: &str, arg: &str) -> Result<T, HandlerError>
where
    T::Err: std::fmt::Display,
{
    arg.parse()
        .map_err(|e| HandlerError::permanent(format!("`{instruction}`: bad number `{arg}`: {e}")))
}

fn spin_forever() -> ! {
    let mut turns = 0_u64;
    loop {
        turns = black_box(turns.wrapping_add(1));
    }
}

fn exhaust_memory() -> ! {
    const CHUNK: usize = 1 << 20;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Filled with a non-zero byte, so every page is really written.
        hoard.push(black_box(vec![0xa5; CHUNK]));
        black_box(&hoard);
    }
}

#[expect(unconditional_recursion, reason = "exhausting the stack is the point")]
fn recurse(depth: u64) -> u64 {
    // The black-boxed array lives on Rust's shadow stack, which sits at the
    // bottom of linear memory: it runs out first, so this traps as an
    // out-of-bounds memory access rather than as wasm call-stack exhaustion.
    let frame = black_box([depth; 32]);
    recurse(black_box(depth + 1)).wrapping_add(frame[31])
}

fn busy_wait(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        black_box(());
    }
}

sluice_guest::export!(Misbehave);
