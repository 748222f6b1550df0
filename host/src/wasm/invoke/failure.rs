//! How a handler call failed: the typed [`Failure`] the pipeline decides
//! on (retry, dead letter or stop), and how a wasmtime error, together with
//! what the store saw during the call, becomes one.

use std::time::Duration;

use wasmtime::Trap;

use crate::wasm::bindings::HandlerError;
use crate::wasm::guest_io;
use crate::wasm::outputs::OutputLimitExceeded;
use crate::wasm::packed::NoOutputs;
use crate::wasm::store::StoreState;

/// How a call failed. The pipeline decides from the variant whether to retry,
/// dead-letter or stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The handler returned `handler-error::retryable` or `::permanent`.
    #[error("handler returned a {} error: {message}", if *.retryable { "retryable" } else { "permanent" })]
    Handler {
        /// Whether the handler said a retry may help.
        retryable: bool,
        /// The handler's own explanation.
        message: String,
    },
    /// The call did not return within the route's timeout and was interrupted.
    #[error("handler did not return within {} ms and was interrupted", .0.as_millis())]
    Timeout(Duration),
    /// The guest trapped: a panic, a stack overflow, a bad memory access...
    #[error("handler trapped ({kind}): {detail}")]
    Trap {
        /// The kind of trap, from a small fixed set.
        kind: TrapKind,
        /// The trap message, or the panic message for a panic.
        detail: String,
    },
    /// The guest tried to grow its memory past the route's limit.
    #[error(
        "handler exceeded its memory limit of {limit_bytes} bytes (its memories and tables would \
         have taken {requested_bytes})"
    )]
    MemoryLimitExceeded {
        /// The route's limit.
        limit_bytes: usize,
        /// What all the instance's memories and tables would have taken
        /// with the growth it asked for.
        requested_bytes: usize,
    },
    /// The host could not create an instance (for example, every pool slot is
    /// in use). Not the handler's fault; a retry may succeed.
    #[error("handler could not be instantiated: {0}")]
    Instantiate(String),
    /// What the handler returned for the message breaks one of the route's
    /// output bounds; nothing of it is produced.
    #[error(transparent)]
    InvalidOutput(OutputLimitExceeded),
}

/// The kinds of trap, as a fixed set of labels for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrapKind {
    /// The guest panicked (Rust's `panic!` aborts with `unreachable`).
    Panic,
    /// An `unreachable` instruction without a panic message.
    Unreachable,
    /// The guest's call stack exceeded the host's stack limit.
    StackOverflow,
    /// An out-of-bounds or misaligned memory or table access.
    MemoryOutOfBounds,
    /// Integer overflow, division by zero or a bad float-to-int conversion.
    Arithmetic,
    /// A call through a null or mistyped function reference.
    IndirectCall,
    /// A host function refused the call, or the component model's rules were
    /// broken (for example, an invalid string or a reentrant call).
    Host,
    /// Any other trap.
    Other,
}

impl TrapKind {
    /// The label used in logs, metrics and dead-letter records.
    pub fn as_str(self) -> &'static str {
        match self {
            TrapKind::Panic => "panic",
            TrapKind::Unreachable => "unreachable",
            TrapKind::StackOverflow => "stack_overflow",
            TrapKind::MemoryOutOfBounds => "memory_out_of_bounds",
            TrapKind::Arithmetic => "arithmetic",
            TrapKind::IndirectCall => "indirect_call",
            TrapKind::Host => "host",
            TrapKind::Other => "other",
        }
    }
}

impl std::fmt::Display for TrapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<HandlerError> for Failure {
    fn from(error: HandlerError) -> Failure {
        let (retryable, message) = match error {
            HandlerError::Retryable(message) => (true, message),
            HandlerError::Permanent(message) => (false, message),
        };
        Failure::Handler { retryable, message }
    }
}

impl From<NoOutputs> for Failure {
    fn from(no_outputs: NoOutputs) -> Failure {
        match no_outputs {
            NoOutputs::Handler(error) => Failure::from(error),
            NoOutputs::Limit(e) => Failure::InvalidOutput(e),
        }
    }
}

/// Turns a wasmtime error from a call into a [`Failure`], logging what the
/// guest wrote. `timeout` and `memory_bytes` are the call's limits, for the
/// failure to name.
pub(super) fn classify(
    error: &wasmtime::Error,
    state: &StoreState,
    timeout: Duration,
    memory_bytes: usize,
) -> Failure {
    let stderr = state.drain_failed();
    let panic = panic_message(&String::from_utf8_lossy(&stderr));
    if let Some(requested_bytes) = state.refused_memory() {
        return Failure::MemoryLimitExceeded {
            limit_bytes: memory_bytes,
            requested_bytes,
        };
    }
    let Some(trap) = error.downcast_ref::<Trap>() else {
        return Failure::Trap {
            kind: TrapKind::Host,
            detail: guest_io::inert(&format!("{error:#}")),
        };
    };
    let kind = match trap {
        Trap::Interrupt => return Failure::Timeout(timeout),
        Trap::StackOverflow => TrapKind::StackOverflow,
        Trap::UnreachableCodeReached if panic.is_some() => TrapKind::Panic,
        Trap::UnreachableCodeReached => TrapKind::Unreachable,
        Trap::MemoryOutOfBounds | Trap::HeapMisaligned | Trap::TableOutOfBounds => {
            TrapKind::MemoryOutOfBounds
        }
        Trap::IntegerOverflow | Trap::IntegerDivisionByZero | Trap::BadConversionToInteger => {
            TrapKind::Arithmetic
        }
        Trap::IndirectCallToNull | Trap::BadSignature => TrapKind::IndirectCall,
        _ => TrapKind::Other,
    };
    let detail = match (kind, panic) {
        (TrapKind::Panic, Some(message)) => guest_io::inert(&message),
        _ => trap.to_string(),
    };
    Failure::Trap { kind, detail }
}

/// Extracts the message of a Rust panic from what the guest wrote to stderr:
/// the lines after `panicked at FILE:LINE:COL:` up to the `note:` line.
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.find("panicked at ")?;
    let rest = &stderr[start..];
    let (location_line, after) = rest.split_once('\n').unwrap_or((rest, ""));
    let location = location_line
        .trim_start_matches("panicked at ")
        .trim_end_matches(':');
    let message: Vec<&str> = after
        .lines()
        .take_while(|l| !l.starts_with("note:"))
        .collect();
    Some(format!("{} (at {location})", message.join("\n").trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_message_is_extracted_from_rust_stderr() {
        let stderr = "thread '<unnamed>' panicked at src/lib.rs:12:9:\nmisbehave: asked to panic\n\
                      note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("misbehave: asked to panic (at src/lib.rs:12:9)")
        );
        assert_eq!(panic_message("just a log line\n"), None);
    }
}
