//! The consumer loop: one consumer for every routed topic. It hands each
//! message to its partition's worker (starting one for a newly assigned
//! partition), pauses a partition whose worker's queue is full, follows the
//! broker breaker and config reloads, restarts a worker that ended early,
//! and drains the workers at shutdown.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt as _};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::Producer as _;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use super::dlq;
use super::partition::{self, Gate, Shared, WorkerEnd};
use super::reload;
use super::undecodable::{self, Position, Undecodable};
use crate::breaker::CircuitState;
use crate::config::{Config, OnUndecodable};
use crate::kafka;
use crate::status::{Status, Stuck, TopicPartition};
use crate::wasm::{Header, Message};

/// The most messages the main loop takes from the consumer in one turn.
const BURST: usize = 256;

/// The partitions with a worker, looked up for every message: keys are
/// topic names from the config and the broker, so a fast hash is safe.
type Partitions = HashMap<TopicPartition, PartitionHandle, rustc_hash::FxBuildHasher>;

/// The consumer loop's state. Owns the partitions' handles and worker
/// tasks; the workers own everything else about their partitions.
pub struct ConsumerLoop {
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    /// What every worker shares: the producer, the call slots, the status.
    shared: Arc<Shared>,
    /// The routes in force, by input topic; replaced by config reloads.
    live: reload::Routes,
    status: Arc<Status>,
    /// Cancelled at shutdown: every worker drains.
    stop_all: CancellationToken,
    /// `processing.partition_queue`: each worker's queue.
    partition_queue: usize,
    /// `processing.drain_timeout_seconds`.
    drain_timeout: Duration,
    /// The producer's flush timeout at shutdown.
    flush_timeout: Duration,
    /// Each partition with a worker.
    partitions: Partitions,
    /// The worker tasks.
    workers: JoinSet<WorkerEnd>,
    /// The partition each worker task serves, to restart it should the
    /// worker end early.
    worker_partitions: HashMap<Id, TopicPartition>,
    /// Workers say here that a paused partition's queue has room.
    room_tx: mpsc::UnboundedSender<TopicPartition>,
    room_rx: mpsc::UnboundedReceiver<TopicPartition>,
    /// Config file changes (and SIGHUP).
    reload_rx: mpsc::Receiver<Config>,
    /// A reload being prepared beside this loop.
    pending_reload: reload::PendingReload,
    /// The broker breaker's transitions.
    broker_circuit: watch::Receiver<CircuitState>,
    /// Stored offsets are committed on this timer unless auto-commit is on.
    commit_timer: Option<tokio::time::Interval>,
    errors: ErrorLog,
    /// Where librdkafka's statistics say each partition's fetch stands.
    positions_rx: mpsc::UnboundedReceiver<Positions>,
    /// Which partition a record the client cannot decode holds up.
    undecodable: Undecodable,
    /// The offset each partition last had dead-lettered as undecodable, so
    /// that it is written once.
    skipped: HashMap<TopicPartition, i64>,
    /// The partition of the last message, kept so that the next one of the
    /// same partition (the usual case) needs no new key.
    last: Option<TopicPartition>,
}

/// What the consumer loop needs to start.
pub struct Parts {
    pub consumer: Arc<StreamConsumer<RebalanceContext>>,
    pub shared: Arc<Shared>,
    pub live: reload::Routes,
    pub stop_all: CancellationToken,
    /// Fed by the consumer's statistics callback.
    pub positions_rx: mpsc::UnboundedReceiver<Positions>,
}

/// Each assigned partition's next fetch offset and high watermark, from one
/// statistics report.
pub type Positions = Vec<(TopicPartition, i64, i64)>;

