//! The consumer loop: one consumer for every routed topic. Its decisions
//! (which partition has a worker, pausing a partition whose worker's queue
//! is full, following the broker breaker, restarting a worker that ended
//! early, the commit schedule) are made by [`machine::Machine`]; this shell
//! feeds it the consumer's messages and callbacks and carries out what it
//! decides, follows config reloads, names records the client cannot decode,
//! and drains the workers at shutdown.

mod context;
pub(super) mod machine;
mod received;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt as _};
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::Producer as _;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use self::context::{Committed, GroupEvent, commit};
pub use self::context::{Positions, RebalanceContext};
use self::machine::{Machine, Sent, WorkerEnd, WorkerFailure, WorkerId};
use self::received::{ErrorLog, to_message};
use super::gate::Gate;
use super::partition;
use super::reload;
use super::shared::Shared;
use super::undecodable::{Position, Undecodable};
use crate::breaker::CircuitState;
use crate::config::{Config, OnUndecodable};
use crate::policy;
use crate::status::{Status, Stuck, TopicPartition};
use crate::wasm::Message;

/// The most messages the main loop takes from the consumer in one turn.
const BURST: usize = 256;

/// The consumer loop's state: the machine, and the shell that carries out
/// its decisions.
pub struct ConsumerLoop {
    machine: Machine<Message, WorkerLane>,
    io: Io,
    /// Config file changes (and SIGHUP).
    reload_rx: mpsc::Receiver<Config>,
    /// A reload being prepared beside this loop.
    pending_reload: reload::PendingReload,
    /// The broker breaker's transitions.
    broker_circuit: watch::Receiver<CircuitState>,
    /// Workers say here that a paused partition's queue has room.
    room_rx: mpsc::UnboundedReceiver<TopicPartition>,
    /// `processing.drain_timeout_seconds`.
    drain_timeout: Duration,
    /// The producer's flush timeout at shutdown.
    flush_timeout: Duration,
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

/// What the machine's decisions are carried out with.
struct Io {
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
    /// The worker tasks.
    workers: JoinSet<WorkerEnd>,
    /// The partition and worker each task serves.
    worker_ids: HashMap<Id, (TopicPartition, WorkerId)>,
    room_tx: mpsc::UnboundedSender<TopicPartition>,
}

/// The way into one partition's worker task.
struct WorkerLane {
    tx: mpsc::Sender<Message>,
    gate: Arc<Gate>,
}

impl machine::Lane<Message> for WorkerLane {
    fn send(&mut self, message: Message) -> Sent<Message> {
        match self.tx.try_send(message) {
            Ok(()) => Sent::Queued,
            Err(mpsc::error::TrySendError::Full(message)) => Sent::Full(message),
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::Closed,
        }
    }

    fn wait_for_room(&mut self, waiting: bool) {
        self.gate.paused.store(waiting, Ordering::Relaxed);
    }

    fn resume_at(&self) -> i64 {
        self.gate.resume_at()
    }

    fn is_stopped(&self) -> bool {
        self.gate.cancel.is_cancelled()
    }
}

impl machine::Shell<Message> for Io {
    type Lane = WorkerLane;

    fn start_worker(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        worker: WorkerId,
    ) -> Option<WorkerLane> {
        let slot = self.live.get(&tp.topic)?;
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
        self.worker_ids.insert(task.id(), (tp.clone(), worker));
        Some(WorkerLane { tx, gate })
    }

    fn set_paused(&mut self, tps: &[TopicPartition], paused: bool) {
        let mut list = TopicPartitionList::new();
        for tp in tps {
            list.add_partition(&tp.topic, tp.partition);
        }
        let result = if paused {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        if let Err(e) = result {
            let names: Vec<String> = tps.iter().map(ToString::to_string).collect();
            tracing::warn!(partitions = ?names, paused, "cannot change pause state: {e}");
        }
    }

    fn seek(&mut self, tp: &TopicPartition, offset: i64) {
        if let Err(e) = self.consumer.seek(
            &tp.topic,
            tp.partition,
            Offset::Offset(offset),
            Duration::ZERO,
        ) {
            tracing::error!(topic = %tp.topic, partition = tp.partition, offset, "cannot fetch the partition from offset {offset}: {e}");
        }
    }

    fn commit(&mut self) {
        // A refusal is logged; the next commit takes the same offsets.
        let _ = commit(&*self.consumer, CommitMode::Async);
    }

    fn forget(&mut self, tp: &TopicPartition) {
        self.consumer
            .context()
            .gates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tp);
        self.status.forget_partition(tp);
    }

