//! The consume-handle-produce loop: one consumer for every routed topic, a
//! worker per assigned partition, at-least-once offset storage, dead-letter
//! routing and a draining shutdown.
//!
//! Owns the Kafka clients' use and the scheduling of handler calls; it does
//! not parse configuration (see [`crate::config`]) nor touch wasmtime directly
//! (see [`crate::wasm`]).

mod breaker;
mod delivery;
pub mod dlq;
#[cfg(feature = "fault-injection")]
pub mod faults;
mod partition;
pub mod refusal;
mod reload;
mod route;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{FutureExt as _, StreamExt as _};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::Producer as _;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka;
use crate::wasm::{Header, Message, Plugin, Runtime, RuntimeConfig};

pub use crate::status::Status;
use crate::status::{ModuleInfo, TopicPartition};
pub use breaker::{Admission, Backoff, Breaker, CircuitState};
pub use partition::CORRELATION_HEADER;
use partition::{Gate, WorkerEnd};
pub(crate) use route::{Route, admit};

/// The most messages the main loop takes from the consumer in one turn.
const BURST: usize = 256;

/// The partitions with a worker, looked up for every message: keys are
/// topic names from the config and the broker, so a fast hash is safe.
type Partitions = HashMap<TopicPartition, PartitionHandle, rustc_hash::FxBuildHasher>;

/// State shared by the main loop and every partition worker.
pub(crate) struct Shared {
    producer: delivery::Producer,
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    /// Bounds how many handler calls run at once.
    slots: Semaphore,
    batch_size: usize,
    /// `processing.output_correlation_id`: whether outputs carry the
    /// message's correlation id.
    output_correlation_id: bool,
    /// The largest record the producer takes (`message.max.bytes`): dead
    /// letters are cut to fit in it.
    max_record_bytes: usize,
    status: Arc<Status>,
}

/// Receives rebalance callbacks on the polling thread.
struct RebalanceContext {
    /// Gates of the partitions with a live worker.
    gates: Mutex<HashMap<TopicPartition, Arc<Gate>>>,
    /// Partitions revoked since the main loop last looked.
    revoked: Mutex<Vec<TopicPartition>>,
    /// Whether `revoked` may hold anything: the main loop looks before
    /// every message, and takes the locks only when it is set.
    revocations: AtomicBool,
    status: Arc<Status>,
}

impl ClientContext for RebalanceContext {
    /// librdkafka's periodic statistics: consumer lag per partition, and
    /// whether any broker is up.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lag = BTreeMap::new();
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    lag.insert((topic.clone(), partition), p.consumer_lag);
                }
            }
        }
        self.status.set_lag(lag, Instant::now());
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.status.set_reachable(up);
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
                let mut revoked = self.revoked.lock().unwrap_or_else(PoisonError::into_inner);
                for e in list.elements() {
                    let tp = (e.topic().to_owned(), e.partition());
                    if let Some(gate) = gates.remove(&tp) {
                        gate.revoke();
                    }
                    revoked.push(tp);
                }
                self.revocations.store(true, Ordering::Release);
                drop((gates, revoked));
                // Commit what was stored before the partitions go elsewhere.
                commit(consumer, CommitMode::Sync);
                tracing::info!(partitions = list.count(), "partitions revoked");
            }
            Rebalance::Assign(list) => {
                tracing::info!(partitions = list.count(), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!("rebalance error: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(offsets = ?offsets.to_topic_map(), "offsets committed"),
            Err(e) => {
                tracing::warn!(offsets = ?offsets.to_topic_map(), "offset commit failed: {e}")
            }
        }
    }
}

/// Commits stored offsets; having nothing new to commit is not an error.
fn commit<C: rdkafka::consumer::Consumer<X>, X: ConsumerContext>(consumer: &C, mode: CommitMode) {
    match consumer.commit_consumer_state(mode) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!("offset commit failed: {e}"),
    }
}

/// The main loop's view of one partition.
struct PartitionHandle {
    tx: mpsc::Sender<Message>,
    /// Messages received while the queue was full, in order.
    overflow: VecDeque<Message>,
    gate: Arc<Gate>,
}

