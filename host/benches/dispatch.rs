//! Per-message cost of a handler call: a 1 KiB value in, one output back.
//!
//! Measures the `uppercase` example in both isolation modes, through its
//! `handle-packed` export and through `handle`, and with runs of 64 messages
//! through `handle-packed` and `handle-batch` (one call for the run; the
//! figure is per run, and criterion's throughput line gives it per message),
//! next to a native Rust function doing the same work, so the figures read as
//! a ratio against a baseline measured in the same process. `dispatch_json`
//! runs the `json-router` example on ~100-byte objects in runs of 64, next
//! to the same routing written natively with a `serde_json` map. Run with
//! `cargo bench -p sluice --bench dispatch`.
//!
//! Wall-clock figures vary by a third between runs on a small VM. Under
//! `valgrind --tool=callgrind` (with `SLUICE_BENCH_POOLING=0`), instructions
//! per call of `Invoker::invoke_batch` are repeatable.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::wasm::{
    EntryPoint, Header, Invocation, Invoker, Isolation, Limits, Message, Output, Plugin, Runtime,
    RuntimeConfig,
};

fn message() -> Message {
    Message {
        topic: "orders".to_owned(),
        partition: 3,
        offset: 1_000_000,
        timestamp: Some(1_700_000_000_000),
        key: Some(b"customer-42".to_vec()),
        value: Some((0..1024u32).map(|i| b'a' + (i % 26) as u8).collect()),
        headers: vec![Header {
            key: "correlation_id".to_owned(),
            value: b"7f1c0a1e-8d4b-4c0e-9f3a-2b5d6e7f8a9b".to_vec(),
        }],
        attempt: 1,
    }
}

/// The same work as the `uppercase` example, natively.
fn native_uppercase(msg: &Message) -> Vec<Output> {
    vec![Output {
        topic: format!("{}.out", msg.topic),
        key: msg.key.clone(),
        value: msg.value.as_ref().map(|v| v.to_ascii_uppercase()),
        headers: msg.headers.clone(),
    }]
}

/// An invoker of `plugin` whose calls go through `entry`.
fn through(
    runtime: &Runtime,
    plugin: &Arc<Plugin>,
    isolation: Isolation,
    entry: EntryPoint,
) -> Invoker {
    let mut invoker = runtime.invoker(plugin.clone(), isolation);
    invoker.limit_entry_point(entry);
    assert_eq!(
        invoker.entry_point(),
        entry,
        "the SDK exports {}",
        entry.as_str()
    );
    invoker
}

fn dispatch(c: &mut Criterion) {
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 8,
        max_memory_bytes: 64 << 20,
        // `SLUICE_BENCH_POOLING=0` for valgrind, which cannot reserve the
        // pool's address space (the `reused` figures do not depend on it).
        pooling: std::env::var("SLUICE_BENCH_POOLING").map_or(true, |v| v != "0"),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let plugin = Arc::new(
        runtime
            .load_file(sluice_test_artifacts::UPPERCASE.as_ref())
            .expect("uppercase loads"),
    );
    let invocation = Invocation {
        limits: Limits {
            timeout: Duration::from_secs(1),
            memory_bytes: 64 << 20,
            ..Limits::default()
        },
        config: Arc::default(),
    };
    let msg = message();

    let mut group = c.benchmark_group("dispatch_1kib");
    group.throughput(Throughput::Elements(1));
    group.bench_function("native", |b| b.iter(|| native_uppercase(black_box(&msg))));
    let single = [
        (Isolation::Reused, EntryPoint::Packed),
        (Isolation::Reused, EntryPoint::Handle),
        (Isolation::Fresh, EntryPoint::Packed),
        (Isolation::Fresh, EntryPoint::Handle),
    ];
    for (isolation, entry) in single {
        let mut invoker = through(&runtime, &plugin, isolation, entry);
        let name = format!("{}/{}", isolation.as_str(), entry.as_str());
        group.bench_function(name, |b| {
            b.iter(|| {
                let out = invoker.invoke(black_box(&msg), &invocation).expect("ok");
                assert_eq!(out.len(), 1);
                out
            })
        });
    }
    group.finish();

    const RUN: usize = 64;
    let run: Vec<Message> = (0..RUN)
        .map(|i| Message {
            offset: 1_000_000 + i as i64,
            ..message()
        })
        .collect();
    let invokers = [EntryPoint::Packed, EntryPoint::Batch].map(|entry| {
        let name = format!("reused/{}", entry.as_str());
        (name, through(&runtime, &plugin, Isolation::Reused, entry))
    });
    runs(
        c,
        "dispatch_1kib_batch64",
        &run,
        native_uppercase,
        invokers,
        &invocation,
    );

    let json_router = Arc::new(
        runtime
            .load_file(sluice_test_artifacts::JSON_ROUTER.as_ref())
            .expect("json-router loads"),
    );
    let run: Vec<Message> = (0..RUN).map(json_message).collect();
    let invoker = through(
        &runtime,
        &json_router,
        Isolation::Reused,
        EntryPoint::Packed,
    );
    let invokers = [("reused/handle-packed".to_owned(), invoker)];
    runs(
        c,
        "dispatch_json_batch64",
        &run,
        native_json_route,
        invokers,
        &invocation,
    );
}

/// A ~100-byte JSON object, as in the end-to-end bench's JSON workload.
fn json_message(i: usize) -> Message {
    let priority = if i.is_multiple_of(10) {
        "high"
    } else {
        "normal"
    };
    let value = format!(
        r#"{{"id":{i},"priority":"{priority}","customer":"customer-{:05}","amount":{}.{:02},"currency":"EUR"}}"#,
        i % 50_000,
        i % 1000,
        i % 100
    );
    Message {
        topic: "orders".to_owned(),
        partition: 0,
        offset: i as i64,
        timestamp: Some(1_700_000_000_000),
        key: Some(format!("key-{}", i % 64).into_bytes()),
        value: Some(value.into_bytes()),
        headers: Vec::new(),
        attempt: 1,
    }
}

/// The same work as the `json-router` example at its defaults, natively.
fn native_json_route(msg: &Message) -> Vec<Output> {
    let value = msg.value.as_deref().unwrap_or_default();
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(value).expect("a JSON object");
    let high = object.get("priority").and_then(|v| v.as_str()) == Some("high");
    let topic = if high {
        format!("{}.high", msg.topic)
    } else {
        format!("{}.default", msg.topic)
    };
    object.insert("routed_by".into(), "json-router".into());
    vec![Output {
        topic,
        key: msg.key.clone(),
        value: Some(serde_json::to_vec(&object).expect("serialises")),
        headers: msg.headers.clone(),
    }]
}

/// `native` on each message of `run`, then each of `invokers` handed the
/// whole run in one call (the figure is per run; criterion's throughput line
/// gives it per message).
fn runs<const N: usize>(
    c: &mut Criterion,
    name: &str,
    run: &[Message],
    native: fn(&Message) -> Vec<Output>,
    invokers: [(String, Invoker); N],
    invocation: &Invocation,
) {
    let ids: Vec<String> = (0..run.len()).map(|i| format!("id-{i}")).collect();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(run.len() as u64));
    group.bench_function("native", |b| {
        b.iter(|| black_box(run).iter().map(native).collect::<Vec<_>>())
    });
    for (name, mut invoker) in invokers {
        group.bench_function(name, |b| {
            b.iter(|| {
                let outcomes = invoker
                    .invoke_batch(black_box(run), &ids, invocation)
                    .expect("ok");
                assert_eq!(outcomes.len(), run.len());
                outcomes
            })
        });
    }
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
