//! A route at run time: its settings, its current module (swapped when a
//! new version is loaded, absent while its file is deleted) and a pool of
//! invokers shared by the route's partitions.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, RouteConfig};
use crate::policy::RetryPolicy;
use crate::status::RouteStatus;
use crate::wasm::{Invocation, Invoker, Isolation, Limits, LoadError, Plugin, Runtime};

/// Refuses `plugin` for `route` when no instance of it can be made within
/// the route's `memory_limit_mb`: every message of the route would fail.
/// Makes an instance when the limit is below the runtime's, so call it
/// off the async threads.
pub(crate) fn admit(
    runtime: &Runtime,
    plugin: &Arc<Plugin>,
    route: &RouteConfig,
) -> Result<(), LoadError> {
    runtime.fits_within(
        plugin,
        route.memory_limit_bytes(),
        &format!(
            "memory_limit_mb = {} of the route for topic `{}`: raise that limit (up to \
             processing.max_memory_mb) or make the module's memory smaller",
            route.memory_limit_mb, route.topic
        ),
    )
}

/// A route as its partitions see it: replaced as a whole when a config
/// reload changes the route, read again by each partition at every batch.
pub type RouteSlot = Arc<watch::Sender<Arc<Route>>>;

/// Everything a partition worker needs to know about its route.
pub struct Route {
    /// The route's configuration.
    pub config: RouteConfig,
    /// Limits and config table handed to every call.
    pub invocation: Invocation,
    /// The topics the handler may emit to.
    pub output_topics: HashSet<String>,
    /// Where failed messages go; `None` stops the partition instead.
    pub dead_letter_topic: Option<String>,
    /// Which failures are retried, how often, after how long.
    pub policy: RetryPolicy,
    /// What the route reports: its module, counters and handler breaker.
    pub status: Arc<RouteStatus>,
    runtime: Runtime,
    isolation: Isolation,
    /// The module version handling the route, `None` while its file is
    /// deleted; each change is published to waiting workers.
    module: watch::Sender<Option<Arc<Plugin>>>,
    /// Idle invokers; a worker takes one for a batch and puts it back, so
    /// reused instances outlive batches without one per partition. An
    /// invoker of a replaced module version is dropped when taken.
    idle: Mutex<Vec<Invoker>>,
    /// A moving average of the handler's time per message, in nanoseconds
    /// (0 before the first call): it sizes batch calls.
    call_nanos: AtomicU64,
}

/// The most messages handed to one `handle-batch` call.
const MAX_BATCH_CALL: usize = 1024;

/// How long a partition keeps a concurrency slot before it lets the next
/// waiting partition have it (calls are not cut short: a turn ends between
/// calls, and batch calls are sized to fit in it). With a slow handler and
/// more busy partitions than `processing.concurrency`, each partition's
/// messages then wait about one turn per partition ahead of it, not a whole
/// `batch_size` run of every other partition's calls.
pub(crate) const TURN: Duration = Duration::from_millis(50);

/// How many handler instances `routes` routes may hold at once with
/// `concurrency` calls. Each route keeps up to `concurrency` instances, one
/// more route's worth covers a module version being swapped in, and a few
/// spare serve trial instances.
pub(crate) fn instances_for(routes: usize, concurrency: usize) -> u32 {
    u32::try_from(
        routes
            .saturating_add(1)
            .saturating_mul(concurrency)
            .saturating_add(8),
    )
    .unwrap_or(u32::MAX)
}

/// Routes a config reload may add beyond those at start before the
/// instance pool is full and the reload is refused (a pool slot reserves
/// address space, not memory).
pub(crate) const SPARE_ROUTES: usize = 8;

/// The instance pool's size for a daemon started with `routes` routes.
pub(crate) fn pool_for(routes: usize, concurrency: usize) -> u32 {
    instances_for(routes.saturating_add(SPARE_ROUTES), concurrency)
}