    fn worker_failed(&mut self, tp: &TopicPartition, offset: i64, failure: &WorkerFailure) {
        self.status.worker_restarts.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            topic = %tp.topic, partition = tp.partition, offset,
            "partition worker ended early; consuming the partition again from its last stored \
             offset: {failure}"
        );
    }
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
        let commit_every =
            (!config.kafka.enable_auto_commit).then(|| config.processing.commit_interval());
        ConsumerLoop {
            machine: Machine::new(commit_every, Instant::now()),
            broker_circuit: shared.broker.subscribe(),
            io: Io {
                consumer,
                shared,
                live,
                status,
                stop_all,
                partition_queue: config.processing.partition_queue,
                workers: JoinSet::new(),
                worker_ids: HashMap::new(),
                room_tx,
            },
            room_rx,
            reload_rx,
            pending_reload: None,
            drain_timeout: config.processing.drain_timeout(),
            flush_timeout: config.kafka.timeout(),
            errors: ErrorLog::default(),
            positions_rx,
            undecodable: Undecodable::default(),
            skipped: HashMap::new(),
            last: None,
        }
    }

    /// Consumes until `shutdown` completes, then drains and commits.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let consumer = self.io.consumer.clone();
        let mut messages = consumer.stream();
        let mut commit_timer = CommitTimer::new(self.machine.next_commit());
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = consumer.context().wake.notified() => self.sync_group(),
                Ok(()) = self.broker_circuit.changed() => self.breaker_changed(),
                Some(new) = self.reload_rx.recv(), if self.pending_reload.is_none() => {
                    self.pending_reload = self.io.live.prepare(new);
                }
                // Always matched: a refused reload must end this `select!`,
                // so that the next one is received.
                ready = reload::prepared(&mut self.pending_reload) => {
                    if let Some(ready) = ready {
                        self.io.live.install(ready, &*self.io.consumer);
                    }
                }
                Some(positions) = self.positions_rx.recv() => self.positions(positions),
                Some(tp) = self.room_rx.recv() => {
                    self.sync_group();
                    self.machine.room(&tp, &mut self.io);
                }
                () = commit_timer.wait() => self.machine.tick(Instant::now(), &mut self.io),
                Some(joined) = self.io.workers.join_next_with_id(), if !self.io.workers.is_empty() => {
                    self.worker_ended(joined);
                }
                Some(received) = messages.next() => {
                    let now = Instant::now();
                    self.received(received, now);
                    // Messages already fetched are taken in a burst, without
                    // a turn of this loop (and its other branches) for each.
                    for _ in 1..BURST {
                        match messages.next().now_or_never() {
                            Some(Some(next)) => self.received(next, now),
                            _ => break,
                        }
                    }
                }
            }
            commit_timer.set(self.machine.next_commit());
        }
        drop(messages);
        self.drain().await;
    }

    /// Hands the assignment changes the callbacks saw to the machine.
    fn sync_group(&mut self) {
        for event in self.io.consumer.context().take_group_events() {
            match event {
                GroupEvent::Assigned(tps) => self.machine.assign(&tps, &mut self.io),
                GroupEvent::Revoked(tps) => self.machine.revoke(&tps, &mut self.io),
            }
        }
    }

    /// The broker breaker changed: consumption pauses while it is open.
    fn breaker_changed(&mut self) {
        self.sync_group();
        let state = *self.broker_circuit.borrow_and_update();
        self.machine.breaker(state, &mut self.io);
        let partitions = self.machine.assigned().count();
        match state {
            CircuitState::Open => {
                tracing::warn!(partitions, "broker circuit open: consumption paused");
            }
            CircuitState::Closed => {
                tracing::info!(partitions, "broker circuit closed: consumption resumed");
            }
            CircuitState::HalfOpen => {}
        }
    }

    /// Hands a consumed message to its partition's worker, starting one
    /// for a partition new to this loop.
    fn received(&mut self, received: KafkaResult<BorrowedMessage<'_>>, now: Instant) {
        self.sync_group();
        let m = match received {
            Ok(m) => m,
            Err(e) => {
                self.consumer_error(&e);
                return;
            }
        };
        let status = &self.io.status;
        if !status.is_reachable() {
            status.set_reachable(true);
        }
        status.count_consumed();
        // Read once: each read measures and checks the name.
        let topic = m.topic();
        if self.io.live.get(topic).is_none() {
            return;
        }
        let tp = match &self.last {
            Some(tp) if tp.partition == m.partition() && tp.topic == topic => tp.clone(),
            _ => self
                .last
                .insert(TopicPartition::new(topic, m.partition()))
                .clone(),
        };
        self.machine
            .fetched(&tp, m.offset(), now, &mut self.io, |lane| {
                lane.gate.in_flight.fetch_add(1, Ordering::Relaxed);
                let (message, raw_keys) = to_message(&m, topic);
                if !raw_keys.is_empty() {
                    lane.gate.keep_raw_keys(message.offset, raw_keys);
                }
                message
            });
    }

    /// A consumer error: the brokers gone, or a record librdkafka fetched
    /// and could not decode (counted, and logged once per kind).
    fn consumer_error(&mut self, e: &KafkaError) {
        match e {
            KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown) => {
                self.io.status.set_reachable(false);
            }
            KafkaError::MessageConsumption(code) if policy::is_record_error(*code) => {
                self.io.status.record_errors.fetch_add(1, Ordering::Relaxed);
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
        self.sync_group();
        let report = positions.into_iter().map(|(tp, next, high)| {
            let paused = self.machine.paused(&tp).is_some();
            (tp, Position { next, high, paused })
        });
        let stuck = self.undecodable.report(report, Instant::now());
        let choice = |topic: &str| {
            self.io.live.get(topic).map_or(OnUndecodable::Stop, |slot| {
                slot.borrow().config.on_undecodable
            })
        };
        self.io
            .status
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
                choice(&tp.topic) == OnUndecodable::DeadLetter
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
        let reason = format!(
            "the Kafka client could not decode the record at offset {}: {}; no handler saw \
             it, and its content is not in this letter",
            stuck.offset, stuck.error
        );
        let offset = stuck.offset;
        self.machine
            .skip(&tp, offset, Instant::now(), &mut self.io, |lane| {
                lane.gate.in_flight.fetch_add(1, Ordering::Relaxed);
                lane.gate.mark_undecodable(offset, reason);
                Message {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset,
                    timestamp: None,
                    key: None,
                    value: None,
                    headers: Vec::new(),
                    attempt: 1,
                }
            });
        self.skipped.insert(tp, offset);
    }

    /// A worker ended: the machine restarts one that ended early.
    fn worker_ended(&mut self, joined: Result<(Id, WorkerEnd), tokio::task::JoinError>) {
        let (id, end) = match joined {
            Ok((id, end)) => (id, end),
            Err(e) if e.is_cancelled() => (e.id(), WorkerEnd::Done),
            Err(e) => (
                e.id(),
                WorkerEnd::Failed(WorkerFailure::Panicked(e.to_string())),
            ),
        };
        self.sync_group();
        if let Some((tp, worker)) = self.io.worker_ids.remove(&id) {
            self.machine.worker_ended(&tp, worker, &end, &mut self.io);
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
        self.machine.drain();
        self.io.stop_all.cancel();
        let workers = &mut self.io.workers;
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("drain timeout reached: unfinished messages will be delivered again");
            self.io.workers.abort_all();
        } else {
            tracing::info!("in-flight messages drained");
        }
        super::shutdown::stage("committing the stored offsets");
        match commit(&*self.io.consumer, CommitMode::Sync) {
            Committed::Done => tracing::info!("stored offsets committed"),
            Committed::NothingNew => tracing::info!("no offsets stored since the last commit"),
            Committed::Failed => tracing::warn!(
                "stored offsets not committed: the messages after the last commit are \
                 delivered again"
            ),
        }
        super::shutdown::stage("flushing the producer");
        if let Err(e) = self.io.shared.producer.flush(self.flush_timeout) {
            tracing::warn!("producer flush incomplete: {e}");
        }
        super::shutdown::stage("leaving the consumer group");
        self.io.consumer.unsubscribe();
        tracing::info!("left the consumer group");
    }
}

/// Wakes the loop when the machine's next commit is due; never when
/// librdkafka commits on its own.
struct CommitTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    at: Option<Instant>,
}

impl CommitTimer {
    fn new(at: Option<Instant>) -> CommitTimer {
        let deadline = at.map_or_else(far_future, tokio::time::Instant::from_std);
        CommitTimer {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            at,
        }
    }

    /// Moves the timer to the machine's next commit, if that changed.
    fn set(&mut self, at: Option<Instant>) {
        if at != self.at {
            self.at = at;
            let deadline = at.map_or_else(far_future, tokio::time::Instant::from_std);
            self.sleep.as_mut().reset(deadline);
        }
    }

    async fn wait(&mut self) {
        if self.at.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
    }
}

/// A deadline that never comes.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}
