//! One route as the daemon knows it: its handler breaker, the module it
//! serves and its counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::breaker::Breaker;
use crate::config::{Config, RouteConfig};
use crate::policy::ErrorType;

/// One route: its breaker, its module and its counters.
pub struct RouteStatus {
    /// The input topic.
    pub topic: String,
    /// The handler breaker.
    pub breaker: Arc<Breaker>,
    /// The module currently handling the route.
    pub(super) module: Mutex<Option<ModuleInfo>>,
    /// Counters and the handler latency histogram.
    pub metrics: RouteMetrics,
}

impl RouteStatus {
    /// Records the module version serving the route (`None`: deleted).
    pub(crate) fn set_module(&self, module: Option<ModuleInfo>) {
        *self.module.lock().unwrap_or_else(PoisonError::into_inner) = module;
    }

    /// The module version serving the route, if its file is loaded.
    pub fn module(&self) -> Option<ModuleInfo> {
        self.module
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn new(config: &Config, route: &RouteConfig) -> Arc<RouteStatus> {
        Arc::new(RouteStatus {
            topic: route.topic.clone(),
            breaker: Breaker::new(
                format!("route {}", route.topic),
                route.circuit_breaker_threshold(&config.kafka),
                route.circuit_breaker_reset_timeout(&config.kafka),
            ),
            module: Mutex::new(None),
            metrics: RouteMetrics::default(),
        })
    }
}

/// A loaded module, as reported.
#[derive(Debug, Clone)]
pub struct ModuleInfo {
    /// The module name (file stem).
    pub name: String,
    /// The SHA-256 of the file, in hex.
    pub hash: String,
    /// The file size in bytes.
    pub size: u64,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// How long compiling and checking it took.
    pub load_time: Duration,
    /// Whether its machine code came from the compile cache.
    pub from_cache: bool,
    /// Log lines of this module the per-module rate limit dropped.
    log_lines_dropped: Arc<AtomicU64>,
}

impl ModuleInfo {
    /// What is reported of `plugin`, loaded just now in `load_time`.
    pub fn loaded(plugin: &crate::wasm::Plugin, load_time: Duration) -> ModuleInfo {
        ModuleInfo {
            name: plugin.name().to_owned(),
            hash: plugin.hash().to_owned(),
            size: plugin.size() as u64,
            loaded_at: SystemTime::now(),
            load_time,
            from_cache: plugin.from_cache(),
            log_lines_dropped: plugin.log_lines_dropped_counter(),
        }
    }

    /// How many of its log lines the per-module rate limit dropped since
    /// it was loaded.
    pub fn log_lines_dropped(&self) -> u64 {
        self.log_lines_dropped.load(Ordering::Relaxed)
    }
}

/// The upper bounds of the handler latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

/// A route's counters: lock-free, updated on the message path.
#[derive(Default)]
pub struct RouteMetrics {
    /// Messages whose outputs were produced.
    pub ok: AtomicU64,
    /// Messages dead-lettered, by [`ErrorType::ALL`] index.
    pub dead_lettered: [AtomicU64; ErrorType::ALL.len()],
    /// Messages that stopped their partition (no dead-letter topic).
    pub stopped: AtomicU64,
    /// Messages held by the open handler breaker (each time).
    pub held: AtomicU64,
    /// Retries of a failed call.
    pub retries: AtomicU64,
    /// Calls that took several messages at once.
    pub batch_calls: AtomicU64,
    /// Batch calls that failed as a whole, after which their messages were
    /// handled one at a time.
    pub batch_fallbacks: AtomicU64,
    /// Dead-letter records acknowledged by the broker.
    pub dlq_published: AtomicU64,
    /// Dead-letter records the broker did not acknowledge (each attempt).
    pub dlq_failures: AtomicU64,
    /// Dead-letter records refused for good.
    pub dlq_refusals: AtomicU64,
    /// Handler calls per latency bucket (the last one is `+Inf`).
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Total handler time, in nanoseconds.
    pub latency_sum_nanos: AtomicU64,
}

impl RouteMetrics {
    /// Records one handler call's duration.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts a dead-lettered message.
    pub fn dead_letter(&self, error_type: ErrorType) {
        let i = ErrorType::ALL
            .iter()
            .position(|t| *t == error_type)
            .unwrap_or(0);
        self.dead_lettered[i].fetch_add(1, Ordering::Relaxed);
    }
}
