//! A route at run time: its settings, its loaded module and a pool of
//! invokers shared by the route's partitions.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use super::breaker::{Backoff, Breaker};
use crate::config::{Config, RetryOn, RouteConfig};
use crate::wasm::{Invocation, Invoker, Isolation, Limits, Plugin, Runtime};

/// Everything a partition worker needs to know about its route.
pub struct Route {
    /// The route's configuration.
    pub config: RouteConfig,
    /// The module handling it.
    pub plugin: Arc<Plugin>,
    /// Limits and config table handed to every call.
    pub invocation: Invocation,
    /// The topics the handler may emit to.
    pub output_topics: HashSet<String>,
    /// Where failed messages go; `None` stops the partition instead.
    pub dead_letter_topic: Option<String>,
    /// Retries of a retryable failure before it is dead-lettered.
    pub max_retry_attempts: u32,
    /// The failures that are retried.
    pub retry_on: Vec<RetryOn>,
    /// The delay before each retry.
    pub backoff: Backoff,
    /// The handler breaker: open after too many messages in a row failed
    /// with retryable errors or timeouts.
    pub breaker: Arc<Breaker>,
    runtime: Runtime,
    isolation: Isolation,
    /// Idle invokers; a worker takes one for a batch and puts it back, so
    /// reused instances outlive batches without one per partition.
    idle: Mutex<Vec<Invoker>>,
}

impl Route {
    /// Builds the run-time route from its configuration and loaded module.
    pub fn new(
        config: &Config,
        route: &RouteConfig,
        plugin: Arc<Plugin>,
        runtime: Runtime,
        breaker: Arc<Breaker>,
    ) -> Route {
        Route {
            invocation: Invocation {
                limits: Limits {
                    timeout: route.timeout(),
                    memory_bytes: route.memory_limit_bytes(),
                },
                config: Arc::new(route.config.clone()),
            },
            output_topics: route.output_topics.iter().cloned().collect(),
            dead_letter_topic: route.dead_letter_topic(&config.kafka).map(str::to_owned),
            max_retry_attempts: route.max_retry_attempts(&config.kafka),
            retry_on: route.retry_on(),
            backoff: config.kafka.retry_backoff(),
            breaker,
            config: route.clone(),
            plugin,
            runtime,
            isolation: config.processing.isolation,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Takes an idle invoker, or makes one.
    pub fn take_invoker(&self) -> Invoker {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        idle.unwrap_or_else(|| self.runtime.invoker(self.plugin.clone(), self.isolation))
    }

    /// Returns an invoker to the pool.
    pub fn put_invoker(&self, invoker: Invoker) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(invoker);
    }
}