/// Loads the module of every route, refusing to start when one is invalid.
fn load_routes(
    config: &Config,
    runtime: &Runtime,
    status: &Status,
) -> anyhow::Result<Vec<Arc<Route>>> {
    let dir = config.plugins_dir();
    let mut plugins: HashMap<&str, (Arc<Plugin>, ModuleInfo)> = HashMap::new();
    let mut routes = Vec::new();
    for route in &config.routes {
        let (plugin, info) = match plugins.get(route.module.as_str()) {
            Some(p) => p.clone(),
            None => {
                let started = Instant::now();
                let loaded = runtime.load_file(&dir.join(format!("{}.wasm", route.module)));
                status.count_plugin_load(&route.module, loaded.is_ok());
                let p = Arc::new(loaded?);
                let info = ModuleInfo::loaded(&p, started.elapsed());
                tracing::info!(
                    module = p.name(),
                    module_hash = p.short_hash(),
                    size = p.size(),
                    load_ms = info.load_time.as_millis() as u64,
                    from_compile_cache = info.from_cache,
                    "module loaded"
                );
                plugins.insert(&route.module, (p.clone(), info.clone()));
                (p, info)
            }
        };
        admit(runtime, &plugin, route)?;
        let route_status = status.upsert_route(config, route);
        route_status.set_module(Some(info));
        routes.push(Arc::new(Route::new(
            config,
            route,
            plugin,
            runtime.clone(),
            route_status,
        )));
    }
    Ok(routes)
}

/// Routes whose output or dead-letter topics the brokers do not have.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}; create them (Sluice does not create topics) or change the routes",
    .missing.iter().map(|(route, field, topic)| format!(
        "the route for topic {route:?} names {field} {topic:?}, which does not exist on the brokers"
    )).collect::<Vec<_>>().join("; ")
)]
pub struct MissingTopics {
    /// Per missing topic: the route's input topic, the field, the topic.
    pub missing: Vec<(String, &'static str, String)>,
}

/// How long the topic check waits for the brokers' metadata.
const TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks through the brokers' metadata that the topics of `routes` exist.
/// A missing output or dead-letter topic is an error: every message that
/// reached it would fail. A missing input topic is logged: the route
/// consumes it once it is created. When no broker answers, nothing can be
/// checked and nothing is refused. Blocks: call it off the async threads.
pub(crate) fn check_topics(
    config: &Config,
    bootstrap: &str,
    routes: &[crate::config::RouteConfig],
) -> Result<(), MissingTopics> {
    let mut wanted: Vec<(&str, &'static str, &str)> = Vec::new();
    for r in routes {
        wanted.push((&r.topic, "topic", &r.topic));
        wanted.extend(
            r.output_topics
                .iter()
                .map(|t| (r.topic.as_str(), "output_topics", t.as_str())),
        );
        if let Some(dlq) = r.dead_letter_topic(&config.kafka) {
            wanted.push((&r.topic, "dead_letter_topic", dlq));
        }
    }
    let mut names: Vec<&str> = wanted.iter().map(|(_, _, t)| *t).collect();
    names.sort_unstable();
    names.dedup();
    let timeout = config.kafka.timeout().min(TOPIC_CHECK_TIMEOUT);
    let missing = match kafka::missing_topics(config, bootstrap, &names, timeout) {
        Ok(missing) => missing,
        Err(e) => {
            tracing::warn!("cannot check that the routes' topics exist, no broker answered: {e}");
            return Ok(());
        }
    };
    let mut refused = Vec::new();
    for (route, field, topic) in wanted {
        if !missing.iter().any(|m| m == topic) {
            continue;
        }
        if field == "topic" {
            tracing::warn!(
                topic,
                "input topic does not exist on the brokers: the route consumes it once it is created"
            );
        } else {
            refused.push((route.to_owned(), field, topic.to_owned()));
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(MissingTopics { missing: refused })
    }
}

/// Every topic the configuration names: inputs, outputs and dead letters.
pub fn all_topics(config: &Config) -> Vec<String> {
    let mut topics: Vec<String> = config
        .routes
        .iter()
        .flat_map(|r| {
            std::iter::once(r.topic.clone())
                .chain(r.output_topics.iter().cloned())
                .chain(r.dead_letter_topic(&config.kafka).map(str::to_owned))
        })
        .collect();
    topics.sort();
    topics.dedup();
    topics
}

/// Runs the daemon until `shutdown` completes, then drains and commits.
///
/// With `bootstrap_servers = "embedded"` it starts the in-memory development
/// broker first and logs its address.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let status = Status::new(&config);
    run_with_status(config, status, shutdown).await
}

/// Like [`run`], reporting into `status` (made by [`Status::new`] from the
/// same config).
pub async fn run_with_status(
    config: Config,
    status: Arc<Status>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let embedded = if config.is_embedded() {
        let broker = kafka::EmbeddedBroker::start(&all_topics(&config))?;
        tracing::warn!(
            bootstrap_servers = broker.bootstrap_servers(),
            "embedded development broker started: in memory, keeps only a recent tail of each \
             partition, for development only"
        );
        Some(broker)
    } else {
        None
    };
    let bootstrap = embedded
        .as_ref()
        .map_or(config.kafka.bootstrap_servers.clone(), |b| {
            b.bootstrap_servers().to_owned()
        });
    run_with_bootstrap(config, &bootstrap, status, shutdown).await
}

/// Runs the daemon against the given brokers until `shutdown` completes.
pub async fn run_with_bootstrap(
    config: Config,
    bootstrap: &str,
    status: Arc<Status>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Health and metrics are served from the start, so that an orchestrator
    // sees "not ready" while modules load or no broker answers.
    let http_stop = CancellationToken::new();
    let _stop_http_on_exit = http_stop.clone().drop_guard();
    let http = if config.http.enabled {
        let server = crate::http::bind(
            &config.http,
            status.clone(),
            http_stop.clone().cancelled_owned(),
        )
        .await?;
        Some(tokio::spawn(server))
    } else {
        None
    };
    let p = &config.processing;
    let concurrency = p.concurrency;
    let runtime_config = RuntimeConfig {
        max_instances: route::pool_for(config.routes.len(), concurrency),
        max_memory_bytes: usize::try_from(p.max_memory_mb << 20).unwrap_or(usize::MAX),
        compile_cache: config.compile_cache_dir(),
        ..RuntimeConfig::default()
    };
    // Compiling modules is CPU-heavy: keep it off the async threads.
    let (runtime, routes) = {
        let config = config.clone();
        let status = status.clone();
        let bootstrap = bootstrap.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            check_topics(&config, &bootstrap, &config.routes)?;
            let runtime = Runtime::new(runtime_config)?;
            let routes = load_routes(&config, &runtime, &status)?;
            Ok((runtime, routes))
        })
        .await??
    };
    let stop_all = CancellationToken::new();
    // The routes in force; their modules are watched for new versions.
    let mut live = reload::Routes::new(
        config.clone(),
        bootstrap,
        routes,
        runtime,
        status.clone(),
        &stop_all,
    );

