//! The smallest useful handler: upper-cases each value and forwards it.
//! Exercised by tests/tests/runtime.rs.
//!
//! Upper-casing is ASCII-only and works on the bytes, so any payload (binary
//! included) passes through unharmed and no UTF-8 validation is paid for. The
//! key and headers are kept; a message without a value yields an output
//! without a value.
//!
//! Route config:
//! - `output_topic`: where outputs go (default `<input topic>.out`).

use sluice_guest::{HandlerError, Message, Output};

/// Cheaper allocations than the standard allocator's (see
/// `sluice_guest::Allocator`).
#[global_allocator]
static ALLOCATOR: sluice_guest::Allocator = sluice_guest::Allocator::new();

struct Uppercase;

impl sluice_guest::Handler for Uppercase {
    fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
        // `concat` sizes the name once; `format!` would cost more than the
        // upper-casing of a small value.
        let topic =
            sluice_guest::config_or_else("output_topic", || [msg.topic.as_str(), ".out"].concat());
        let value = msg.value.map(|mut bytes| {
            bytes.make_ascii_uppercase();
            bytes
        });
        Ok(vec![Output {
            topic,
            key: msg.key,
            value,
            headers: msg.headers,
        }])
    }
}

sluice_guest::export!(Uppercase);
