//! What a handler costs in each language: the Python and JavaScript examples
//! next to the Rust examples doing the same work, measured in one process so
//! the ratios hold for the machine the bench runs on.
//!
//! For each component it prints its size; the first load without the
//! compile cache (compiling it), and with it (as a restarted daemon loads
//! it); the first call on a new instance; the time per message on a reused
//! instance (the default isolation) and on a fresh one; and the resident
//! memory each live instance adds. Then it prints what a `handle-batch`
//! export saves per message, measured on the Rust `uppercase` (the call
//! itself, the part a batch export in any language would save). Run with
//! `cargo bench -p sluice --bench polyglot`; `docs/performance.md` has the
//! figures. Per-message times are the median of five runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::wasm::{
    EntryPoint, Header, Invocation, Invoker, Isolation, Limits, Message, Plugin, Runtime,
    RuntimeConfig,
};

fn runtime(cache: Option<&std::path::Path>) -> Runtime {
    Runtime::new(RuntimeConfig {
        max_instances: 32,
        max_memory_bytes: 64 << 20,
        compile_cache: cache.map(ToOwned::to_owned),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

fn message(value: &[u8]) -> Message {
    Message {
        topic: "orders".to_owned(),
        partition: 3,
        offset: 1_000_000,
        timestamp: Some(1_700_000_000_000),
        key: Some(b"customer-42".to_vec()),
        value: Some(value.to_vec()),
        headers: vec![Header {
            key: "correlation_id".to_owned(),
            value: b"7f1c0a1e-8d4b-4c0e-9f3a-2b5d6e7f8a9b".to_vec(),
        }],
        attempt: 1,
    }
}

/// Resident memory of this process, in bytes.
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Time per message of `n` calls on `invoker`, the median of five runs.
fn per_message(invoker: &mut Invoker, msg: &Message, inv: &Invocation, n: u32) -> Duration {
    median(
        (0..5)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..n {
                    let outputs = invoker.invoke(msg, inv).expect("the handler succeeds");
                    assert_eq!(outputs.len(), 1);
                }
                started.elapsed() / n
            })
            .collect(),
    )
}

struct Figures {
    size: usize,
    compile: Duration,
    cached: Duration,
    first_call: Duration,
    reused: Duration,
    fresh: Duration,
    resident_per_instance: usize,
}

fn invocation() -> Invocation {
    Invocation {
        limits: Limits {
            timeout: Duration::from_secs(5),
            memory_bytes: 64 << 20,
            ..Limits::default()
        },
        config: Arc::default(),
    }
}

fn measure(path: &str, value: &[u8], cache_dir: &std::path::Path) -> Figures {
    let size = std::fs::metadata(path).expect("the component exists").len() as usize;
    let inv = invocation();
    let msg = message(value);

    // Compile (writing the cache entry), then load from the cache as a new
    // process would.
    let started = Instant::now();
    let plugin = runtime(Some(cache_dir))
        .load_file(path.as_ref())
        .expect("loads");
    let compile = started.elapsed();
    assert!(!plugin.from_cache(), "{path} was compiled");
    drop(plugin);
    let rt = runtime(Some(cache_dir));
    let started = Instant::now();
    let plugin: Arc<Plugin> = Arc::new(rt.load_file(path.as_ref()).expect("loads"));
    let cached = started.elapsed();
    assert!(plugin.from_cache(), "{path} came from the cache");

    let mut invoker = rt.invoker(plugin.clone(), Isolation::Reused);
    let started = Instant::now();
    invoker.invoke(&msg, &inv).expect("the first call succeeds");
    let first_call = started.elapsed();
    for _ in 0..200 {
        invoker.invoke(&msg, &inv).expect("warm-up");
    }
    let reused = per_message(&mut invoker, &msg, &inv, 2000);
    drop(invoker);
    let mut fresh_invoker = rt.invoker(plugin.clone(), Isolation::Fresh);
    let fresh = per_message(&mut fresh_invoker, &msg, &inv, 50);
    drop(fresh_invoker);

    // Instances kept alive by reused invokers, each having handled a message.
    const INSTANCES: usize = 16;
    let before = resident();
    let mut alive: Vec<Invoker> = (0..INSTANCES)
        .map(|_| rt.invoker(plugin.clone(), Isolation::Reused))
        .collect();
    for invoker in &mut alive {
        invoker.invoke(&msg, &inv).expect("succeeds");
    }
    let resident_per_instance = resident().saturating_sub(before) / INSTANCES;
    drop(alive);

    Figures {
        size,
        compile,
        cached,
        first_call,
        reused,
        fresh,
        resident_per_instance,
    }
}

/// Per message through `handle` one call each, and through `handle-batch`
/// in runs of 64, on the Rust `uppercase`.
fn batch_saving(value: &[u8]) -> (Duration, Duration) {
    let rt = runtime(None);
    let plugin = Arc::new(
        rt.load_file(sluice_test_artifacts::UPPERCASE.as_ref())
            .expect("loads"),
    );
    let inv = invocation();
    let msg = message(value);
    let mut single = rt.invoker(plugin.clone(), Isolation::Reused);
    single.limit_entry_point(EntryPoint::Handle);
    for _ in 0..200 {
        single.invoke(&msg, &inv).expect("warm-up");
    }
    let handle = per_message(&mut single, &msg, &inv, 2000);

    let mut batch = rt.invoker(plugin, Isolation::Reused);
    batch.limit_entry_point(EntryPoint::Batch);
    let run: Vec<Message> = (0..64).map(|_| msg.clone()).collect();
    let ids = vec![String::new(); run.len()];
    let per_run = median(
        (0..5)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..50 {
                    let outcomes = batch.invoke_batch(&run, &ids, &inv).expect("ok");
                    assert_eq!(outcomes.len(), run.len());
                }
                started.elapsed() / 50
            })
            .collect(),
    );
    (handle, per_run / run.len() as u32)
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter on the
    // component names.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let cache = tempfile::tempdir().expect("a temporary directory");
    let text: Vec<u8> = (0..1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    let json = br#"{"id":12345,"priority":"high","customer":"c-42","amount":19.99,"items":3}"#;
    let rows: [(&str, &str, &[u8]); 4] = [
        ("uppercase (Rust)", sluice_test_artifacts::UPPERCASE, &text),
        (
            "python-uppercase",
            sluice_test_artifacts::PYTHON_UPPERCASE,
            &text,
        ),
        (
            "json-router (Rust)",
            sluice_test_artifacts::JSON_ROUTER,
            json,
        ),
        ("js-router", sluice_test_artifacts::JS_ROUTER, json),
    ];
    println!(
        "| handler | size | first load, compiling | first load, from the cache | first call | per message, reused | per message, fresh | resident per instance |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut rust_reused = Duration::ZERO;
    for (name, path, value) in rows {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let f = measure(path, value, cache.path());
        let ratio = if name.contains("Rust") {
            rust_reused = f.reused;
            String::new()
        } else if rust_reused > Duration::ZERO {
            format!(
                " ({:.0}×)",
                f.reused.as_secs_f64() / rust_reused.as_secs_f64()
            )
        } else {
            String::new()
        };
        println!(
            "| {name} | {:.1} MB | {:.2} s | {:.0} ms | {:.2} ms | {:.2} µs{ratio} | {:.0} µs | {:.1} MiB |",
            f.size as f64 / 1e6,
            f.compile.as_secs_f64(),
            f.cached.as_secs_f64() * 1e3,
            f.first_call.as_secs_f64() * 1e3,
            f.reused.as_secs_f64() * 1e6,
            f.fresh.as_secs_f64() * 1e6,
            f.resident_per_instance as f64 / (1 << 20) as f64,
        );
    }

    if filter.is_empty() {
        let (handle, batch) = batch_saving(&text);
        println!(
            "\nuppercase (Rust), per message: {:.2} µs through `handle`, {:.2} µs through \
             `handle-batch` in runs of 64: a batch export saves {:.2} µs per message",
            handle.as_secs_f64() * 1e6,
            batch.as_secs_f64() * 1e6,
            (handle.saturating_sub(batch)).as_secs_f64() * 1e6
        );
    }
}