    let producer = delivery::Producer::new(&kafka::producer_config(&config, bootstrap))
        .context("creating the Kafka producer")?;
    let context = RebalanceContext {
        gates: Mutex::new(HashMap::new()),
        revoked: Mutex::new(Vec::new()),
        revocations: AtomicBool::new(false),
        status: status.clone(),
    };
    let consumer: Arc<StreamConsumer<RebalanceContext>> = Arc::new(
        kafka::consumer_config(&config, bootstrap)
            .create_with_context(context)
            .context("creating the Kafka consumer")?,
    );
    let topics: Vec<&str> = live.topics();
    consumer
        .subscribe(&topics)
        .context("subscribing to the routed topics")?;
    tracing::info!(
        group = %config.group_id(), bootstrap_servers = bootstrap, topics = ?topics,
        "consuming"
    );
    *status
        .bootstrap_servers
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = bootstrap.to_owned();
    status.set_started(true);

    let shared = Arc::new(Shared {
        producer,
        consumer: consumer.clone(),
        slots: Semaphore::new(concurrency),
        batch_size: p.batch_size,
        output_correlation_id: p.output_correlation_id,
        max_record_bytes: usize::try_from(config.kafka.max_record_bytes()).unwrap_or(usize::MAX),
        status: status.clone(),
    });
    let mut broker_circuit = status.broker.subscribe();
    // Config file changes (and SIGHUP) alter the routes live.
    let (reload_tx, mut reload_rx) = mpsc::channel::<Config>(1);
    // A reload being prepared beside this loop.
    let mut pending_reload: reload::PendingReload = None;
    if let Some(path) = &config.source {
        tokio::spawn(reload::watch_config(
            path.clone(),
            reload_tx,
            status.clone(),
            stop_all.child_token(),
        ));
    }
    let (room_tx, mut room_rx) = mpsc::unbounded_channel::<TopicPartition>();
    let mut partitions = Partitions::default();
    let mut workers = tokio::task::JoinSet::new();
    // The partition each worker task serves, to restart it should the
    // worker end early.
    let mut worker_partitions: HashMap<tokio::task::Id, TopicPartition> = HashMap::new();
    let mut commit_timer = tokio::time::interval(p.commit_interval());
    commit_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let manual_commit = !config.kafka.enable_auto_commit;
    let mut errors = ErrorLog::default();
    let mut messages = consumer.stream();
    // The partition of the last message, kept so that the next one of the
    // same partition (the usual case) needs no new key.
    let mut last: Option<TopicPartition> = None;

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Ok(()) = broker_circuit.changed() => {
                let state = *broker_circuit.borrow_and_update();
                match state {
                    CircuitState::Open => pause_all(&consumer),
                    CircuitState::Closed => resume_all(&consumer, &partitions),
                    CircuitState::HalfOpen => {}
                }
            }
            Some(new) = reload_rx.recv(), if pending_reload.is_none() => {
                pending_reload = live.prepare(new);
            }
            // Always matched: a refused reload must end this `select!`,
            // so that the next one is received.
            ready = reload::prepared(&mut pending_reload) => {
                if let Some(ready) = ready {
                    live.install(ready, &consumer);
                }
            }
            Some(tp) = room_rx.recv() => {
                if let Some(handle) = partitions.get_mut(&tp) {
                    refill(&consumer, &tp, handle, status.broker.state());
                }
            }
            Some(mut received) = messages.next() => {
                // Messages already fetched are taken in a burst, without a
                // turn of this loop (and its other branches) for each.
                let mut taken = 0;
                loop {
                    'one: {
                        drop_revoked(&consumer, &mut partitions, &status);
                        let m = match received {
                            Ok(m) => m,
                            Err(e) => {
                                if matches!(e, KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown)) {
                                    status.set_reachable(false);
                                }
                                errors.report(&e);
                                break 'one;
                            }
                        };
                        if !status.is_reachable() {
                            status.set_reachable(true);
                        }
                        status.count_consumed();
                        // Read once: each read measures and checks the name.
                        let topic = m.topic();
                        let Some(slot) = live.get(topic) else { break 'one };
                        let tp = match &last {
                            Some(tp) if tp.1 == m.partition() && tp.0 == topic => tp,
                            _ => last.insert((topic.to_owned(), m.partition())),
                        };
                        if !partitions.contains_key(tp) {
                            let (tx, rx) = mpsc::channel(p.partition_queue);
                            let gate = Arc::new(Gate::new(stop_all.child_token(), m.offset()));
                            consumer.context().gates.lock().unwrap_or_else(PoisonError::into_inner)
                                .insert(tp.clone(), gate.clone());
                            status.in_flight.lock().unwrap_or_else(PoisonError::into_inner)
                                .insert(tp.clone(), gate.flags());
                            let task = workers.spawn(partition::run_worker(
                                tp.clone(), slot.clone(), shared.clone(), gate.clone(), rx, room_tx.clone(),
                            ));
                            worker_partitions.insert(task.id(), tp.clone());
                            partitions.insert(tp.clone(), PartitionHandle { tx, overflow: VecDeque::new(), gate });
                        }
                        let Some(handle) = partitions.get_mut(tp) else { break 'one };
                        let (message, raw_keys) = to_message(&m, topic);
                        drop(m);
                        if !raw_keys.is_empty() {
                            handle.gate.keep_raw_keys(message.offset, raw_keys);
                        }
                        dispatch(&consumer, tp, handle, message);
                    }
                    taken += 1;
                    if taken == BURST {
                        break;
                    }
                    match messages.next().now_or_never() {
                        Some(Some(next)) => received = next,
                        _ => break,
                    }
                }
            }
            _ = commit_timer.tick(), if manual_commit => commit(consumer.as_ref(), CommitMode::Async),
            Some(joined) = workers.join_next_with_id(), if !workers.is_empty() => {
                let (id, failure) = match joined {
                    Ok((id, WorkerEnd::Done)) => (id, None),
                    Ok((id, WorkerEnd::Failed(reason))) => (id, Some(reason)),
                    Err(e) if e.is_cancelled() => (e.id(), None),
                    Err(e) => (e.id(), Some(format!("the partition worker panicked: {e}"))),
                };
                if let Some(tp) = worker_partitions.remove(&id)
                    && let Some(reason) = failure
                {
                    restart(&consumer, &mut partitions, &tp, &reason, &status);
                }
            }
        }
    }

    // Drain: stop fetching, let handled messages' records be acknowledged and
    // stored, then commit and flush.
    tracing::info!(
        drain_timeout_s = p.drain_timeout_seconds,
        "shutting down: draining in-flight messages"
    );
    stop_all.cancel();
    partitions.clear();
    let drained = tokio::time::timeout(p.drain_timeout(), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("drain timeout reached: unfinished messages will be delivered again");
        workers.abort_all();
    }
    commit(consumer.as_ref(), CommitMode::Sync);
    if let Err(e) = shared.producer.flush(config.kafka.timeout()) {
        tracing::warn!("producer flush incomplete: {e}");
    }
    consumer.unsubscribe();
    status.set_started(false);
    http_stop.cancel();
    if let Some(http) = http {
        let _ = http.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Starts a partition again after its worker ended early: its queued
/// messages are dropped and it is consumed again from the offset after the
/// last one stored, so nothing is skipped. The next message fetched makes a
/// new worker.
fn restart(
    consumer: &StreamConsumer<RebalanceContext>,
    partitions: &mut Partitions,
    tp: &TopicPartition,
    reason: &str,
    status: &Status,
) {
    let Some(handle) = partitions.get(tp) else {
        return;
    };
    // Revoked or shutting down: nothing to restart.
    if handle.gate.cancel.is_cancelled() {
        return;
    }
    let gate = handle.gate.clone();
    partitions.remove(tp);
    consumer
        .context()
        .gates
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(tp);
    status
        .in_flight
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(tp);
    let offset = gate.resume_at();
    status.worker_restarts.fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        topic = %tp.0, partition = tp.1, offset,
        "partition worker ended early; consuming the partition again from its last stored \
         offset: {reason}"
    );
    if let Err(e) = consumer.seek(&tp.0, tp.1, Offset::Offset(offset), Duration::ZERO) {
        tracing::error!(topic = %tp.0, partition = tp.1, offset, "cannot seek to restart the partition: {e}");
    }
    if gate.paused.load(Ordering::Relaxed) && status.broker.state() == CircuitState::Closed {
        set_paused(consumer, tp, false);
    }
}