impl ConsumerLoop {
    /// The loop for `config`, whose file (if any) is watched for changes.
    pub fn new(config: &Config, parts: Parts) -> ConsumerLoop {
        let Parts {
            consumer,
            shared,
            live,
            stop_all,
            positions_rx,
        } = parts;
        let status = shared.status.clone();
        let (reload_tx, reload_rx) = mpsc::channel::<Config>(1);
        if let Some(path) = &config.source {
            tokio::spawn(reload::watch_config(
                path.clone(),
                reload_tx,
                status.clone(),
                stop_all.child_token(),
            ));
        }
        let (room_tx, room_rx) = mpsc::unbounded_channel();
        let commit_timer = (!config.kafka.enable_auto_commit).then(|| {
            let mut timer = tokio::time::interval(config.processing.commit_interval());
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer
        });
        ConsumerLoop {
            broker_circuit: status.broker.subscribe(),
            consumer,
            shared,
            live,
            status,
            stop_all,
            partition_queue: config.processing.partition_queue,
            drain_timeout: config.processing.drain_timeout(),
            flush_timeout: config.kafka.timeout(),
            partitions: Partitions::default(),
            workers: JoinSet::new(),
            worker_partitions: HashMap::new(),
            room_tx,
            room_rx,
            reload_rx,
            pending_reload: None,
            commit_timer,
            errors: ErrorLog::default(),
            positions_rx,
            undecodable: Undecodable::default(),
            skipped: HashMap::new(),
            last: None,
        }
    }

