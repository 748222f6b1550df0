//! Per-message cost of a handler call: a 1 KiB value in, one output back.
//!
//! Measures the `uppercase` example in both isolation modes, through its
//! `handle-packed` export and through `handle`, and with runs of 64 messages
//! through `handle-packed` and `handle-batch` (one call for the run; the
//! figure is per run, and criterion's throughput line gives it per message),
//! next to a native Rust function doing the same work, so the figures read as
//! a ratio against a baseline measured in the same process. Run with
//! `cargo bench -p sluice --bench dispatch`.

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
    let ids: Vec<String> = (0..RUN).map(|i| format!("id-{i}")).collect();
    let mut group = c.benchmark_group("dispatch_1kib_batch64");
    group.throughput(Throughput::Elements(RUN as u64));
    group.bench_function("native", |b| {
        b.iter(|| {
            black_box(&run)
                .iter()
                .map(native_uppercase)
                .collect::<Vec<_>>()
        })
    });
    for entry in [EntryPoint::Packed, EntryPoint::Batch] {
        let mut invoker = through(&runtime, &plugin, Isolation::Reused, entry);
        group.bench_function(format!("reused/{}", entry.as_str()), |b| {
            b.iter(|| {
                let outcomes = invoker
                    .invoke_batch(black_box(&run), &ids, &invocation)
                    .expect("ok");
                assert_eq!(outcomes.len(), RUN);
                outcomes
            })
        });
    }
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