/// Hands a message to its partition's worker, or keeps it in order in the
/// overflow and pauses the partition when the worker's queue is full.
fn dispatch(
    consumer: &StreamConsumer<RebalanceContext>,
    tp: &TopicPartition,
    handle: &mut PartitionHandle,
    message: Message,
) {
    handle.gate.in_flight.fetch_add(1, Ordering::Relaxed);
    if !handle.overflow.is_empty() {
        handle.overflow.push_back(message);
        return;
    }
    match handle.tx.try_send(message) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(message)) => {
            handle.overflow.push_back(message);
            handle.gate.paused.store(true, Ordering::Relaxed);
            set_paused(consumer, tp, true);
        }
        // The worker stopped (revoked, or stopped on a failed message): the
        // message is not stored and will be delivered again.
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

/// Moves overflow into the worker's queue as room appears; resumes the
/// partition once the overflow is empty.
fn refill(
    consumer: &StreamConsumer<RebalanceContext>,
    tp: &TopicPartition,
    handle: &mut PartitionHandle,
    broker_circuit: CircuitState,
) {
    while let Some(message) = handle.overflow.pop_front() {
        match handle.tx.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                handle.overflow.push_front(message);
                return;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                handle.overflow.clear();
                return;
            }
        }
    }
    // While the broker circuit is not closed the partition stays paused;
    // closing it resumes every partition whose queue has room.
    if handle.gate.paused.swap(false, Ordering::Relaxed) && broker_circuit == CircuitState::Closed {
        set_paused(consumer, tp, false);
    }
}