    /// Consumes until `shutdown` completes, then drains and commits.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let consumer = self.consumer.clone();
        let mut messages = consumer.stream();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Ok(()) = self.broker_circuit.changed() => self.breaker_changed(),
                Some(new) = self.reload_rx.recv(), if self.pending_reload.is_none() => {
                    self.pending_reload = self.live.prepare(new);
                }
                // Always matched: a refused reload must end this `select!`,
                // so that the next one is received.
                ready = reload::prepared(&mut self.pending_reload) => {
                    if let Some(ready) = ready {
                        self.live.install(ready, &*self.consumer);
                    }
                }
                Some(positions) = self.positions_rx.recv() => self.positions(positions),
                Some(tp) = self.room_rx.recv() => {
                    if let Some(handle) = self.partitions.get_mut(&tp) {
                        refill(&self.consumer, &tp, handle, self.status.broker.state());
                    }
                }
                // Before the messages: under a backlog fetched in large
                // batches a message is always ready, and a branch after them
                // would wait until librdkafka's local queue ran dry (commits
                // fell seconds behind the outputs that way).
                _ = tick(&mut self.commit_timer) => {
                    commit(&*self.consumer, CommitMode::Async);
                }
                Some(joined) = self.workers.join_next_with_id(), if !self.workers.is_empty() => {
                    self.worker_ended(joined);
                }
                Some(received) = messages.next() => {
                    self.received(received);
                    // Messages already fetched are taken in a burst, without
                    // a turn of this loop (and its other branches) for each.
                    for _ in 1..BURST {
                        match messages.next().now_or_never() {
                            Some(Some(next)) => self.received(next),
                            _ => break,
                        }
                    }
                }
            }
        }
        drop(messages);
        self.drain().await;
    }

    /// The broker breaker changed: consumption pauses while it is open.
    fn breaker_changed(&mut self) {
        let state = *self.broker_circuit.borrow_and_update();
        match state {
            CircuitState::Open => pause_all(&self.consumer),
            CircuitState::Closed => resume_all(&self.consumer, &self.partitions),
            CircuitState::HalfOpen => {}
        }
    }

    /// Hands a consumed message to its partition's worker, starting one
    /// for a partition new to this loop.
    fn received(&mut self, received: KafkaResult<BorrowedMessage<'_>>) {
        drop_revoked(&self.consumer, &mut self.partitions, &self.status);
        let m = match received {
            Ok(m) => m,
            Err(e) => {
                self.consumer_error(&e);
                return;
            }
        };
        if !self.status.is_reachable() {
            self.status.set_reachable(true);
        }
        self.status.count_consumed();
        // Read once: each read measures and checks the name.
        let topic = m.topic();
        if self.live.get(topic).is_none() {
            return;
        }
        let tp = match &self.last {
            Some(tp) if tp.1 == m.partition() && tp.0 == topic => tp.clone(),
            _ => self.last.insert((topic.to_owned(), m.partition())).clone(),
        };
        if !self.partitions.contains_key(&tp) {
            self.start_worker(&tp, m.offset());
        }
        let Some(handle) = self.partitions.get_mut(&tp) else {
            return;
        };
        let (message, raw_keys) = to_message(&m, topic);
        drop(m);
        if !raw_keys.is_empty() {
            handle.gate.keep_raw_keys(message.offset, raw_keys);
        }
        dispatch(&self.consumer, &tp, handle, message);
    }

    /// A consumer error: the brokers gone, or a record librdkafka fetched
    /// and could not decode (counted, and logged once per kind).
    fn consumer_error(&mut self, e: &KafkaError) {
        match e {
            KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown) => {
                self.status.set_reachable(false);
            }
            KafkaError::MessageConsumption(code) if undecodable::is_record_error(*code) => {
                self.status.record_errors.fetch_add(1, Ordering::Relaxed);
                self.undecodable.error(&code.to_string());
                self.errors.report_once(e);
                return;
            }
            _ => {}
        }
        self.errors.report(e);
    }

    /// A statistics report: names the partitions a record the client cannot
    /// decode holds up, and moves those whose route dead-letters such
    /// records past them.
    fn positions(&mut self, positions: Positions) {
        let breaker_open = self.status.broker.state() != CircuitState::Closed;
        let report = positions.into_iter().map(|(tp, next, high)| {
            let paused = breaker_open
                || self
                    .partitions
                    .get(&tp)
                    .is_some_and(|h| h.gate.paused.load(Ordering::Relaxed));
            (tp, Position { next, high, paused })
        });
        let stuck = self.undecodable.report(report, Instant::now());
        let choice = |topic: &str| {
            self.live.get(topic).map_or(OnUndecodable::Stop, |slot| {
                slot.borrow().config.on_undecodable
            })
        };
        self.status
            .set_undecodable(stuck.iter().cloned().collect(), |topic| {
                match choice(topic) {
                OnUndecodable::DeadLetter => {
                    "its route's on_undecodable is \"dead-letter\": it is dead-lettered and the \
                     partition goes on"
                        .to_owned()
                }
                OnUndecodable::Stop => {
                    "the partition waits on it (its route's on_undecodable is \"stop\"): set \
                     on_undecodable = \"dead-letter\" on the route to dead-letter it and go on"
                        .to_owned()
                }
            }
            });
        self.skipped
            .retain(|tp, _| stuck.iter().any(|(stuck_tp, _)| stuck_tp == tp));
        let due: Vec<(TopicPartition, Stuck)> = stuck
            .into_iter()
            .filter(|(tp, s)| {
                choice(&tp.0) == OnUndecodable::DeadLetter
                    && self.skipped.get(tp) != Some(&s.offset)
            })
            .collect();
        for (tp, s) in due {
            self.skip(tp, &s);
        }
    }

    /// Hands the partition's worker the record the client cannot decode, as
    /// a message without content to dead-letter, and fetches on from the
    /// offset after it. Its offset is stored once the dead letter is
    /// acknowledged, like any other.
    fn skip(&mut self, tp: TopicPartition, stuck: &Stuck) {
        if !self.partitions.contains_key(&tp) {
            self.start_worker(&tp, stuck.offset);
        }
        let Some(handle) = self.partitions.get_mut(&tp) else {
            return;
        };
        let reason = format!(
            "the Kafka client could not decode the record at offset {}: {}; no handler saw \
             it, and its content is not in this letter",
            stuck.offset, stuck.error
        );
        handle.gate.mark_undecodable(stuck.offset, reason);
        let message = Message {
            topic: tp.0.clone(),
            partition: tp.1,
            offset: stuck.offset,
            timestamp: None,
            key: None,
            value: None,
            headers: Vec::new(),
            attempt: 1,
        };
        dispatch(&self.consumer, &tp, handle, message);
        let next = Offset::Offset(stuck.offset + 1);
        if let Err(e) = self.consumer.seek(&tp.0, tp.1, next, Duration::ZERO) {
            tracing::warn!(topic = %tp.0, partition = tp.1, "cannot fetch past offset {}: {e}", stuck.offset);
        }
        self.skipped.insert(tp, stuck.offset);
    }

    /// Starts the worker of a partition whose first message is at `offset`.
    fn start_worker(&mut self, tp: &TopicPartition, offset: i64) {
        let Some(slot) = self.live.get(&tp.0) else {
            return;
        };
        let (tx, rx) = mpsc::channel(self.partition_queue);
        let gate = Arc::new(Gate::new(self.stop_all.child_token(), offset));
        self.consumer
            .context()
            .gates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tp.clone(), gate.clone());
        self.status.watch_partition(tp, gate.flags());
        let task = self.workers.spawn(partition::run_worker(
            tp.clone(),
            slot.clone(),
            self.shared.clone(),
            gate.clone(),
            rx,
            self.room_tx.clone(),
        ));
        self.worker_partitions.insert(task.id(), tp.clone());
        let handle = PartitionHandle {
            tx,
            overflow: VecDeque::new(),
            gate,
        };
        self.partitions.insert(tp.clone(), handle);
    }

    /// A worker ended: one that ended early is restarted.
    fn worker_ended(&mut self, joined: Result<(Id, WorkerEnd), tokio::task::JoinError>) {
        let (id, failure) = match joined {
            Ok((id, WorkerEnd::Done)) => (id, None),
            Ok((id, WorkerEnd::Failed(reason))) => (id, Some(reason)),
            Err(e) if e.is_cancelled() => (e.id(), None),
            Err(e) => (e.id(), Some(format!("the partition worker panicked: {e}"))),
        };
        if let Some(tp) = self.worker_partitions.remove(&id)
            && let Some(reason) = failure
        {
            restart(
                &self.consumer,
                &mut self.partitions,
                &tp,
                &reason,
                &self.status,
            );
        }
    }

    /// Drains: stops fetching, lets handled messages' records be
    /// acknowledged and stored, then commits and flushes.
    async fn drain(mut self) {
        tracing::info!(
            drain_timeout_s = self.drain_timeout.as_secs(),
            "shutting down: draining in-flight messages"
        );
        super::shutdown::stage("draining in-flight messages");
        self.stop_all.cancel();
        self.partitions.clear();
        let workers = &mut self.workers;
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("drain timeout reached: unfinished messages will be delivered again");
            self.workers.abort_all();
        } else {
            tracing::info!("in-flight messages drained");
        }
        super::shutdown::stage("committing the stored offsets");
        if commit(&*self.consumer, CommitMode::Sync) {
            tracing::info!("stored offsets committed");
        } else {
            tracing::warn!(
                "stored offsets not committed: the messages after the last commit are \
                 delivered again"
            );
        }
        super::shutdown::stage("flushing the producer");
        if let Err(e) = self.shared.producer.flush(self.flush_timeout) {
            tracing::warn!("producer flush incomplete: {e}");
        }
        super::shutdown::stage("leaving the consumer group");
        self.consumer.unsubscribe();
        tracing::info!("left the consumer group");
    }
}

