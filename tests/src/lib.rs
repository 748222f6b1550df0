//! Shared helpers for Sluice's integration tests: a real broker, test
//! traffic, and the daemon in-process or as a child process.

pub mod broker;
pub mod corrupt;
pub mod daemon;
pub mod http;
pub mod kafka;
pub mod logs;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice::wasm::{Header, Invocation, Limits, Message, Plugin, Runtime, RuntimeConfig};

pub use sluice_test_artifacts as artifacts;

/// A runtime sized for tests: a small pool, the default limits.
pub fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        max_instances: 16,
        max_memory_bytes: 64 << 20,
        ..RuntimeConfig::default()
    })
    .unwrap_or_else(|e| panic!("the runtime must start: {e}"))
}

/// Where the tests keep compiled Python and JavaScript components between
/// runs, beside the built guests: compiling one takes seconds, loading it
/// from the cache milliseconds.
pub fn polyglot_cache_dir() -> PathBuf {
    daemon::plugins_dir().join("compile-cache")
}

/// [`runtime`] with the compile cache in [`polyglot_cache_dir`].
pub fn polyglot_runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        max_instances: 16,
        max_memory_bytes: 64 << 20,
        compile_cache: Some(polyglot_cache_dir()),
        ..RuntimeConfig::default()
    })
    .unwrap_or_else(|e| panic!("the runtime must start: {e}"))
}

/// Loads a guest built by `sluice-test-artifacts`.
pub fn load(runtime: &Runtime, path: &str) -> Arc<Plugin> {
    Arc::new(
        runtime
            .load_file(path.as_ref())
            .unwrap_or_else(|e| panic!("{path} must load: {e}")),
    )
}

/// A call's limits (`timeout_ms`, `memory_mb`, the default output bounds)
/// and its route config.
pub fn invocation(timeout_ms: u64, memory_mb: usize, config: &[(&str, &str)]) -> Invocation {
    Invocation {
        limits: Limits {
            timeout: Duration::from_millis(timeout_ms),
            memory_bytes: memory_mb << 20,
            ..Limits::default()
        },
        config: Arc::new(
            config
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
    }
}

/// A first-delivery message on `topic` with the given value.
pub fn message(topic: &str, value: &[u8]) -> Message {
    Message {
        topic: topic.to_owned(),
        partition: 0,
        offset: 42,
        timestamp: Some(1_700_000_000_000),
        key: Some(b"key-1".to_vec()),
        value: Some(value.to_vec()),
        headers: vec![Header {
            key: "trace".to_owned(),
            value: b"abc".to_vec(),
        }],
        attempt: 1,
    }
}

/// The SHA-256 of `bytes` in hex, as Sluice names module versions.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Runs `future` to completion from synchronous code, inside a tokio test
/// or outside one: on a thread of its own with a runtime of its own.
pub fn block_on<F: Future + Send>(future: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for a blocking call")
                    .block_on(future)
            })
            .join()
            .expect("the blocking call does not panic")
    })
}
