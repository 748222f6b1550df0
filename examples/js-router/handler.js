// Content-based routing in JavaScript: parses each value as a JSON object,
// tags it and picks the output topic from one of its fields, as the Rust
// `json-router` example does. Exercised by tests/tests/polyglot.rs.
//
// A value that is not a JSON object (invalid JSON included) is a permanent
// error quoting the parser's reason, so it is dead-lettered rather than
// retried. The key and headers are kept. Objects are re-serialised with
// JSON.stringify: member order is kept, but numbers are JavaScript numbers
// (a 20-digit integer loses precision, `1.50` becomes `1.5`).
//
// Route config:
// - `route_field`: the field to look at (default `priority`).
// - `route_value`: the value that routes to `high_topic` (default `high`). A
//   JSON string matches its contents; any other JSON value matches when
//   `route_value` parses as that JSON, so `"true"` matches `true` and `"2"`
//   matches `2`.
// - `high_topic`: default `<input topic>.high`.
// - `default_topic`: everything else, default `<input topic>.default`.

import { defineHandler, Output, PermanentError, config } from '../../guest-sdk/js/sluice-guest.js';

export const handler = defineHandler((msg) => {
    let object;
    try {
        object = msg.json();
    } catch (e) {
        throw new PermanentError(`message value is not a JSON object: ${e.message}`);
    }
    if (object === null || typeof object !== 'object' || Array.isArray(object)) {
        throw new PermanentError(`message value is not a JSON object: it is ${Array.isArray(object) ? 'an array' : typeof object}`);
    }

    const field = config('route_field', 'priority');
    const high = field in object && matches(object[field], config('route_value', 'high'));
    const topic = high
        ? config('high_topic', `${msg.topic}.high`)
        : config('default_topic', `${msg.topic}.default`);

    object.routed_by = 'js-router';
    return Output.json(topic, object, { key: msg.key, headers: msg.headers });
});

/** Whether a field's value equals the configured (textual) route value. */
function matches(value, wanted) {
    if (typeof value === 'string') return value === wanted;
    let parsed;
    try {
        parsed = JSON.parse(wanted);
    } catch {
        return false;
    }
    return JSON.stringify(parsed) === JSON.stringify(value);
}