/// Pauses every assigned partition: the broker circuit opened, so nothing
/// more is fetched until records can be produced again. Messages already
/// queued are held, not dropped.
fn pause_all(consumer: &StreamConsumer<RebalanceContext>) {
    match consumer.assignment() {
        Ok(list) => {
            if let Err(e) = consumer.pause(&list) {
                tracing::warn!("cannot pause consumption: {e}");
            } else {
                tracing::warn!(
                    partitions = list.count(),
                    "broker circuit open: consumption paused"
                );
            }
        }
        Err(e) => tracing::warn!("cannot read the assignment to pause it: {e}"),
    }
}

/// Resumes every assigned partition except those paused for a full queue.
fn resume_all(consumer: &StreamConsumer<RebalanceContext>, partitions: &Partitions) {
    let assignment = match consumer.assignment() {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!("cannot read the assignment to resume it: {e}");
            return;
        }
    };
    let mut list = TopicPartitionList::new();
    for e in assignment.elements() {
        let tp = (e.topic().to_owned(), e.partition());
        let full = partitions
            .get(&tp)
            .is_some_and(|h| h.gate.paused.load(Ordering::Relaxed));
        if !full {
            list.add_partition(&tp.0, tp.1);
        }
    }
    if let Err(e) = consumer.resume(&list) {
        tracing::warn!("cannot resume consumption: {e}");
    } else {
        tracing::info!(
            partitions = list.count(),
            "broker circuit closed: consumption resumed"
        );
    }
}

