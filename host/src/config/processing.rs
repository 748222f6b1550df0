//! The `[processing]` table: how messages are scheduled onto handlers
//! (concurrency, queues, batches, commits, the drain on shutdown, the stall
//! report, instance isolation and the memory ceiling), with its defaults.
//!
//! Owns the fields and the durations derived from them; their checks are in
//! `validate`.

use std::time::Duration;

use serde::Deserialize;

use super::Choices;
use crate::wasm::Isolation;

/// The largest `processing.max_memory_mb`, and so the largest memory limit
/// any route can have, in MiB.
pub const MAX_MEMORY_MB: u64 = 4096;

/// How messages are scheduled onto handlers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    /// How many handler calls may run at once, across all partitions, 1 to
    /// 1024. Each partition is handled in order by one call at a time.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Messages buffered per partition, 1 to 100000; a partition whose buffer
    /// is full is paused until its handler catches up.
    #[serde(default = "default_partition_queue")]
    pub partition_queue: usize,
    /// Most messages of one partition handed to a worker in one go, 1 to 10000.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// On shutdown, how long in-flight messages may take to finish, in
    /// seconds, 0 to 300; it must be shorter than the session timeout.
    #[serde(default = "default_drain_timeout_seconds")]
    pub drain_timeout_seconds: f64,
    /// How often stored offsets are committed when `kafka.enable_auto_commit`
    /// is false (and librdkafka's commit interval when it is true), in
    /// seconds, 0.1 to 3600.
    #[serde(default = "default_commit_interval_seconds")]
    pub commit_interval_seconds: f64,
    /// `reused` (one instance per worker, replaced after any failure) or
    /// `fresh` (a new instance for every message).
    #[serde(default, deserialize_with = "deserialize_isolation")]
    pub isolation: Isolation,
    /// The largest memory limit any route may have, in MiB, 1 to 4096: it
    /// sizes the instance pool's memory slots.
    #[serde(default = "default_max_memory_mb")]
    pub max_memory_mb: u64,
    /// Whether every output carries a `correlation_id` header (the input's,
    /// or a new UUID). Off, outputs carry only the headers the handler
    /// returns. Dead letters always carry it.
    #[serde(default = "default_output_correlation_id")]
    pub output_correlation_id: bool,
    /// How long, in seconds, a partition's lag may stay above zero without
    /// moving, while it is neither paused, held nor stopped, before health
    /// reports it stalled: 10 to 86400, or 0 to never report it.
    #[serde(default = "default_stall_timeout_seconds")]
    pub stall_timeout_seconds: f64,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig {
            concurrency: default_concurrency(),
            partition_queue: default_partition_queue(),
            batch_size: default_batch_size(),
            drain_timeout_seconds: default_drain_timeout_seconds(),
            commit_interval_seconds: default_commit_interval_seconds(),
            isolation: Isolation::default(),
            max_memory_mb: default_max_memory_mb(),
            output_correlation_id: default_output_correlation_id(),
            stall_timeout_seconds: default_stall_timeout_seconds(),
        }
    }
}

impl ProcessingConfig {
    /// How long in-flight messages may take to finish on shutdown.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout_seconds)
    }

    /// How often stored offsets are committed.
    pub fn commit_interval(&self) -> Duration {
        Duration::from_secs_f64(self.commit_interval_seconds)
    }

    /// How long a partition's lag may stand still before it is reported
    /// stalled; `None` never reports it.
    pub fn stall_timeout(&self) -> Option<Duration> {
        (self.stall_timeout_seconds > 0.0)
            .then(|| Duration::from_secs_f64(self.stall_timeout_seconds))
    }
}

fn default_concurrency() -> usize {
    // One call per core keeps every core busy without oversubscribing.
    std::thread::available_parallelism().map_or(2, usize::from)
}
fn default_partition_queue() -> usize {
    // Enough to keep a handler busy between fetches (pausing and resuming a
    // partition costs a fetch), small enough to bound memory; see the
    // README's throughput figures.
    5000
}
fn default_batch_size() -> usize {
    // Amortises the hand-off to a handler thread and, with a module that
    // exports handle-batch, the call itself; docs/performance.md has the
    // figures behind it.
    256
}
fn default_output_correlation_id() -> bool {
    true
}
fn default_stall_timeout_seconds() -> f64 {
    // Five minutes: far beyond a handler call's timeout and its retries'
    // backoff, so a partition reported stalled is not merely slow.
    300.0
}
fn default_drain_timeout_seconds() -> f64 {
    // Well inside librdkafka's default 45 s session timeout.
    10.0
}
fn default_commit_interval_seconds() -> f64 {
    // librdkafka's default auto.commit.interval.ms.
    5.0
}
fn default_max_memory_mb() -> u64 {
    256
}

const ISOLATIONS: Choices<Isolation> = Choices {
    names: &[("reused", Isolation::Reused), ("fresh", Isolation::Fresh)],
    expected: r#"one of "reused", "fresh""#,
};

fn deserialize_isolation<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Isolation, D::Error> {
    d.deserialize_str(&ISOLATIONS)
}
