//! Python and JavaScript handlers (componentize-py and componentize-js
//! components with the helpers in `guest-sdk/python` and `guest-sdk/js`)
//! against the runtime: the examples' outputs, and every way a handler can
//! fail ending in its typed outcome, with a healthy call after each.
//!
//! The components are large (about 19 and 12 MB), so this binary shares one
//! runtime and loads each once, through a compile cache kept across runs.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use sluice::wasm::{
    EntryPoint, Failure, Invocation, Invoker, Isolation, Message, Output, Plugin, Runtime,
};
use sluice_tests::{artifacts, invocation, message, polyglot_runtime};

static RUNTIME: LazyLock<Runtime> = LazyLock::new(polyglot_runtime);

/// Each component, loaded once for every test of this binary.
static PLUGINS: LazyLock<BTreeMap<&'static str, Arc<Plugin>>> = LazyLock::new(|| {
    [
        artifacts::PYTHON_UPPERCASE,
        artifacts::JS_ROUTER,
        artifacts::PYTHON_MISBEHAVE,
        artifacts::JS_MISBEHAVE,
    ]
    .into_iter()
    .map(|path| {
        let plugin = RUNTIME
            .load_file(path.as_ref())
            .unwrap_or_else(|e| panic!("{path} must load: {e}"));
        (path, Arc::new(plugin))
    })
    .collect()
});

const BOTH: [Isolation; 2] = [Isolation::Fresh, Isolation::Reused];

fn invoker(path: &str, isolation: Isolation) -> Invoker {
    RUNTIME.invoker(PLUGINS[path].clone(), isolation)
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(output.value.as_deref().unwrap_or_default()).into_owned()
}

#[test]
fn the_components_export_only_handle_and_load_within_the_pool() {
    for (path, plugin) in PLUGINS.iter() {
        assert_eq!(plugin.entry_point(), EntryPoint::Handle, "{path}");
        assert!(!plugin.has_batch_export(), "{path}");
    }
}

#[test]
fn python_uppercase_upper_cases_keeping_key_headers_and_binary_bytes() {
    for isolation in BOTH {
        let mut invoker = invoker(artifacts::PYTHON_UPPERCASE, isolation);
        let msg = message("orders", b"hello, World 1");
        let outputs = invoker
            .invoke(&msg, &invocation(1000, 64, &[]))
            .expect("python-uppercase succeeds");
        assert_eq!(outputs.len(), 1);
        assert_eq!(outputs[0].topic, "orders.out", "{isolation:?}");
        assert_eq!(text(&outputs[0]), "HELLO, WORLD 1");
        assert_eq!(outputs[0].key, msg.key);
        assert_eq!(outputs[0].headers, msg.headers);

        let configured = invocation(1000, 64, &[("output_topic", "shouted")]);
        let outputs = invoker.invoke(&msg, &configured).expect("succeeds");
        assert_eq!(
            outputs[0].topic, "shouted",
            "config(output_topic) is honoured"
        );

        let binary = message("bin", &[0xff, b'a', 0x00, 0xc3, b'z']);
        let outputs = invoker
            .invoke(&binary, &configured)
            .expect("binary values pass");
        assert_eq!(
            outputs[0].value.as_deref(),
            Some(&[0xff, b'A', 0x00, 0xc3, b'Z'][..])
        );

        let empty = Message {
            value: None,
            ..message("orders", b"")
        };
        let outputs = invoker
            .invoke(&empty, &configured)
            .expect("no value passes");
        assert_eq!(outputs[0].value, None);
    }
}