fn set_paused(consumer: &StreamConsumer<RebalanceContext>, tp: &TopicPartition, paused: bool) {
    let mut list = TopicPartitionList::new();
    list.add_partition(&tp.0, tp.1);
    let result = if paused {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    if let Err(e) = result {
        tracing::warn!(topic = %tp.0, partition = tp.1, paused, "cannot change pause state: {e}");
    }
}

/// Forgets partitions the rebalance callback revoked.
fn drop_revoked(
    consumer: &StreamConsumer<RebalanceContext>,
    partitions: &mut Partitions,
    status: &Status,
) {
    let context = consumer.context();
    if !context.revocations.swap(false, Ordering::Acquire) {
        return;
    }
    let mut revoked = context
        .revoked
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let mut in_flight = status
        .in_flight
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for tp in revoked.drain(..) {
        partitions.remove(&tp);
        in_flight.remove(&tp);
    }
}

/// Copies a consumed message into the handler's message type. A header key
/// that is not UTF-8 is handed over lossily decoded; its bytes are returned
/// beside the message, by header index, for its dead letter.
fn to_message(m: &BorrowedMessage<'_>, topic: &str) -> (Message, dlq::RawKeys) {
    let mut raw_keys = dlq::RawKeys::new();
    let headers = m.headers().map_or_else(Vec::new, |hs| {
        kafka::headers::read(hs)
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let key = match String::from_utf8(h.key) {
                    Ok(key) => key,
                    Err(e) => {
                        let key = String::from_utf8_lossy(e.as_bytes()).into_owned();
                        raw_keys.push((i, e.into_bytes()));
                        key
                    }
                };
                Header {
                    key,
                    value: h.value.unwrap_or_default(),
                }
            })
            .collect()
    });
    let message = Message {
        topic: topic.to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
        attempt: 1,
    };
    (message, raw_keys)
}

/// Logs consumer errors without flooding: each distinct error at most once
/// every 30 seconds, with a count of the repeats.
#[derive(Default)]
struct ErrorLog {
    /// Per error text: when it was last logged, and repeats since.
    last: HashMap<String, (Option<Instant>, u64)>,
}

impl ErrorLog {
    const EVERY: Duration = Duration::from_secs(30);

    fn report(&mut self, error: &KafkaError) {
        let text = error.to_string();
        let now = Instant::now();
        let (logged, repeats) = self.last.entry(text.clone()).or_insert((None, 0));
        *repeats += 1;
        if logged.is_none_or(|at| now.duration_since(at) >= Self::EVERY) {
            tracing::warn!(repeats = *repeats, "Kafka consumer: {text}");
            *logged = Some(now);
            *repeats = 0;
        }
    }
}

/// The committed offset of each partition of `topic` for `group`, for tests
/// and tools.
pub fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> KafkaResult<Vec<Option<i64>>> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(list, timeout)?;
    Ok((0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            },
        )
        .collect())
}
