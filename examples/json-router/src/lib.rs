//! Content-based routing: parses each value as a JSON object, tags it and
//! picks the output topic from one of its fields. Exercised by
//! tests/tests/runtime.rs.
//!
//! A value that is not a JSON object (invalid JSON included) is a permanent
//! error quoting the parser's line and column, so it is dead-lettered rather
//! than retried. The key and headers are kept.
//!
//! Route config:
//! - `route_field`: the field to look at (default `priority`).
//! - `route_value`: the value that routes to `high_topic` (default `high`).
//!   A JSON string matches its contents; any other JSON value matches when
//!   `route_value` parses as that JSON, so `"true"` matches `true` and `"2"`
//!   matches `2`.
//! - `high_topic`: default `<input topic>.high`.
//! - `default_topic`: everything else, default `<input topic>.default`.

use serde_json::{Map, Value};
use sluice_guest::{HandlerError, Message, Output};

/// Cheaper allocations than the standard allocator's (see
/// `sluice_guest::Allocator`).
#[global_allocator]
static ALLOCATOR: sluice_guest::Allocator = sluice_guest::Allocator::new();

struct JsonRouter;

impl sluice_guest::Handler for JsonRouter {
    fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
        let mut object: Map<String, Value> = msg.value_json()?;

        let field = sluice_guest::config_or("route_field", "priority");
        let wanted = sluice_guest::config_or("route_value", "high");
        let topic = if object.get(&field).is_some_and(|v| matches(v, &wanted)) {
            sluice_guest::config_or_else("high_topic", || format!("{}.high", msg.topic))
        } else {
            sluice_guest::config_or_else("default_topic", || format!("{}.default", msg.topic))
        };

        object.insert("routed_by".into(), Value::from("json-router"));
        let out = Output::to(topic).json(&object)?;
        Ok(vec![Output {
            key: msg.key,
            headers: msg.headers,
            ..out
        }])
    }
}

/// Whether a field's value equals the configured (textual) route value.
fn matches(value: &Value, wanted: &str) -> bool {
    match value {
        Value::String(s) => s == wanted,
        other => serde_json::from_str::<Value>(wanted).is_ok_and(|wanted| *other == wanted),
    }
}

sluice_guest::export!(JsonRouter);
