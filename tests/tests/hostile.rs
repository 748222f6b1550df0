//! The runtime against a hostile guest (`tests/fixtures/hostile`): every
//! limit a handler is held to is attacked, and each attack ends in its typed
//! outcome, with a healthy call right after it on the same invoker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::wasm::{
    EntryPoint, Failure, Invocation, Invoker, Isolation, Limits, OutputLimitExceeded, OutputLimits,
    Plugin, Runtime,
};
use sluice_tests::{artifacts, load, message, runtime};

const BOTH: [Isolation; 2] = [Isolation::Fresh, Isolation::Reused];

/// The entry points a module built with the SDK can be called through: the
/// packed decoder and the component model's lifting are both checked.
const ENTRIES: [EntryPoint; 2] = [EntryPoint::Packed, EntryPoint::Handle];

fn invocation(timeout: Duration, outputs: OutputLimits) -> Invocation {
    Invocation {
        limits: Limits {
            timeout,
            memory_bytes: 64 << 20,
            outputs,
        },
        config: Arc::default(),
    }
}

fn hostile(rt: &Runtime) -> Arc<Plugin> {
    load(rt, artifacts::HOSTILE)
}

/// Calls `value`, then checks that a healthy call on the same invoker
/// succeeds. Returns the first call's outcome and how long it took.
fn attack(
    invoker: &mut Invoker,
    value: &str,
    inv: &Invocation,
) -> (sluice::wasm::CallOutcome, Duration) {
    let started = Instant::now();
    let outcome = invoker.invoke(&message("in", value.as_bytes()), inv);
    let took = started.elapsed();
    let after = invoker.invoke(
        &message("in", b"fine"),
        &invocation(Duration::from_secs(5), OutputLimits::default()),
    );
    assert_eq!(
        after.map(|o| o.len()),
        Ok(1),
        "a healthy call right after `{value}` succeeds"
    );
    (outcome, took)
}

#[test]
fn a_handler_that_waits_in_a_wasi_call_is_stopped_at_its_deadline() {
    let rt = runtime();
    let plugin = hostile(&rt);
    let timeout = Duration::from_millis(300);
    let inv = invocation(timeout, OutputLimits::default());
    for isolation in BOTH {
        let mut invoker = rt.invoker(plugin.clone(), isolation);
        // `std::thread::sleep` blocks on a pollable; `poll(2)` polls a list.
        for value in ["sleep:20000", "poll:20000"] {
            let (outcome, took) = attack(&mut invoker, value, &inv);
            assert_eq!(
                outcome,
                Err(Failure::Timeout(timeout)),
                "{value} ({isolation:?})"
            );
            // Far below the 20 s asked for: the wait was cut at the deadline.
            // (The margin past the deadline is measured, not asserted tight.)
            eprintln!("{value} ({isolation:?}): timed out after {took:?} (deadline {timeout:?})");
            assert!(
                took >= timeout,
                "{value}: stopped before the deadline: {took:?}"
            );
            assert!(
                took < Duration::from_secs(5),
                "{value}: not stopped at the deadline: {took:?}"
            );
        }
        // A wait within the deadline is not disturbed.
        let (outcome, _) = attack(&mut invoker, "sleep:10", &inv);
        assert_eq!(
            outcome.map(|o| o[0].value.clone()),
            Ok(Some(b"woke".to_vec()))
        );
        let (outcome, _) = attack(&mut invoker, "poll:10", &inv);
        assert_eq!(
            outcome.map(|o| o[0].value.clone()),
            Ok(Some(b"polled".to_vec()))
        );
    }
}