#[test]
fn js_router_routes_by_content_and_refuses_what_is_not_an_object() {
    let routes = [("high_topic", "urgent"), ("default_topic", "normal")];
    for isolation in BOTH {
        let mut invoker = invoker(artifacts::JS_ROUTER, isolation);
        let msg = message("events", br#"{"priority":"high","id":7}"#);
        let high = invoker
            .invoke(&msg, &invocation(1000, 64, &routes))
            .expect("an object is routed");
        assert_eq!(high.len(), 1);
        assert_eq!(high[0].topic, "urgent", "{isolation:?}");
        assert_eq!(
            text(&high[0]),
            r#"{"priority":"high","id":7,"routed_by":"js-router"}"#
        );
        assert_eq!(high[0].key, msg.key);
        assert_eq!(high[0].headers, msg.headers);

        let mut route = |value: &[u8], config: &[(&str, &str)]| {
            let outputs = invoker
                .invoke(&message("events", value), &invocation(1000, 64, config))
                .unwrap_or_else(|e| panic!("{} is routed: {e}", String::from_utf8_lossy(value)));
            outputs[0].topic.clone()
        };
        assert_eq!(route(br#"{"priority":"low"}"#, &routes), "normal");
        assert_eq!(route(br#"{"id":1}"#, &[]), "events.default");
        let level = [("route_field", "level"), ("route_value", "2")];
        assert_eq!(route(br#"{"level":2}"#, &level), "events.high");
        assert_eq!(route(br#"{"level":"2"}"#, &level), "events.high");
        assert_eq!(route(br#"{"level":[2]}"#, &level), "events.default");

        for (value, reason) in [
            (
                &b"{not json"[..],
                "message value is not a JSON object: message value is not JSON: ",
            ),
            (
                b"[1, 2]",
                "message value is not a JSON object: it is an array",
            ),
            (
                b"{\"a\": \xff}",
                "message value is not a JSON object: message value is not UTF-8",
            ),
        ] {
            match invoker.invoke(&message("events", value), &invocation(1000, 64, &[])) {
                Err(Failure::Handler {
                    retryable: false,
                    message,
                }) => assert!(message.starts_with(reason), "{message}"),
                other => panic!("{value:?} must be a permanent error, got {other:?}"),
            }
        }
    }
}

/// The outcome of `value` on `invoker`, and how long it took.
fn run(
    invoker: &mut Invoker,
    value: &str,
    inv: &Invocation,
) -> (Result<Vec<Output>, Failure>, Duration) {
    let started = Instant::now();
    let outcome = invoker.invoke(&message("mis", value.as_bytes()), inv);
    (outcome, started.elapsed())
}

fn permanent(outcome: Result<Vec<Output>, Failure>) -> String {
    match outcome {
        Err(Failure::Handler {
            retryable: false,
            message,
        }) => message,
        other => panic!("expected a permanent handler error, got {other:?}"),
    }
}

/// The failures both fixtures share, each followed by a healthy call on the
/// same invoker (a trap, timeout or memory failure discards the instance).
fn failures_are_typed(path: &str, recursion: &str) {
    for isolation in BOTH {
        let mut invoker = invoker(path, isolation);
        let inv = invocation(1000, 64, &[("k", "configured")]);
        let healthy = |invoker: &mut Invoker, after: &str| {
            let (outcome, _) = run(invoker, "ok:after", &inv);
            let outputs = outcome.unwrap_or_else(|e| panic!("a call after {after} works: {e}"));
            assert_eq!(text(&outputs[0]), "after", "after {after} ({isolation:?})");
        };

        let (outcome, _) = run(&mut invoker, "ok:fine", &inv);
        let outputs = outcome.expect("ok succeeds");
        assert_eq!(
            (outputs[0].topic.as_str(), text(&outputs[0]).as_str()),
            ("mis.out", "fine")
        );

        let (outcome, _) = run(&mut invoker, "headers", &inv);
        let outputs = outcome.expect("headers succeeds");
        assert_eq!(
            text(&outputs[0]),
            "abc",
            "header `trace` of the test message"
        );
        assert_eq!(outputs[0].key.as_deref(), Some(&b"configured"[..]));

        let (outcome, _) = run(&mut invoker, "log", &inv);
        assert_eq!(
            outcome.expect("log succeeds"),
            [],
            "None/undefined is no output"
        );

        let (outcome, _) = run(&mut invoker, "permanent", &inv);
        assert_eq!(permanent(outcome), "asked to fail for good");

        let (outcome, _) = run(&mut invoker, "retry", &inv);
        match outcome {
            Err(Failure::Handler {
                retryable: true,
                message,
            }) => assert_eq!(message, "asked to fail, attempt 1"),
            other => panic!("expected a retryable error, got {other:?}"),
        }

        let (outcome, _) = run(&mut invoker, "bad-return", &inv);
        let reason = permanent(outcome);
        assert!(reason.starts_with("uncaught TypeError"), "{reason}");
        healthy(&mut invoker, "bad-return");

        let inv_short = invocation(200, 64, &[]);
        let (outcome, took) = run(&mut invoker, "loop", &inv_short);
        assert_eq!(outcome, Err(Failure::Timeout(Duration::from_millis(200))));
        assert!(
            took < Duration::from_millis(1200),
            "interrupted too late: {took:?}"
        );
        healthy(&mut invoker, "loop");

        let (outcome, _) = run(&mut invoker, "oom", &inv);
        assert!(
            matches!(outcome, Err(Failure::MemoryLimitExceeded { limit_bytes, .. }) if limit_bytes == 64 << 20),
            "expected MemoryLimitExceeded, got {outcome:?}"
        );
        healthy(&mut invoker, "oom");

        let (outcome, _) = run(&mut invoker, "recurse", &inv);
        // The languages stop endless recursion themselves, well within the
        // native stack: an exception like any other.
        let reason = permanent(outcome);
        assert!(reason.contains(recursion), "{reason}");
        healthy(&mut invoker, "recurse");
    }
}

#[test]
fn python_failures_end_in_their_typed_outcomes() {
    failures_are_typed(
        artifacts::PYTHON_MISBEHAVE,
        "uncaught RecursionError at app.py:",
    );
    let mut invoker = invoker(artifacts::PYTHON_MISBEHAVE, Isolation::Reused);
    let (outcome, _) = run(&mut invoker, "raise", &invocation(1000, 64, &[]));
    let reason = permanent(outcome);
    assert!(
        reason.starts_with("uncaught ValueError at app.py:")
            && reason.ends_with(": asked to raise"),
        "the reason names the exception, where it was raised and its message: {reason}"
    );
}

#[test]
fn javascript_failures_end_in_their_typed_outcomes() {
    failures_are_typed(
        artifacts::JS_MISBEHAVE,
        "uncaught InternalError at handler.js:",
    );
    let mut invoker = invoker(artifacts::JS_MISBEHAVE, Isolation::Reused);
    let inv = invocation(1000, 64, &[]);
    let (outcome, _) = run(&mut invoker, "throw", &inv);
    let reason = permanent(outcome);
    assert!(
        reason.starts_with("uncaught TypeError at handler.js:")
            && reason.ends_with(": asked to throw"),
        "the reason names the error, where it was thrown and its message: {reason}"
    );
    let (outcome, _) = run(&mut invoker, "throw-string", &inv);
    assert_eq!(
        permanent(outcome),
        "uncaught throw of a string (a bare string)"
    );
}

#[test]
fn a_second_load_takes_the_machine_code_from_the_compile_cache() {
    // Make sure the entries exist (this binary's first load writes them).
    let first = &PLUGINS[artifacts::PYTHON_UPPERCASE];
    let again = polyglot_runtime();
    for path in [artifacts::PYTHON_UPPERCASE, artifacts::JS_ROUTER] {
        let started = Instant::now();
        let plugin = again
            .load_file(path.as_ref())
            .unwrap_or_else(|e| panic!("{path} loads: {e}"));
        assert!(plugin.from_cache(), "{path} comes from the cache");
        eprintln!(
            "{path}: loaded from the compile cache in {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        first.hash(),
        again
            .load_file(artifacts::PYTHON_UPPERCASE.as_ref())
            .expect("loads")
            .hash()
    );
}
