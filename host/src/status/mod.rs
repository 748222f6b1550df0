//! What the running daemon knows about itself: breakers, routes and their
//! modules, partitions, counters. The pipeline writes it; the HTTP endpoint,
//! tests and tools read it.
//!
//! Owns shared state only: it decides nothing and does no I/O.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::breaker::{Breaker, BreakerView, CircuitState};
use crate::config::{Config, RouteConfig};

mod partition;
mod route;

pub use self::partition::{Lag, PartitionFlags, Stalled, Stuck, TopicPartition};
pub use self::route::{LATENCY_BUCKETS, ModuleInfo, RouteMetrics, RouteStatus};

/// The daemon's state, shared by the pipeline and its observers.
pub struct Status {
    /// `kafka.environment`.
    pub environment: String,
    /// `kafka.group`.
    pub group: String,
    /// The brokers in use (the embedded broker's address when embedded).
    bootstrap_servers: Mutex<String>,
    /// The broker circuit breaker, seen from here: the pipeline owns it,
    /// and hands a view over once it has made it.
    broker: watch::Sender<Option<BreakerView>>,
    /// Each route, by input topic; routes come and go with config reloads.
    routes: RwLock<BTreeMap<String, Arc<RouteStatus>>>,
    /// Partitions stopped on a failing message, with the reason.
    stopped: Mutex<BTreeMap<TopicPartition, String>>,
    /// Each partition with a worker: its messages received and not yet
    /// finished, and whether it is paused for a full queue.
    in_flight: Mutex<BTreeMap<TopicPartition, PartitionFlags>>,
    /// Consumer lag per partition, from librdkafka's statistics.
    lag: Mutex<BTreeMap<TopicPartition, Lag>>,
    /// `processing.stall_timeout_seconds`.
    stall_timeout: Option<Duration>,
    /// Records that could not be produced (each failed attempt).
    pub(crate) produce_failures: AtomicU64,
    /// Records refused for good (too large, a missing topic, ...).
    pub(crate) produce_refusals: AtomicU64,
    /// Partition workers that ended early and were restarted.
    pub(crate) worker_restarts: AtomicU64,
    /// Per module: successful loads and refused files.
    plugin_loads: Mutex<BTreeMap<String, (u64, u64)>>,
    started: AtomicBool,
    consumed: AtomicU64,
    /// Whether a broker answers: unknown until librdkafka says.
    reachable: watch::Sender<Option<bool>>,
    /// Why the daemon's clients cannot reach the brokers with their
    /// settings (a refused login, an untrusted certificate), until a broker
    /// answers again.
    connect_failure: Mutex<Option<crate::kafka::ConnectFailure>>,
    /// The partitions held up by a record the Kafka client cannot decode.
    undecodable: Mutex<BTreeMap<TopicPartition, Stuck>>,
    /// How many partitions the consumer holds, and since when it has held
    /// none.
    assignment: Mutex<(usize, Option<Instant>)>,
    /// The consumer's session timeout: holding no partition for longer is
    /// worth saying.
    session_timeout: Duration,
    /// Consumer errors about a record (each one librdkafka reported).
    pub(crate) record_errors: AtomicU64,
    http_addr: watch::Sender<Option<SocketAddr>>,
    /// Counts plugin directory events: loads, refusals, deletions.
    plugin_events: watch::Sender<u64>,
    /// Config reloads: `(applied, refused)`.
    config_reloads: watch::Sender<(u64, u64)>,
}

impl Status {
    /// A fresh status for `config`: every breaker closed, nothing started.
    pub fn new(config: &Config) -> Arc<Status> {
        let k = &config.kafka;
        Arc::new(Status {
            environment: k.environment.clone(),
            group: k.group.clone(),
            bootstrap_servers: Mutex::new(k.bootstrap_servers.clone()),
            broker: watch::Sender::new(None),
            routes: RwLock::new(
                config
                    .routes
                    .iter()
                    .map(|r| (r.topic.clone(), RouteStatus::new(config, r)))
                    .collect(),
            ),
            stopped: Mutex::new(BTreeMap::new()),
            in_flight: Mutex::new(BTreeMap::new()),
            lag: Mutex::new(BTreeMap::new()),
            stall_timeout: config.processing.stall_timeout(),
            produce_failures: AtomicU64::new(0),
            produce_refusals: AtomicU64::new(0),
            worker_restarts: AtomicU64::new(0),
            plugin_loads: Mutex::new(BTreeMap::new()),
            started: AtomicBool::new(false),
            consumed: AtomicU64::new(0),
            reachable: watch::Sender::new(None),
            connect_failure: Mutex::new(None),
            undecodable: Mutex::new(BTreeMap::new()),
            assignment: Mutex::new((0, Some(Instant::now()))),
            session_timeout: config.kafka.session_timeout(),
            record_errors: AtomicU64::new(0),
            http_addr: watch::Sender::new(None),
            plugin_events: watch::Sender::new(0),
            config_reloads: watch::Sender::new((0, 0)),
        })
    }