/// The commit timer's next tick, or never when auto-commit is on.
async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Receives rebalance callbacks on the polling thread.
pub struct RebalanceContext {
    /// Gates of the partitions with a live worker.
    gates: Mutex<HashMap<TopicPartition, Arc<Gate>>>,
    /// Partitions revoked since the main loop last looked.
    revoked: Mutex<Vec<TopicPartition>>,
    /// Whether `revoked` may hold anything: the main loop looks before
    /// every message, and takes the locks only when it is set.
    revocations: AtomicBool,
    status: Arc<Status>,
    /// The client's settings, to say why the brokers refuse it.
    identity: kafka::connect::Identity,
    /// Each statistics report's fetch positions, for the consumer loop.
    positions: mpsc::UnboundedSender<Positions>,
}

impl RebalanceContext {
    /// The context of the daemon's consumer made with `config`, reporting
    /// into `status` and sending fetch positions to `positions`.
    pub fn new(
        status: Arc<Status>,
        config: &rdkafka::ClientConfig,
        positions: mpsc::UnboundedSender<Positions>,
    ) -> RebalanceContext {
        RebalanceContext {
            positions,
            gates: Mutex::new(HashMap::new()),
            revoked: Mutex::new(Vec::new()),
            revocations: AtomicBool::new(false),
            status,
            identity: kafka::connect::Identity::of(config),
        }
    }
}

