//! The sandboxed runtime against real guest components: every `misbehave`
//! mode ends in its typed outcome within its limits, a healthy call follows
//! every failure, the sandbox grants nothing, and bad files are refused with
//! their reason.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::wasm::{
    CallOutcome, EntryPoint, Failure, Header, Invocation, Isolation, LoadError, Message, Output,
    Plugin, Runtime, TrapKind,
};
use sluice_tests::{artifacts, invocation, load, message, runtime};

const BOTH: [Isolation; 2] = [Isolation::Fresh, Isolation::Reused];

fn values(outputs: &[Output]) -> Vec<(String, String)> {
    outputs
        .iter()
        .map(|o| {
            let value = String::from_utf8_lossy(o.value.as_deref().unwrap_or_default());
            (o.topic.clone(), value.into_owned())
        })
        .collect()
}

#[test]
fn uppercase_emits_upper_cased_value_with_key_and_headers_to_the_configured_topic() {
    let rt = runtime();
    let plugin = load(&rt, artifacts::UPPERCASE);
    for isolation in BOTH {
        let mut invoker = rt.invoker(plugin.clone(), isolation);
        let msg = message("orders", b"hello, World 1");

        let outputs = invoker
            .invoke(&msg, &invocation(1000, 64, &[]))
            .expect("uppercase succeeds");
        assert_eq!(
            values(&outputs),
            [("orders.out".to_owned(), "HELLO, WORLD 1".to_owned())],
            "default output topic is <topic>.out ({isolation:?})"
        );
        assert_eq!(outputs[0].key, msg.key);
        assert_eq!(outputs[0].headers, msg.headers);

        let outputs = invoker
            .invoke(&msg, &invocation(1000, 64, &[("output_topic", "shouted")]))
            .expect("uppercase succeeds");
        assert_eq!(
            outputs[0].topic, "shouted",
            "config(output_topic) is honoured"
        );
    }
}

#[test]
fn uppercase_is_binary_safe() {
    let rt = runtime();
    let mut invoker = rt.invoker(load(&rt, artifacts::UPPERCASE), Isolation::Reused);
    let value = [0xff, b'a', 0x00, 0xc3, b'z'];
    let outputs = invoker
        .invoke(&message("bin", &value), &invocation(1000, 64, &[]))
        .expect("non-UTF-8 values are handled");
    assert_eq!(
        outputs[0].value.as_deref(),
        Some(&[0xff, b'A', 0x00, 0xc3, b'Z'][..])
    );
}