    /// Messages received from Kafka so far (redeliveries included).
    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }

    pub(crate) fn count_consumed(&self) {
        self.consumed.fetch_add(1, Ordering::Relaxed);
    }

    /// The handler breaker of the route consuming `topic`.
    pub fn route_breaker(&self, topic: &str) -> Option<Arc<Breaker>> {
        self.route(topic).map(|r| r.breaker.clone())
    }

    /// The route consuming `topic`.
    pub fn route(&self, topic: &str) -> Option<Arc<RouteStatus>> {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .cloned()
    }

    /// Every route, by input topic.
    pub fn routes(&self) -> Vec<Arc<RouteStatus>> {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// The route for `route` after a config reload: the existing one (its
    /// counters kept, its breaker limits updated) or a new one.
    pub(crate) fn upsert_route(&self, config: &Config, route: &RouteConfig) -> Arc<RouteStatus> {
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        let entry = routes
            .entry(route.topic.clone())
            .or_insert_with(|| RouteStatus::new(config, route));
        entry.breaker.set_limits(
            route.circuit_breaker_threshold(&config.kafka),
            route.circuit_breaker_reset_timeout(&config.kafka),
        );
        entry.clone()
    }

    /// Forgets a route removed from the config.
    pub(crate) fn remove_route(&self, topic: &str) {
        self.routes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(topic);
    }

    /// Whether the daemon has loaded its modules and subscribed.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    pub(crate) fn set_started(&self, started: bool) {
        self.started.store(started, Ordering::Relaxed);
    }

    /// Watches the broker breaker the pipeline made.
    pub fn observe_broker(&self, breaker: BreakerView) {
        self.broker.send_replace(Some(breaker));
    }

    /// The broker breaker, once the pipeline has made it.
    pub fn broker(&self) -> watch::Receiver<Option<BreakerView>> {
        self.broker.subscribe()
    }

    /// The broker breaker's state: closed before the pipeline made it.
    pub fn broker_state(&self) -> CircuitState {
        self.broker
            .borrow()
            .as_ref()
            .map_or(CircuitState::Closed, BreakerView::state)
    }

    /// How many times the broker breaker entered `state`.
    pub fn broker_transitions_to(&self, state: CircuitState) -> u64 {
        self.broker
            .borrow()
            .as_ref()
            .map_or(0, |b| b.transitions_to(state))
    }

    /// Whether the brokers answer (`None` until known), and its changes.
    pub fn broker_reachable(&self) -> watch::Receiver<Option<bool>> {
        self.reachable.subscribe()
    }

    /// Whether a broker answered at last report.
    pub fn is_reachable(&self) -> bool {
        *self.reachable.borrow() == Some(true)
    }

    pub(crate) fn set_reachable(&self, up: bool) {
        let changed = self.reachable.send_if_modified(|known| {
            let changed = *known != Some(up);
            *known = Some(up);
            changed
        });
        if up {
            self.set_connect_failure(None);
        }
        if changed && up {
            tracing::info!("Kafka brokers reachable");
        } else if changed {
            tracing::warn!(
                "no Kafka broker is reachable; retrying in the background, consumption \
                 begins when one answers"
            );
        }
    }

    /// Records why the brokers refuse the daemon's clients, or that they no
    /// longer do; each new reason is logged once.
    pub(crate) fn set_connect_failure(&self, failure: Option<crate::kafka::ConnectFailure>) {
        let mut current = self
            .connect_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *current == failure {
            return;
        }
        if let Some(failure) = &failure {
            tracing::error!(
                "cannot connect to Kafka: {failure}; consumption waits and resumes by itself \
                 once the brokers accept the client"
            );
        }
        *current = failure;
    }

    /// Why the brokers refuse the daemon's clients, while they do.
    pub fn connect_failure(&self) -> Option<crate::kafka::ConnectFailure> {
        self.connect_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records the partitions held up by a record the Kafka client cannot
    /// decode; each new one is logged once, with what to do.
    pub(crate) fn set_undecodable(
        &self,
        now: BTreeMap<TopicPartition, Stuck>,
        action: impl Fn(&str) -> String,
    ) {
        let mut current = self
            .undecodable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (tp, stuck) in &now {
            let (topic, partition) = (&tp.topic, tp.partition);
            let known = current.get(tp).is_some_and(|s| s.offset == stuck.offset);
            if !known {
                tracing::error!(
                    topic = %topic,
                    partition,
                    offset = stuck.offset,
                    "the Kafka client cannot decode the record at {topic}[{partition}] offset \
                     {}: {}; {}",
                    stuck.offset,
                    stuck.error,
                    action(topic)
                );
            }
        }
        *current = now;
    }

    /// Records how many partitions the consumer holds after a rebalance.
    pub(crate) fn set_assigned(&self, partitions: usize, now: Instant) {
        let mut assignment = self
            .assignment
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let since = match (partitions, assignment.1) {
            (0, Some(since)) => Some(since),
            (0, None) => Some(now),
            _ => None,
        };
        *assignment = (partitions, since);
    }

    /// How many partitions the consumer holds.
    pub fn assigned(&self) -> usize {
        self.assignment
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    /// How long the consumer has held no partition, once that is longer
    /// than its session timeout (a group whose members outnumber the
    /// partitions, or a member the group left out); `None` otherwise.
    pub fn unassigned_for(&self, now: Instant) -> Option<Duration> {
        let (_, since) = *self
            .assignment
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        since
            .map(|since| now.saturating_duration_since(since))
            .filter(|&d| d > self.session_timeout)
    }

    /// The partitions held up by a record the Kafka client cannot decode.
    pub fn undecodable(&self) -> BTreeMap<TopicPartition, Stuck> {
        self.undecodable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The address the HTTP endpoint listens on, once it does.
    pub fn http_addr(&self) -> watch::Receiver<Option<SocketAddr>> {
        self.http_addr.subscribe()
    }

    pub(crate) fn set_http_addr(&self, addr: SocketAddr) {
        self.http_addr.send_replace(Some(addr));
    }

    /// Counts a module load (`ok`) or a refused module file.
    pub(crate) fn count_plugin_load(&self, module: &str, ok: bool) {
        let mut loads = self
            .plugin_loads
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = loads.entry(module.to_owned()).or_default();
        if ok {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
        drop(loads);
        self.plugin_event();
    }

    /// Loads and refusals so far of every module, by name:
    /// `(loaded, refused)`.
    pub fn all_plugin_loads(&self) -> BTreeMap<String, (u64, u64)> {
        self.plugin_loads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Module loads and refusals so far of `module`: `(loaded, refused)`.
    pub fn plugin_loads(&self, module: &str) -> (u64, u64) {
        self.plugin_loads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(module)
            .copied()
            .unwrap_or_default()
    }

    /// Config reloads so far, `(applied, refused)`, and their changes.
    pub fn config_reloads(&self) -> watch::Receiver<(u64, u64)> {
        self.config_reloads.subscribe()
    }

    pub(crate) fn count_config_reload(&self, applied: bool) {
        self.config_reloads.send_modify(|(ok, refused)| {
            if applied {
                *ok += 1;
            } else {
                *refused += 1;
            }
        });
    }

    /// A receiver that changes at every module load, refusal or deletion.
    pub fn plugin_events(&self) -> watch::Receiver<u64> {
        self.plugin_events.subscribe()
    }

    pub(crate) fn plugin_event(&self) {
        self.plugin_events.send_modify(|n| *n += 1);
    }

    /// The hash of the module version serving the route on `topic`, if any.
    pub fn serving_hash(&self, topic: &str) -> Option<String> {
        let route = self.route(topic)?;
        let module = route.module.lock().unwrap_or_else(PoisonError::into_inner);
        module.as_ref().map(|m| m.hash.clone())
    }

    /// Messages received and not yet finished, over every partition.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|f| f.in_flight.load(Ordering::Relaxed))
            .sum()
    }

    /// Takes librdkafka's latest consumer lag per partition, seen at `now`.
    pub(crate) fn set_lag(&self, latest: BTreeMap<TopicPartition, i64>, now: Instant) {
        let mut lag = self.lag.lock().unwrap_or_else(PoisonError::into_inner);
        let next = latest
            .into_iter()
            .map(|(tp, n)| {
                let since = match lag.get(&tp) {
                    Some(old) if old.lag == n && n > 0 => old.since,
                    _ => now,
                };
                (tp, Lag { lag: n, since })
            })
            .collect();
        *lag = next;
    }

    /// The consumer lag of each assigned partition.
    pub fn lag(&self) -> BTreeMap<TopicPartition, i64> {
        self.lag
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(tp, l)| (tp.clone(), l.lag))
            .collect()
    }

    /// The partitions stalled now.
    pub fn stalled(&self) -> Vec<Stalled> {
        self.stalled_at(Instant::now())
    }

    /// The partitions whose lag has stood above zero for the stall timeout
    /// at `now`, while they were neither paused (a full queue, the broker
    /// circuit), held (their route's handler circuit) nor stopped on a
    /// message: something that should move does not.
    pub fn stalled_at(&self, now: Instant) -> Vec<Stalled> {
        let Some(timeout) = self.stall_timeout else {
            return Vec::new();
        };
        if self.broker_state() != CircuitState::Closed {
            return Vec::new();
        }
        let stopped = self.stopped_partitions();
        let undecodable = self.undecodable();
        let flags = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let lag = self
            .lag
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        lag.into_iter()
            .filter(|(_, l)| l.lag > 0 && now.saturating_duration_since(l.since) >= timeout)
            .filter(|(tp, _)| !stopped.contains_key(tp) && !undecodable.contains_key(tp))
            .filter(|(tp, _)| {
                !flags
                    .get(tp)
                    .is_some_and(|f| f.paused.load(Ordering::Relaxed))
            })
            .filter(|(tp, _)| {
                self.route(&tp.topic)
                    .is_none_or(|r| r.breaker.state() == CircuitState::Closed)
            })
            .map(|(partition, l)| Stalled {
                partition,
                lag: l.lag,
                for_: now.saturating_duration_since(l.since),
            })
            .collect()
    }

    /// Whether the daemon is healthy: started, a broker reachable, the
    /// broker circuit closed, no partition stopped, stalled or held up by a
    /// record it cannot decode.
    pub fn healthy(&self) -> bool {
        self.started()
            && self.is_reachable()
            && self.broker_state() == CircuitState::Closed
            && self.stopped_partitions().is_empty()
            && self.stalled().is_empty()
            && self
                .undecodable
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
    }

    /// Follows partition `tp`, which now has a worker, through its flags.
    pub(crate) fn watch_partition(&self, tp: &TopicPartition, flags: PartitionFlags) {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tp.clone(), flags);
    }

    /// Forgets partition `tp`: revoked, or its worker restarted.
    pub(crate) fn forget_partition(&self, tp: &TopicPartition) {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tp);
    }

    /// Records the brokers in use.
    pub(crate) fn set_bootstrap_servers(&self, servers: &str) {
        *self
            .bootstrap_servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = servers.to_owned();
    }

    /// The brokers in use (the embedded broker's address when embedded).
    pub fn bootstrap_servers(&self) -> String {
        self.bootstrap_servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records that `tp` is stopped on a message, and why.
    pub(crate) fn stop(&self, tp: &TopicPartition, reason: String) {
        self.stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tp.clone(), reason);
    }

    /// Records that `tp` is no longer stopped.
    pub(crate) fn resume(&self, tp: &TopicPartition) {
        self.stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tp);
    }

    /// The partitions stopped on a message, with the reason.
    pub fn stopped_partitions(&self) -> BTreeMap<TopicPartition, String> {
        self.stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records refused for good so far.
    pub fn produce_refusals(&self) -> u64 {
        self.produce_refusals.load(Ordering::Relaxed)
    }

    /// Partition workers restarted after ending early.
    pub fn worker_restarts(&self) -> u64 {
        self.worker_restarts.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