#[test]
fn a_run_of_messages_that_waits_is_stopped_at_the_run_deadline() {
    let rt = runtime();
    let mut invoker = rt.invoker(hostile(&rt), Isolation::Reused);
    let timeout = Duration::from_millis(300);
    let messages: Vec<_> = ["a", "sleep:20000", "b"]
        .iter()
        .map(|v| message("in", v.as_bytes()))
        .collect();
    let ids = vec![String::new(); messages.len()];
    let started = Instant::now();
    let outcome = invoker.invoke_batch(
        &messages,
        &ids,
        &invocation(timeout, OutputLimits::default()),
    );
    assert_eq!(outcome, Err(Failure::Timeout(timeout)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Small bounds, so each can be broken cheaply.
const SMALL: OutputLimits = OutputLimits {
    max_outputs: 10,
    max_output_bytes: 1000,
    max_output_headers: 4,
    max_returned_bytes: 5000,
};

fn refused_by(outcome: &sluice::wasm::CallOutcome) -> Option<(&'static str, u64)> {
    match outcome {
        Err(Failure::InvalidOutput(OutputLimitExceeded { setting, value, .. })) => {
            Some((setting, *value))
        }
        _ => None,
    }
}

#[test]
fn outputs_over_each_bound_fail_the_message_naming_the_bound_and_the_value() {
    let rt = runtime();
    let plugin = hostile(&rt);
    let inv = invocation(Duration::from_secs(5), SMALL);
    for entry in ENTRIES {
        for isolation in BOTH {
            let mut invoker = rt.invoker(plugin.clone(), isolation);
            invoker.limit_entry_point(entry);
            let case = format!("{entry:?}, {isolation:?}");
            for (within, over, bound) in [
                ("outputs:10", "outputs:11", ("max_outputs", 11)),
                ("bytes:1000", "bytes:1001", ("max_output_bytes", 1001)),
                ("headers:4", "headers:5", ("max_output_headers", 5)),
                (
                    "topic:249",
                    "topic:250",
                    ("topic name limit (Kafka's)", 250),
                ),
            ] {
                let (ok, _) = attack(&mut invoker, within, &inv);
                assert!(ok.is_ok(), "{within} is within the bounds ({case}): {ok:?}");
                let (outcome, _) = attack(&mut invoker, over, &inv);
                assert_eq!(
                    refused_by(&outcome),
                    Some(bound),
                    "{over} ({case}): {outcome:?}"
                );
                assert!(
                    outcome.expect_err("refused").to_string().contains(bound.0),
                    "the reason names the bound"
                );
            }
            // Six outputs of 1000 bytes each fit max_output_bytes but not
            // max_returned_bytes: the tally stops at the first over 5000.
            let total = OutputLimits {
                max_outputs: 100,
                ..SMALL
            };
            let (outcome, _) = attack(
                &mut invoker,
                "outputs:100",
                &invocation(
                    Duration::from_secs(5),
                    OutputLimits {
                        max_returned_bytes: 500,
                        ..total
                    },
                ),
            );
            let (setting, value) = refused_by(&outcome).expect("refused for the total");
            assert_eq!(setting, "max_returned_bytes", "{case}");
            assert!((501..=520).contains(&value), "counted until over: {value}");
        }
    }
}

#[test]
fn a_batch_reports_the_message_whose_outputs_break_a_bound() {
    let rt = runtime();
    let mut invoker = rt.invoker(hostile(&rt), Isolation::Reused);
    let messages: Vec<_> = ["a", "outputs:11", "b"]
        .iter()
        .map(|v| message("in", v.as_bytes()))
        .collect();
    let ids = vec![String::new(); messages.len()];
    let outcomes = invoker
        .invoke_batch(&messages, &ids, &invocation(Duration::from_secs(5), SMALL))
        .expect("the call returns");
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    assert_eq!(refused_by(&outcomes[1]), Some(("max_outputs", 11)));
    assert!(outcomes.len() <= 3);
}

/// The human log lines (every level) of what `f` logs.
fn human_log_of(f: impl FnOnce()) -> Vec<String> {
    sluice_tests::logs::during(tracing::Level::TRACE, f).1
}

#[test]
fn a_long_reason_is_cut_and_marked_and_cannot_forge_a_log_line() {
    let rt = runtime();
    let mut invoker = rt.invoker(hostile(&rt), Isolation::Reused);
    for entry in ENTRIES {
        invoker.limit_entry_point(entry);
        let (outcome, _) = attack(
            &mut invoker,
            "reason:1000000",
            &invocation(Duration::from_secs(5), OutputLimits::default()),
        );
        let Err(Failure::Handler {
            retryable: false,
            message,
        }) = outcome
        else {
            panic!("a permanent error ({entry:?}): {outcome:?}");
        };
        assert!(
            message.len() <= sluice::wasm::MAX_GUEST_TEXT + 64,
            "cut ({entry:?}): {} bytes",
            message.len()
        );
        assert!(
            message.ends_with("[cut from 1000000 bytes]"),
            "marked: {message}"
        );
        assert!(
            message.starts_with("refused\\nINFO sluice: forged line\\r\\u{1b}[2K"),
            "control characters escaped: {message}"
        );
    }
}

#[test]
fn guest_log_lines_are_inert_and_rate_limited_per_module() {
    let rt = runtime();
    let plugin = hostile(&rt);
    let mut invoker = rt.invoker(plugin.clone(), Isolation::Reused);
    let inv = invocation(Duration::from_secs(5), OutputLimits::default());
    let lines = human_log_of(|| {
        for value in ["log:3", "print:2"] {
            assert_eq!(
                invoker.invoke(&message("in", value.as_bytes()), &inv),
                Ok(Vec::new())
            );
        }
    });
    let from_guest: Vec<&String> = lines.iter().filter(|l| l.contains("hostile ")).collect();
    assert_eq!(from_guest.len(), 5, "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| !l.contains('\r') && !l.contains('\u{1b}')),
        "log and stdout lines are escaped: {lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("INFO sluice: forged")),
        "no line is forged: {lines:#?}"
    );
    assert!(
        from_guest[0].contains("hostile 0\\nINFO sluice: forged line\\r\\u{1b}[2K"),
        "{lines:#?}"
    );

    // Both `log` calls and stdout lines draw on the module's budget, and
    // what it drops is counted.
    let before = plugin.log_lines_dropped();
    for value in ["log:1000", "print:1000"] {
        assert_eq!(
            invoker.invoke(&message("in", value.as_bytes()), &inv),
            Ok(Vec::new())
        );
    }
    let dropped = plugin.log_lines_dropped() - before;
    assert!(
        dropped >= 1500,
        "most of 2000 lines in a burst are dropped: {dropped}"
    );
}

/// A component whose one core module, defining `memories` linear memories,
/// is instantiated `instances` times.
fn component_of(instances: u32, memories: u32) -> Vec<u8> {
    use wasm_encoder::{Component, InstanceSection, MemorySection, MemoryType, Module, ModuleArg};
    let mut module = Module::new();
    let mut section = MemorySection::new();
    for _ in 0..memories {
        section.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
    }
    module.section(&section);
    let mut component = Component::new();
    component.section(&wasm_encoder::ModuleSection(&module));
    let mut core = InstanceSection::new();
    for _ in 0..instances {
        core.instantiate(0, Vec::<(&str, ModuleArg)>::new());
    }
    component.section(&core);
    component.finish()
}

#[test]
fn a_module_that_would_take_more_than_its_share_of_the_pool_is_refused_at_load() {
    use sluice::wasm::{CORE_INSTANCES_PER_COMPONENT, MEMORIES_PER_COMPONENT};
    let rt = runtime();
    let attacks = [
        (
            "many-instances",
            component_of(CORE_INSTANCES_PER_COMPONENT + 1, 0),
            "core module instances",
        ),
        (
            "many-memories",
            component_of(MEMORIES_PER_COMPONENT + 1, 1),
            "memories",
        ),
    ];
    for (name, bytes, what) in attacks {
        let path = std::path::PathBuf::from(format!("{name}.wasm"));
        let error = rt
            .load_bytes(&path, &bytes)
            .err()
            .unwrap_or_else(|| panic!("{name} is refused at load"))
            .to_string();
        assert!(
            error.contains(&format!("{name}.wasm")) && error.contains(what),
            "{name}: the reason names the file and what it holds too much of: {error}"
        );
        assert!(
            error.contains("per handler instance"),
            "{name}: the reason says what a handler may hold: {error}"
        );
    }
    // Two memories in one core module: the limit hit is the core module's,
    // and the message says so before it lists the handler instance's.
    let path = std::path::PathBuf::from("two-memories.wasm");
    let error = rt
        .load_bytes(&path, &component_of(1, 2))
        .err()
        .unwrap_or_else(|| panic!("two memories in one core module are refused"))
        .to_string();
    assert!(
        error.contains(
            "defined memories count of 2 exceeds the per-instance limit of 1 (the limit hit: \
             memories defined by one core module); a module must fit in one slot of the \
             instance pool: each core module may define at most 1 memory and 1 table of at \
             most 20000 elements, and a handler instance may hold at most 16 core module \
             instances, 2 memories and 8 tables in all"
        ),
        "{error}"
    );
    // The pool still serves every slot to modules that keep to their share.
    let plugin = hostile(&rt);
    // Each reused invoker keeps its instance: the 16 slots of the pool.
    let mut invokers: Vec<Invoker> = (0..16)
        .map(|_| rt.invoker(plugin.clone(), Isolation::Reused))
        .collect();
    let inv = invocation(Duration::from_secs(5), OutputLimits::default());
    for invoker in &mut invokers {
        assert_eq!(
            invoker
                .invoke(&message("in", b"fine"), &inv)
                .map(|o| o.len()),
            Ok(1)
        );
    }
}