#[test]
fn json_router_routes_by_content_and_refuses_invalid_json() {
    let rt = runtime();
    let mut invoker = rt.invoker(load(&rt, artifacts::JSON_ROUTER), Isolation::Reused);
    let inv = invocation(
        1000,
        64,
        &[("high_topic", "urgent"), ("default_topic", "normal")],
    );

    let high = invoker
        .invoke(&message("events", br#"{"priority":"high","id":7}"#), &inv)
        .expect("valid JSON is routed");
    assert_eq!(high.len(), 1);
    assert_eq!(high[0].topic, "urgent");
    let body: serde_json::Value =
        serde_json::from_slice(high[0].value.as_deref().unwrap_or_default()).expect("JSON out");
    assert_eq!(body["id"], 7);
    assert_eq!(body["routed_by"], "json-router");

    let low = invoker
        .invoke(&message("events", br#"{"priority":"low"}"#), &inv)
        .expect("valid JSON is routed");
    assert_eq!(low[0].topic, "normal");

    let defaults = invoker
        .invoke(
            &message("events", br#"{"id":1}"#),
            &invocation(1000, 64, &[]),
        )
        .expect("valid JSON is routed");
    assert_eq!(defaults[0].topic, "events.default");

    match invoker.invoke(&message("events", b"{not json"), &inv) {
        Err(Failure::Handler {
            retryable: false,
            message,
        }) => assert!(message.contains("line 1"), "names the position: {message}"),
        other => panic!("invalid JSON must be a permanent error, got {other:?}"),
    }
}

#[test]
fn json_router_changes_nothing_but_its_tag_and_names_where_input_goes_wrong() {
    let rt = runtime();
    let plugin = load(&rt, artifacts::JSON_ROUTER);
    let routed = |invoker: &mut sluice::wasm::Invoker, config: &[(&str, &str)], value: &[u8]| {
        let outputs = invoker
            .invoke(&message("events", value), &invocation(1000, 64, config))
            .unwrap_or_else(|e| panic!("{} is routed: {e:?}", String::from_utf8_lossy(value)));
        assert_eq!(outputs.len(), 1);
        let value = String::from_utf8(outputs[0].value.clone().unwrap_or_default());
        (outputs[0].topic.clone(), value.expect("UTF-8 out"))
    };
    for isolation in BOTH {
        let mut invoker = rt.invoker(plugin.clone(), isolation);
        // Member order, number text a float would change, nested values and
        // escaped names are kept; a repeated name keeps its first place and
        // its last value; an existing tag is replaced in place.
        let input = r#" { "z": 12345678901234567890123, "priority": "low", "routed_by": 1,
            "a\"b": [1.50, {"x" : null}], "priority": "high", "\u00e9": "caf\u00e9" } "#;
        let (topic, out) = routed(&mut invoker, &[], input.as_bytes());
        assert_eq!(
            topic, "events.high",
            "the last `priority` decides ({isolation:?})"
        );
        assert_eq!(
            out,
            r#"{"z":12345678901234567890123,"priority":"high","routed_by":"json-router","a\"b":[1.50, {"x" : null}],"é":"caf\u00e9"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&out).expect("the output is JSON");
        assert_eq!(parsed["é"], "café");

        // A large object (sorted to find repeated names, where a small one is
        // compared pairwise) follows the same rules.
        let member = |i: usize| format!(r#""k{i}":{i}"#);
        let mut input: Vec<String> = (0..40).map(member).collect();
        input.push(r#""k5":"last""#.to_owned());
        let mut expected: Vec<String> = (0..40).map(member).collect();
        expected[5] = r#""k5":"last""#.to_owned();
        expected.push(r#""routed_by":"json-router""#.to_owned());
        let (_, out) = routed(
            &mut invoker,
            &[],
            format!("{{{}}}", input.join(",")).as_bytes(),
        );
        assert_eq!(out, format!("{{{}}}", expected.join(",")));

        // A string matches its contents, anything else the same JSON value.
        let config = [("route_field", "level"), ("route_value", "2")];
        for (value, to) in [
            (r#"{"level":2}"#, "high"),
            (r#"{"level":"2"}"#, "high"),
            (r#"{"level":3}"#, "default"),
            (r#"{"level":[2]}"#, "default"),
        ] {
            let (topic, out) = routed(&mut invoker, &config, value.as_bytes());
            assert_eq!(topic, format!("events.{to}"), "{value} ({isolation:?})");
            assert!(out.ends_with(r#","routed_by":"json-router"}"#), "{out}");
        }

        for (value, position) in [
            (&b"[1, 2]"[..], "expected a JSON object at line 1 column"),
            (b"{\"a\": 1,\n \"b\": }", "expected value at line 2 column"),
            (b"{\"a\": 1} x", "trailing characters at line 1 column"),
            (b"{\"a\":\n \"\xff\"}", "invalid UTF-8 at line 2 column 3"),
        ] {
            match invoker.invoke(&message("events", value), &invocation(1000, 64, &[])) {
                Err(Failure::Handler {
                    retryable: false,
                    message,
                }) => assert!(
                    message.starts_with("message value is not a JSON object: ")
                        && message.contains(position),
                    "{message} names {position}"
                ),
                other => panic!("{value:?} must be a permanent error, got {other:?}"),
            }
        }
    }
}

/// Invokes `misbehave` with `value` and checks a healthy call still works on
/// the same invoker afterwards.
fn misbehave(
    isolation: Isolation,
    value: &str,
    inv: &Invocation,
) -> (Result<Vec<Output>, Failure>, Duration) {
    let rt = runtime();
    let mut invoker = rt.invoker(load(&rt, artifacts::MISBEHAVE), isolation);
    let started = Instant::now();
    let outcome = invoker.invoke(&message("mis", value.as_bytes()), inv);
    let took = started.elapsed();
    let after = invoker.invoke(&message("mis", b"ok:after"), &invocation(1000, 64, &[]));
    assert_eq!(
        after.as_deref().map(values).ok(),
        Some(vec![("mis.out".to_owned(), "after".to_owned())]),
        "a healthy call right after `{value}` succeeds ({isolation:?})"
    );
    (outcome, took)
}

#[test]
fn misbehave_ok_fanout_and_passthrough() {
    for isolation in BOTH {
        let inv = invocation(1000, 64, &[]);
        let (ok, _) = misbehave(isolation, "ok:fine", &inv);
        assert_eq!(
            values(&ok.expect("ok")),
            [("mis.out".to_owned(), "fine".to_owned())]
        );

        let (fan, _) = misbehave(isolation, "fanout:5", &inv);
        let fan = values(&fan.expect("fanout"));
        let expected: Vec<_> = (0..5)
            .map(|i| ("mis.out".to_owned(), i.to_string()))
            .collect();
        assert_eq!(fan, expected);

        let (other, _) = misbehave(isolation, "anything else", &inv);
        assert_eq!(values(&other.expect("pass-through"))[0].1, "anything else");
    }
}

#[test]
fn misbehave_retry_succeeds_on_the_named_attempt() {
    let rt = runtime();
    let mut invoker = rt.invoker(load(&rt, artifacts::MISBEHAVE), Isolation::Reused);
    let inv = invocation(1000, 64, &[]);
    for attempt in 1..=4 {
        let mut msg = message("mis", b"retry:3");
        msg.attempt = attempt;
        let outcome = invoker.invoke(&msg, &inv);
        if attempt < 3 {
            assert!(
                matches!(
                    outcome,
                    Err(Failure::Handler {
                        retryable: true,
                        ..
                    })
                ),
                "attempt {attempt}: {outcome:?}"
            );
        } else {
            assert!(outcome.is_ok(), "attempt {attempt}: {outcome:?}");
        }
    }
}

#[test]
fn misbehave_permanent_and_panic_are_typed() {
    for isolation in BOTH {
        let inv = invocation(1000, 64, &[]);
        let (permanent, _) = misbehave(isolation, "permanent", &inv);
        assert!(
            matches!(
                permanent,
                Err(Failure::Handler {
                    retryable: false,
                    ..
                })
            ),
            "{permanent:?}"
        );

        let (panic, _) = misbehave(isolation, "panic", &inv);
        match panic {
            Err(Failure::Trap {
                kind: TrapKind::Panic,
                detail,
            }) => assert!(
                detail.contains("panic"),
                "the panic message is kept: {detail}"
            ),
            other => panic!("expected a panic trap, got {other:?}"),
        }
    }
}

#[test]
fn misbehave_loop_and_slow_time_out_within_the_limit() {
    for isolation in BOTH {
        let inv = invocation(200, 64, &[]);
        let (looped, took) = misbehave(isolation, "loop", &inv);
        assert_eq!(looped, Err(Failure::Timeout(Duration::from_millis(200))));
        assert!(
            took >= Duration::from_millis(200),
            "interrupted too early: {took:?}"
        );
        assert!(
            took < Duration::from_millis(1200),
            "interrupted too late: {took:?}"
        );

        let (slow, _) = misbehave(isolation, "slow:2000", &inv);
        assert_eq!(slow, Err(Failure::Timeout(Duration::from_millis(200))));

        let (quick, _) = misbehave(isolation, "slow:20", &inv);
        assert!(quick.is_ok(), "slow:20 fits in 200 ms: {quick:?}");
    }
}

/// Waits until the runtime's deadline clock has gone to sleep, as it does
/// when no guest code has run for a while.
fn until_the_deadline_clock_sleeps(rt: &Runtime) {
    let started = Instant::now();
    while rt.deadline_clock_running() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the deadline clock still runs after 10 s without a call"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_handler_that_loops_after_an_idle_spell_still_times_out() {
    let rt = runtime();
    let plugin = load(&rt, artifacts::MISBEHAVE);
    let inv = invocation(200, 64, &[]);
    let looping = [message("mis", b"ok:first"), message("mis", b"loop")];
    let ids = ["first".to_owned(), "loop".to_owned()];
    for isolation in BOTH {
        for batch in [false, true] {
            let mut invoker = rt.invoker(plugin.clone(), isolation);
            until_the_deadline_clock_sleeps(&rt);
            let started = Instant::now();
            // On a thread of its own, so that a call never interrupted fails
            // the test instead of hanging it.
            let (done, outcome) = std::sync::mpsc::channel();
            let (looping, ids, inv) = (looping.clone(), ids.clone(), inv.clone());
            std::thread::spawn(move || {
                let outcome = if batch {
                    // A reused instance takes both in one call, which times
                    // out as a whole; a fresh one gets a call for each.
                    match invoker.invoke_batch(&looping, &ids, &inv) {
                        Ok(mut outcomes) => outcomes.pop().expect("an outcome").map(|_| ()),
                        Err(failure) => Err(failure),
                    }
                } else {
                    invoker.invoke(&looping[1], &inv).map(|_| ())
                };
                let _ = done.send(outcome);
            });
            let outcome = outcome
                .recv_timeout(Duration::from_secs(10))
                .expect("the looping handler is interrupted");
            let took = started.elapsed();
            assert_eq!(
                outcome,
                Err(Failure::Timeout(Duration::from_millis(200))),
                "{isolation:?}, batch: {batch}"
            );
            assert!(
                took < Duration::from_millis(1200),
                "interrupted too late: {took:?} ({isolation:?}, batch: {batch})"
            );
        }
    }
}

#[test]
fn misbehave_oom_hits_the_memory_limit() {
    for isolation in BOTH {
        let (oom, _) = misbehave(isolation, "oom", &invocation(5000, 16, &[]));
        match oom {
            Err(Failure::MemoryLimitExceeded {
                limit_bytes,
                requested_bytes,
            }) => {
                assert_eq!(limit_bytes, 16 << 20);
                assert!(requested_bytes > limit_bytes);
            }
            other => panic!("expected MemoryLimitExceeded, got {other:?}"),
        }
    }
}

#[test]
fn misbehave_stack_overflows_cleanly() {
    for isolation in BOTH {
        let (stack, _) = misbehave(isolation, "stack", &invocation(5000, 64, &[]));
        assert!(
            matches!(
                stack,
                Err(Failure::Trap {
                    kind: TrapKind::StackOverflow | TrapKind::MemoryOutOfBounds,
                    ..
                })
            ),
            "{stack:?}"
        );
    }
}

#[test]
fn the_sandbox_grants_no_files_no_network_no_environment() {
    let rt = runtime();
    let mut invoker = rt.invoker(load(&rt, artifacts::SANDBOX_PROBE), Isolation::Fresh);
    let outputs = invoker
        .invoke(&message("probe-in", b"go"), &invocation(1000, 64, &[]))
        .expect("the probe reports what it could do");
    let report = &values(&outputs)[0].1;
    for part in report.split(';') {
        assert!(!part.contains("allowed"), "the guest got through: {report}");
    }
    for attempt in ["fs=denied", "dir=denied", "net=denied", "env=0"] {
        assert!(report.contains(attempt), "{attempt} missing from {report}");
    }
}

#[test]
fn chatty_guests_are_capped_not_failed() {
    let rt = runtime();
    let mut invoker = rt.invoker(load(&rt, artifacts::CHATTY), Isolation::Reused);
    for _ in 0..3 {
        let outcome = invoker.invoke(&message("chat", b"hi"), &invocation(5000, 64, &[]));
        assert_eq!(
            outcome,
            Ok(Vec::new()),
            "100 KiB of stdout and 1000 log lines are absorbed"
        );
    }
}

fn load_error(bytes: &[u8]) -> (LoadError, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.wasm");
    std::fs::write(&path, bytes).expect("write");
    let rt = runtime();
    let error = rt.load_file(&path).expect_err("the file must be refused");
    let text = error.to_string();
    assert!(
        text.contains("broken.wasm"),
        "the message names the file: {text}"
    );
    (error, text)
}

#[test]
fn bad_files_are_refused_with_their_reason() {
    let good = std::fs::read(artifacts::UPPERCASE).expect("uppercase built");

    let (e, _) = load_error(b"");
    assert!(matches!(e, LoadError::Empty { .. }), "{e}");

    let (e, text) = load_error(b"#!/bin/sh\necho not wasm\n");
    assert!(matches!(e, LoadError::NotWasm { .. }), "{e}");
    assert!(
        text.contains("wasm32-wasip2"),
        "says how to build one: {text}"
    );

    let random: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (e, _) = load_error(&random);
    assert!(matches!(e, LoadError::NotWasm { .. }), "{e}");

    let mut garbage_component = b"\0asm\x0d\0\x01\0".to_vec();
    garbage_component.extend_from_slice(&random);
    let (e, _) = load_error(&garbage_component);
    assert!(matches!(e, LoadError::Invalid { .. }), "{e}");

    let (e, text) = load_error(&good[..good.len() / 2]);
    assert!(matches!(e, LoadError::Invalid { .. }), "{e}");
    assert!(text.contains("truncated"), "suggests truncation: {text}");

    let (e, _) = load_error(b"\0asm\x01\0\0\0");
    assert!(matches!(e, LoadError::CoreModule { .. }), "{e}");

    let (e, text) = load_error(&std::fs::read(artifacts::WRONG_WORLD).expect("built"));
    assert!(matches!(e, LoadError::NotAHandler { .. }), "{e}");
    assert!(
        text.contains("does not export `handle` from interface sluice:handler/handler@0.1.0"),
        "{text}"
    );

    let (e, text) = load_error(&std::fs::read(artifacts::FUTURE_MAJOR).expect("built"));
    assert!(matches!(e, LoadError::IncompatibleVersion { .. }), "{e}");
    assert!(text.contains("sluice:handler/handler@1.0.0"), "{text}");

    let (e, text) = load_error(&std::fs::read(artifacts::UNKNOWN_IMPORT).expect("built"));
    assert!(matches!(e, LoadError::UnknownImport { .. }), "{e}");
    assert!(text.contains("acme:vault/secrets"), "{text}");

    // No instance of it fits in a memory slot: every message would fail the
    // same way, so the module is refused when it is loaded.
    let (e, text) = load_error(&std::fs::read(artifacts::OVERSIZED).expect("built"));
    assert!(matches!(e, LoadError::Instantiate { .. }), "{e}");
    assert!(
        text.contains("cannot be instantiated") && text.contains("processing.max_memory_mb"),
        "says what is wrong and which setting bounds it: {text}"
    );

    // Every call through `handle` would fail its type check, so the module is
    // refused when it is loaded, although its `handle-packed` is well typed.
    let (e, text) = load_error(&std::fs::read(artifacts::MISTYPED_HANDLE).expect("built"));
    assert!(matches!(e, LoadError::Instantiate { .. }), "{e}");
    assert!(
        text.contains("`handle` does not have the contract's type"),
        "{text}"
    );

    let missing = runtime().load_file(Path::new("/nonexistent/plugin.wasm"));
    assert!(matches!(missing, Err(LoadError::Read { .. })));
}

#[test]
fn a_module_is_refused_for_a_memory_limit_its_initial_memory_does_not_fit() {
    let rt = runtime();
    let plugin = load(&rt, artifacts::UPPERCASE);
    // A Rust guest's memory starts with its 1 MiB stack and its data.
    let error = rt
        .fits_within(&plugin, 1 << 20, "the test's limit")
        .expect_err("1 MiB is less than the module's initial memory");
    assert!(matches!(error, LoadError::Instantiate { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("uppercase.wasm cannot be instantiated")
            && text.contains("memory limit of 1048576 bytes")
            && text.contains("its initial memory must fit in the test's limit"),
        "names the module, the limit and the setting: {text}"
    );
    rt.fits_within(&plugin, 2 << 20, "the test's limit")
        .expect("2 MiB is enough for it");
    // Instances within the limit it fits in still work.
    let outcome = rt
        .invoker(plugin, Isolation::Fresh)
        .invoke(&message("t", b"ok"), &invocation(5000, 2, &[]));
    assert_eq!(
        values(&outcome.expect("handled")),
        [("t.out".to_owned(), "OK".to_owned())]
    );
}

#[test]
fn plugins_are_identified_by_name_and_content_hash() {
    let rt = runtime();
    let plugin = load(&rt, artifacts::JSON_ROUTER);
    assert_eq!(plugin.name(), "json_router");
    assert_eq!(plugin.hash().len(), 64);
    assert_eq!(
        plugin.size() as u64,
        std::fs::metadata(artifacts::JSON_ROUTER)
            .expect("built")
            .len()
    );
    assert!(
        plugin
            .info()
            .exports
            .iter()
            .any(|e| e == "sluice:handler/handler@0.1.0 { handle }")
    );
    assert!(
        plugin
            .info()
            .imports
            .iter()
            .any(|i| i.starts_with("sluice:handler/host@0.1.0"))
    );
}

/// `n` messages of one partition, `value(i)` each, at offsets from 100.
fn run_of(n: usize, value: impl Fn(usize) -> String) -> (Vec<Message>, Vec<String>) {
    let messages = (0..n)
        .map(|i| Message {
            offset: 100 + i as i64,
            ..message("run", value(i).as_bytes())
        })
        .collect();
    let ids = (0..n).map(|i| format!("id-{i}")).collect();
    (messages, ids)
}

#[test]
fn a_batch_call_gives_what_one_call_per_message_gives() {
    let rt = runtime();
    let plugin = load(&rt, artifacts::MISBEHAVE);
    assert!(plugin.has_batch_export(), "the SDK exports handle-batch");
    let inv = invocation(1000, 64, &[("output_topic", "out")]);
    for entry in [EntryPoint::Packed, EntryPoint::Batch] {
        a_batch_call_through(entry, &rt, &plugin, &inv);
    }
    // Fresh isolation never shares an instance between messages.
    assert!(!rt.invoker(plugin, Isolation::Fresh).batches());
}

fn a_batch_call_through(entry: EntryPoint, rt: &Runtime, plugin: &Arc<Plugin>, inv: &Invocation) {
    let (messages, ids) = run_of(50, |i| format!("ok:v{i}"));
    let mut batched = rt.invoker(plugin.clone(), Isolation::Reused);
    batched.limit_entry_point(entry);
    assert_eq!(
        batched.entry_point(),
        entry,
        "the SDK exports {}",
        entry.as_str()
    );
    assert!(batched.batches());
    let outcomes = batched
        .invoke_batch(&messages, &ids, inv)
        .expect("the call succeeds");
    let mut single = rt.invoker(plugin.clone(), Isolation::Reused);
    single.limit_entry_point(EntryPoint::Handle);
    let expected: Vec<_> = messages.iter().map(|m| single.invoke(m, inv)).collect();
    assert_eq!(outcomes, expected);
    assert_eq!(
        values(outcomes[49].as_ref().expect("ok")),
        [("out".to_owned(), "v49".to_owned())]
    );

    // A failure the handler returns ends the batch there: the rest is not
    // handled, so that a retry of the failed message comes before it.
    let (messages, ids) = run_of(10, |i| {
        if i == 4 {
            "permanent".into()
        } else {
            format!("ok:{i}")
        }
    });
    let outcomes = batched
        .invoke_batch(&messages, &ids, inv)
        .expect("the call succeeds");
    assert_eq!(outcomes.len(), 5);
    assert!(outcomes[..4].iter().all(Result::is_ok));
    assert!(matches!(
        outcomes[4],
        Err(Failure::Handler {
            retryable: false,
            ..
        })
    ));

    // A trap fails the whole call, and the instance is replaced.
    let (messages, ids) = run_of(10, |i| {
        if i == 6 {
            "panic".into()
        } else {
            format!("ok:{i}")
        }
    });
    match batched.invoke_batch(&messages, &ids, inv) {
        Err(Failure::Trap {
            kind: TrapKind::Panic,
            ..
        }) => {}
        other => panic!("expected the batch to trap, got {other:?}"),
    }
    let after = batched
        .invoke_batch(&messages[..6], &ids[..6], inv)
        .expect("a new instance");
    assert_eq!(after.len(), 6);
    assert!(after.iter().all(Result::is_ok));
}

/// Messages that between them use every field and every shape of one.
fn varied_messages() -> Vec<Message> {
    let base = |offset: i64, value: Option<&[u8]>| Message {
        offset,
        value: value.map(<[u8]>::to_vec),
        ..message("vary", b"")
    };
    let mut messages = vec![
        base(1, Some(b"plain")),
        Message {
            key: None,
            timestamp: None,
            headers: Vec::new(),
            ..base(2, Some(b"no key, no timestamp, no headers"))
        },
        base(3, None),
        base(4, Some(b"")),
        Message {
            key: Some(Vec::new()),
            headers: vec![
                Header {
                    key: "bin".into(),
                    value: vec![0, 0xff, 0x80],
                },
                Header {
                    key: "empty".into(),
                    value: Vec::new(),
                },
                Header {
                    key: "ключ".into(),
                    value: "значение".into(),
                },
            ],
            partition: 7,
            attempt: 3,
            timestamp: Some(-1),
            ..base(5, Some(&[0, 1, 2, 0xfe, 0xff]))
        },
        base(6, Some(&vec![b'x'; 100 << 10])),
        base(7, Some(b"none")),
        base(8, Some(b"twice")),
        base(9, Some(b"retry")),
        base(10, Some(b"after a retry")),
        base(11, Some(b"permanent")),
        base(12, Some(b"last")),
    ];
    messages.push(Message {
        topic: "другая.тема".into(),
        ..base(i64::MAX, Some(b"another topic"))
    });
    messages
}

/// What `mirror` returns for `msg`, worked out here rather than asked of it.
fn mirrored(msg: &Message) -> CallOutcome {
    let topic = format!("{}.out", msg.topic);
    match msg.value.as_deref() {
        Some(b"retry") => {
            return Err(Failure::Handler {
                retryable: true,
                message: format!("retry at {} ✓", msg.offset),
            });
        }
        Some(b"permanent") => {
            return Err(Failure::Handler {
                retryable: false,
                message: format!("permanent at {} ✓", msg.offset),
            });
        }
        Some(b"none") => return Ok(Vec::new()),
        _ => {}
    }
    let mut headers = msg.headers.clone();
    let decimal = |key: &str, n: String| Header {
        key: key.to_owned(),
        value: n.into_bytes(),
    };
    headers.push(decimal("partition", msg.partition.to_string()));
    headers.push(decimal("offset", msg.offset.to_string()));
    headers.push(decimal("attempt", msg.attempt.to_string()));
    if let Some(timestamp) = msg.timestamp {
        headers.push(decimal("timestamp", timestamp.to_string()));
    }
    let mut outputs = vec![Output {
        topic: topic.clone(),
        key: msg.key.clone(),
        value: msg.value.clone(),
        headers,
    }];
    if msg.value.as_deref() == Some(b"twice") {
        outputs.push(Output {
            topic,
            key: None,
            value: None,
            headers: Vec::new(),
        });
    }
    Ok(outputs)
}

#[test]
fn every_entry_point_hands_over_the_whole_message_and_returns_the_whole_result() {
    let rt = runtime();
    let plugin = load(&rt, artifacts::MIRROR);
    assert_eq!(plugin.entry_point(), EntryPoint::Packed);
    let inv = invocation(1000, 64, &[]);
    let messages = varied_messages();
    let expected: Vec<CallOutcome> = messages.iter().map(mirrored).collect();
    let ids: Vec<String> = (0..messages.len()).map(|i| format!("id-{i}")).collect();
    for entry in [EntryPoint::Handle, EntryPoint::Batch, EntryPoint::Packed] {
        for isolation in BOTH {
            let mut invoker = rt.invoker(plugin.clone(), isolation);
            invoker.limit_entry_point(entry);
            assert_eq!(invoker.entry_point(), entry);
            let singly: Vec<CallOutcome> =
                messages.iter().map(|m| invoker.invoke(m, &inv)).collect();
            assert_eq!(
                singly, expected,
                "one call per message, {entry:?}, {isolation:?}"
            );

            // As the pipeline does: after a failed message, the rest again.
            let mut batched = Vec::new();
            while batched.len() < messages.len() {
                let from = batched.len();
                let outcomes = invoker
                    .invoke_batch(&messages[from..], &ids[from..], &inv)
                    .expect("no call traps");
                assert!(!outcomes.is_empty(), "a call handles at least one message");
                batched.extend(outcomes);
            }
            assert_eq!(batched, expected, "batches, {entry:?}, {isolation:?}");
        }
    }
}

#[test]
fn a_handler_without_the_batch_export_is_called_once_per_message() {
    let rt = runtime();
    let plugin = load(&rt, artifacts::UNBATCHED);
    assert!(!plugin.has_batch_export());
    let inv = invocation(1000, 64, &[]);
    let mut invoker = rt.invoker(plugin, Isolation::Reused);
    assert!(!invoker.batches());
    let (messages, ids) = run_of(5, |i| {
        if i == 3 {
            "fail".into()
        } else {
            format!("ab{i}")
        }
    });
    let outcomes = invoker
        .invoke_batch(&messages, &ids, &inv)
        .expect("calls succeed");
    let got: Vec<Vec<(String, String)>> = outcomes[..3]
        .iter()
        .map(|o| values(o.as_ref().expect("ok")))
        .collect();
    assert_eq!(
        got,
        (0..3)
            .map(|i| vec![("run.out".to_owned(), format!("{i}ba"))])
            .collect::<Vec<_>>()
    );
    assert_eq!(outcomes.len(), 4, "it stops after the failed message");
    assert!(matches!(
        outcomes[3],
        Err(Failure::Handler {
            retryable: false,
            ..
        })
    ));
}

/// Runs `f` and returns what it logged on this thread at warning level and
/// above, one line per event.
fn warnings_during<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    sluice_tests::logs::during(tracing::Level::WARN, f)
}

#[test]
fn batch_and_packed_exports_of_another_type_are_never_called() {
    let rt = runtime();
    let (messages, ids) = run_of(4, |i| format!("ab{i}"));
    let expected: Vec<Vec<(String, String)>> = (0..4)
        .map(|i| vec![("run.out".to_owned(), format!("ab{i}"))])
        .collect();
    let inv = invocation(1000, 64, &[]);
    let ((), warnings) = warnings_during(|| {
        let plugin = load(&rt, artifacts::MISTYPED);
        assert_eq!(
            plugin.entry_point(),
            EntryPoint::Handle,
            "a handle-packed and a handle-batch of another type are refused when the module \
             is loaded, so what `sluice check` reports is what is called"
        );
        assert!(!plugin.has_batch_export());
        for isolation in BOTH {
            let mut invoker = rt.invoker(plugin.clone(), isolation);
            let outcomes = invoker
                .invoke_batch(&messages, &ids, &inv)
                .expect("no call traps");
            let got: Vec<_> = outcomes
                .iter()
                .map(|o| values(o.as_ref().expect("handled by `handle`")))
                .collect();
            assert_eq!(got, expected, "a run of messages ({isolation:?})");
            let one = invoker.invoke(&messages[1], &inv).expect("handled");
            assert_eq!(values(&one), expected[1], "one message ({isolation:?})");
        }
    });
    // Five fresh instances and a reused one were made; each export is
    // reported once, when the module was loaded, with the module's file.
    for export in ["handle-packed", "handle-batch"] {
        let about: Vec<&String> = warnings
            .iter()
            .filter(|line| line.contains(&format!("{export} ")) && line.contains("mistyped"))
            .collect();
        assert_eq!(about.len(), 1, "one warning about {export}: {warnings:#?}");
    }
}

/// A runtime that keeps compiled modules in `dir`.
fn cached_runtime(dir: &Path) -> Runtime {
    Runtime::new(sluice::wasm::RuntimeConfig {
        max_instances: 16,
        max_memory_bytes: 64 << 20,
        compile_cache: Some(dir.to_owned()),
        ..sluice::wasm::RuntimeConfig::default()
    })
    .expect("the runtime must start")
}

/// The compile cache's entries, by file name.
fn cache_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("the cache directory exists")
        .map(|e| {
            e.expect("readable")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Loads `path` in `rt`, checks that it still upper-cases, and says whether
/// its machine code came from the compile cache.
fn shouts(rt: &Runtime, path: &Path) -> bool {
    let plugin = Arc::new(rt.load_file(path).expect("loads"));
    let outputs = rt
        .invoker(plugin.clone(), Isolation::Reused)
        .invoke(&message("t", b"quiet"), &invocation(1000, 64, &[]))
        .expect("handles the message");
    assert_eq!(outputs[0].value.as_deref(), Some(&b"QUIET"[..]));
    plugin.from_cache()
}

#[test]
fn a_restart_takes_compiled_modules_from_the_cache_and_damaged_entries_are_compiled_again() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let cache = tmp.path().join("cache");
    let module = tmp.path().join("shout.wasm");
    std::fs::copy(artifacts::UPPERCASE, &module).expect("copy");
    let hash = sluice_tests::sha256_hex(&std::fs::read(&module).expect("read"));

    assert!(
        !shouts(&cached_runtime(&cache), &module),
        "first load compiles"
    );
    let entries = cache_entries(&cache);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        entries[0].starts_with(&format!("shout-{hash}-")),
        "{entries:?}"
    );
    let entry = cache.join(&entries[0]);
    assert!(
        shouts(&cached_runtime(&cache), &module),
        "a new runtime (a restart) takes the machine code from the cache"
    );

    // A damaged entry, whether one byte changed or cut short, is never
    // loaded: the module is compiled again and the entry replaced.
    let intact = std::fs::read(&entry).expect("entry");
    let mut flipped = intact.clone();
    flipped[intact.len() / 2] ^= 0x40;
    for damaged in [flipped, intact[..intact.len() / 2].to_vec()] {
        std::fs::write(&entry, damaged).expect("damage the entry");
        assert!(!shouts(&cached_runtime(&cache), &module));
        assert_eq!(std::fs::read(&entry).expect("entry"), intact, "replaced");
        assert!(shouts(&cached_runtime(&cache), &module));
    }

    // A new version of the module replaces its entry.
    std::fs::copy(artifacts::UNBATCHED, &module).expect("copy");
    let rt = cached_runtime(&cache);
    let plugin = rt.load_file(&module).expect("loads");
    assert!(!plugin.from_cache());
    let entries = cache_entries(&cache);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        entries[0].starts_with(&format!("shout-{}-", plugin.hash())),
        "{entries:?}"
    );

    // Without a cache nothing is kept.
    assert!(!shouts(&runtime(), Path::new(artifacts::UPPERCASE)));
}

#[test]
fn a_compile_cache_other_users_may_write_to_is_not_used() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().expect("temporary directory");
    let cache = tmp.path().join("shared");
    std::fs::create_dir(&cache).expect("mkdir");
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let rt = cached_runtime(&cache);
    assert_eq!(rt.compile_cache_dir(), None);
    assert!(!shouts(&rt, Path::new(artifacts::UPPERCASE)));
    assert!(!shouts(
        &cached_runtime(&cache),
        Path::new(artifacts::UPPERCASE)
    ));
    assert!(cache_entries(&cache).is_empty(), "nothing written");
}