impl ClientContext for RebalanceContext {
    /// A connection failure that the settings cause (a refused login, an
    /// untrusted certificate) shows in health, logged once; librdkafka's
    /// other errors are logged as they come.
    fn error(&self, error: KafkaError, reason: &str) {
        let failure = self.identity.classify(error.rdkafka_error_code(), reason);
        match failure {
            Some(failure) => self.status.set_connect_failure(Some(failure)),
            None => tracing::error!("librdkafka: {error}: {reason}"),
        }
    }

    /// librdkafka's periodic statistics: consumer lag per partition, and
    /// whether any broker is up.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lag = BTreeMap::new();
        let mut positions = Vec::new();
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    lag.insert((topic.clone(), partition), p.consumer_lag);
                }
                if partition >= 0 && p.fetch_state == "active" {
                    positions.push(((topic.clone(), partition), p.next_offset, p.hi_offset));
                }
            }
        }
        // The loop is gone only at shutdown.
        let _ = self.positions.send(positions);
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
                let _ = commit(consumer, CommitMode::Sync);
                tracing::info!(partitions = list.count(), "partitions revoked");
            }
            Rebalance::Assign(list) => {
                tracing::info!(partitions = list.count(), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!("rebalance error: {e}"),
        }
    }

    /// A partition this daemon paused for a full queue and lost keeps that
    /// pause inside librdkafka: given back, it would never be fetched again
    /// (its old worker and queue are gone, so nothing would resume it). Every
    /// partition assigned is therefore set to fetch, or held paused while
    /// the broker circuit is open.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Ok(held) = consumer.assignment() {
            self.status.set_assigned(held.count(), Instant::now());
        }
        let Rebalance::Assign(list) = rebalance else {
            return;
        };
        let open = self.status.broker.state() == CircuitState::Open;
        let result = if open {
            consumer.pause(list)
        } else {
            consumer.resume(list)
        };
        if let Err(e) = result {
            tracing::warn!(
                paused = open,
                "cannot set the pause state of assigned partitions: {e}"
            );
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
/// Returns whether the commit went through (or had nothing to do).
fn commit<C: rdkafka::consumer::Consumer<X>, X: ConsumerContext>(
    consumer: &C,
    mode: CommitMode,
) -> bool {
    match consumer.commit_consumer_state(mode) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => true,
        Err(e) => {
            tracing::warn!("offset commit failed: {e}");
            false
        }
    }
}

/// The main loop's view of one partition.
struct PartitionHandle {
    tx: mpsc::Sender<Message>,
    /// Messages received while the queue was full, in order.
    overflow: VecDeque<Message>,
    gate: Arc<Gate>,
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
    status.forget_partition(tp);
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
    for tp in revoked.drain(..) {
        partitions.remove(&tp);
        status.forget_partition(&tp);
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
    /// Record errors already logged.
    once: Vec<String>,
}

impl ErrorLog {
    const EVERY: Duration = Duration::from_secs(30);

    /// Logs a record error the first time it comes; its repeats are
    /// counted in metrics and health.
    fn report_once(&mut self, error: &KafkaError) {
        let text = error.to_string();
        if !self.once.contains(&text) {
            tracing::warn!(
                "Kafka consumer: {text}; said once, its repeats are counted in \
                 sluice_consumer_record_errors_total"
            );
            self.once.push(text);
        }
    }

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