impl Route {
    /// Builds the run-time route from its configuration and loaded module.
    pub fn new(
        config: &Config,
        route: &RouteConfig,
        plugin: Arc<Plugin>,
        runtime: Runtime,
        status: Arc<RouteStatus>,
    ) -> Route {
        Route {
            invocation: Invocation {
                limits: Limits {
                    timeout: route.timeout(),
                    memory_bytes: route.memory_limit_bytes(),
                    outputs: route.output_limits(),
                },
                config: Arc::new(route.config.clone()),
            },
            output_topics: route.output_topics.iter().cloned().collect(),
            dead_letter_topic: route.dead_letter_topic(&config.kafka).map(str::to_owned),
            policy: RetryPolicy {
                retry_on: route.retry_on(),
                max_retry_attempts: route.max_retry_attempts(&config.kafka),
                backoff: config.kafka.retry_backoff(),
            },
            status,
            config: route.clone(),
            runtime,
            isolation: config.processing.isolation,
            module: watch::Sender::new(Some(plugin)),
            idle: Mutex::new(Vec::new()),
            call_nanos: AtomicU64::new(0),
        }
    }

    /// The input topic.
    pub fn topic(&self) -> &str {
        &self.config.topic
    }

    /// The module name the route is configured with.
    pub fn module_name(&self) -> &str {
        &self.config.module
    }

    /// The module version handling the route now, if its file is present.
    pub fn current(&self) -> Option<Arc<Plugin>> {
        self.module.borrow().clone()
    }

    /// Waits until the route has a module (its file may be deleted) and
    /// returns it.
    pub async fn module(&self) -> Arc<Plugin> {
        let mut changes = self.module.subscribe();
        loop {
            if let Some(plugin) = changes.borrow_and_update().clone() {
                return plugin;
            }
            if changes.changed().await.is_err() {
                // The route is being dropped; nothing will change any more.
                std::future::pending::<()>().await;
            }
        }
    }

    /// A receiver that sees every module change.
    pub fn module_changes(&self) -> watch::Receiver<Option<Arc<Plugin>>> {
        self.module.subscribe()
    }

    /// Switches the route to `plugin` (or to none, pausing it): calls in
    /// progress finish on the old version, the next message of each
    /// partition uses the new one. A new version also closes the handler
    /// breaker, so held messages are tried on it at once.
    pub fn set_module(&self, plugin: Option<Arc<Plugin>>) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let loaded = plugin.is_some();
        self.module.send_replace(plugin);
        if loaded {
            self.status.breaker.reset();
        }
    }

    /// The most messages one batch call may take: as many as the handler
    /// usually gets through in a quarter of the route's timeout, which is
    /// the whole call's limit, so a batch of ordinary messages never times
    /// out (a timed-out batch costs its messages a second call each), and
    /// in a [`TURN`]. The route's first call takes one message, to measure
    /// the handler.
    pub fn batch_limit(&self) -> usize {
        let per_message = self.call_nanos.load(Ordering::Relaxed);
        if per_message == 0 {
            return 1;
        }
        let budget = (self.invocation.limits.timeout / 4).min(TURN).as_nanos();
        let fits = usize::try_from(budget / u128::from(per_message)).unwrap_or(usize::MAX);
        fits.clamp(1, MAX_BATCH_CALL)
    }

    /// Notes that a call handled `messages` messages in `elapsed`.
    pub fn note_call(&self, elapsed: Duration, messages: usize) {
        let Some(messages) = u64::try_from(messages).ok().filter(|&n| n > 0) else {
            return;
        };
        let sample = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX) / messages;
        let old = self.call_nanos.load(Ordering::Relaxed);
        // An average over about the last eight calls; a race between two
        // partitions loses a sample, which does not matter here.
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.call_nanos.store(new.max(1), Ordering::Relaxed);
    }

    /// Takes an idle invoker of `plugin`, or makes one.
    pub fn take_invoker(&self, plugin: &Arc<Plugin>) -> Invoker {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(invoker) = idle.pop() {
            if Arc::ptr_eq(invoker.plugin(), plugin) {
                return invoker;
            }
        }
        drop(idle);
        self.runtime.invoker(plugin.clone(), self.isolation)
    }

    /// Returns an invoker to the pool, unless its module was replaced.
    pub fn put_invoker(&self, invoker: Invoker) {
        let current = self.module.borrow().clone();
        if current.is_some_and(|p| Arc::ptr_eq(&p, invoker.plugin())) {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(invoker);
        }
    }
}
