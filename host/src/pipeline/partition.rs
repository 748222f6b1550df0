//! One assigned partition: a worker that hands its messages, in order, to
//! the route's handler, produces the outputs or dead-letter records, and an
//! acknowledger that stores each offset once everything produced for it (and
//! for every message before it) is acknowledged by the broker.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::Consumer as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::breaker::{Admission, CircuitState};
use super::delivery::{NotProduced, Produced, Receipt, Settled, produce_all, settle};
use super::dlq::{DeadLetter, ErrorType, RawKeys};
use super::refusal::Refused;
use super::route::{Route, RouteSlot, TURN};
use crate::config::RetryOn;
use crate::status::{PartitionFlags, TopicPartition};
use crate::wasm::{Failure, Invoker, Message, Outcome, Output, Plugin};

/// The header that carries a message's correlation id.
pub const CORRELATION_HEADER: &str = "correlation_id";

/// Handled messages whose records await acknowledgement, per partition. It
/// bounds how far production may run ahead of the broker.
const ACK_QUEUE: usize = 4096;

/// Decides, under one lock, whether a partition's offsets may still be
/// stored: once it is revoked nothing more is stored for it.
pub struct Gate {
    revoked: Mutex<bool>,
    /// Cancelled on revocation and on shutdown: the worker stops taking
    /// messages.
    pub cancel: CancellationToken,
    /// Set by the main loop while the partition is paused for a full queue.
    pub paused: Arc<AtomicBool>,
    /// Messages handed to the worker and not yet finished.
    pub in_flight: Arc<AtomicU64>,
    /// The offset the partition resumes from should its worker stop
    /// early: the first message handed to it, then the one after the last
    /// offset stored.
    resume_at: AtomicI64,
    /// The header keys that were not UTF-8, by offset, for dead letters:
    /// rare, so kept aside rather than with every message.
    raw_keys: Mutex<BTreeMap<i64, RawKeys>>,
    /// Whether `raw_keys` may hold anything.
    has_raw_keys: AtomicBool,
}

impl Gate {
    /// The gate of a partition whose first message is at `first_offset`.
    pub fn new(cancel: CancellationToken, first_offset: i64) -> Gate {
        Gate {
            revoked: Mutex::new(false),
            cancel,
            paused: Arc::new(AtomicBool::new(false)),
            in_flight: Arc::new(AtomicU64::new(0)),
            resume_at: AtomicI64::new(first_offset),
            raw_keys: Mutex::new(BTreeMap::new()),
            has_raw_keys: AtomicBool::new(false),
        }
    }

    /// What health reads of the partition.
    pub fn flags(&self) -> PartitionFlags {
        PartitionFlags {
            in_flight: self.in_flight.clone(),
            paused: self.paused.clone(),
        }
    }

    /// Where the partition resumes should its worker stop early: nothing
    /// before it is lost, since every offset before it is stored.
    pub fn resume_at(&self) -> i64 {
        self.resume_at.load(Ordering::Acquire)
    }

    /// Keeps the bytes of a message's header keys that were not UTF-8.
    pub fn keep_raw_keys(&self, offset: i64, keys: RawKeys) {
        self.raw_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(offset, keys);
        self.has_raw_keys.store(true, Ordering::Release);
    }

    /// The bytes of the message's header keys that were not UTF-8.
    fn raw_keys(&self, offset: i64) -> RawKeys {
        if !self.has_raw_keys.load(Ordering::Acquire) {
            return RawKeys::new();
        }
        self.raw_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&offset)
            .cloned()
            .unwrap_or_default()
    }

    /// Marks the partition revoked: results finishing later are discarded.
    pub fn revoke(&self) {
        *self.revoked.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.cancel.cancel();
    }

    /// Stores `offset` as processed unless the partition was revoked.
    fn store(&self, shared: &Shared, tp: &TopicPartition, offset: i64) {
        let revoked = self.revoked.lock().unwrap_or_else(PoisonError::into_inner);
        if *revoked {
            return;
        }
        if let Err(e) = shared.consumer.store_offset(&tp.0, tp.1, offset) {
            // After a rebalance librdkafka refuses offsets of partitions no
            // longer assigned; the message will be handled by the new owner.
            tracing::debug!(topic = %tp.0, partition = tp.1, offset, "offset not stored: {e}");
        } else {
            tracing::trace!(topic = %tp.0, partition = tp.1, offset, "offset stored");
        }
        self.resume_at.store(offset + 1, Ordering::Release);
        if self.has_raw_keys.load(Ordering::Acquire) {
            let mut keys = self.raw_keys.lock().unwrap_or_else(PoisonError::into_inner);
            keys.retain(|&o, _| o > offset);
            self.has_raw_keys.store(!keys.is_empty(), Ordering::Release);
        }
    }
}

/// How a partition worker ended.
#[derive(Debug)]
pub enum WorkerEnd {
    /// Revoked, shutting down, or its queue closed.
    Done,
    /// It could not go on: the partition restarts from
    /// [`Gate::resume_at`], so nothing after its last stored offset is
    /// lost.
    Failed(String),
}

/// A message after a handler call.
struct Handled {
    message: Message,
    next: Next,
    /// Its correlation id: from its header, or made up for it.
    correlation: String,
}

/// What the worker hands the acknowledger for one message.
struct Pending {
    /// The broker's answers for its records; `None` when it has none left
    /// to wait for.
    receipt: Option<Arc<Receipt>>,
    /// A record the producer already refused for good.
    refused: Option<Refused>,
    /// What a dead letter of the message needs, should one of its records
    /// be refused for good.
    letter: Letter,
}

/// A handled message as its dead letter would describe it.
struct Letter {
    message: Message,
    correlation: String,
    route: Arc<Route>,
    plugin: Arc<Plugin>,
    /// The failure, when the records are the message's dead letter.
    failed: Option<Failed>,
}

/// What a call's outcome means for the message.
enum Next {
    Produce(Vec<Output>),
    Failed(Failed),
}

/// A failed call, classified.
#[derive(Clone)]
struct Failed {
    kind: RetryOn,
    /// The dead-letter error type if it is not retried (again).
    error_type: ErrorType,
    reason: String,
}

impl Failed {
    /// Retryable errors and timeouts (after their retries) are what the
    /// handler breaker counts: they suggest something the handler depends
    /// on is down, so the messages behind them would fail too.
    fn trips_breaker(&self) -> bool {
        matches!(self.kind, RetryOn::Retryable | RetryOn::Timeout)
    }
}

fn classify(route: &Route, outcome: Outcome) -> Next {
    let failure = match outcome {
        Ok(outputs) => {
            let Some(bad) = outputs
                .iter()
                .find(|o| !route.output_topics.contains(&o.topic))
            else {
                return Next::Produce(outputs);
            };
            let mut allowed: Vec<&str> = route.output_topics.iter().map(String::as_str).collect();
            allowed.sort_unstable();
            return Next::Failed(Failed {
                kind: RetryOn::InvalidOutput,
                error_type: ErrorType::InvalidOutput,
                reason: format!(
                    "handler emitted to topic {:?}, which is not in the route's output_topics {allowed:?}",
                    bad.topic
                ),
            });
        }
        Err(failure) => failure,
    };
    let kind = match &failure {
        // An instance that could not be created is the host's problem
        // (a full pool): retrying helps.
        Failure::Handler {
            retryable: true, ..
        }
        | Failure::Instantiate(_) => RetryOn::Retryable,
        Failure::Handler {
            retryable: false, ..
        } => RetryOn::Permanent,
        Failure::Timeout(_) => RetryOn::Timeout,
        Failure::Trap { .. } => RetryOn::Trap,
        Failure::MemoryLimitExceeded { .. } => RetryOn::MemoryLimit,
        Failure::InvalidOutput(_) => RetryOn::InvalidOutput,
    };
    Next::Failed(Failed {
        kind,
        error_type: ErrorType::of(&failure),
        reason: failure.to_string(),
    })
}

impl Route {
    /// Whether a message that failed on `attempt` is tried again.
    fn retries(&self, failed: &Failed, attempt: u32) -> bool {
        self.retry_on.contains(&failed.kind) && attempt <= self.max_retry_attempts
    }
}

/// Calls the handler for up to `limit` queued messages in order, on a
/// blocking thread, stopping after the first failure (which may hold the
/// partition) so that nothing behind it is handled first, when a new module
/// version arrives, when its [`TURN`] is over, or when cancelled.
///
/// A module with a `handle-batch` export gets runs of messages in one call.
/// When such a call traps, times out or runs out of memory, its messages are
/// handed over one at a time, so that only the message at fault fails. A
/// message being retried is always handled on its own.
async fn invoke_batch(
    route: &Arc<Route>,
    plugin: &Arc<Plugin>,
    shared: &Shared,
    queue: VecDeque<Message>,
    limit: usize,
    cancel: &CancellationToken,
) -> Result<(Vec<Handled>, VecDeque<Message>), String> {
    let Ok(_permit) = shared.slots.acquire().await else {
        return Ok((Vec::new(), queue));
    };
    let route = route.clone();
    let plugin = plugin.clone();
    let plugin_name = plugin.name().to_owned();
    let cancel = cancel.clone();
    let task = tokio::task::spawn_blocking(move || {
        #[cfg(feature = "fault-injection")]
        super::faults::handler_thread(route.topic());
        let mut calls = Calls {
            invoker: route.take_invoker(&plugin),
            route: &route,
            queue,
            done: Vec::new(),
            chunk: Vec::new(),
            ids: Vec::new(),
        };
        calls.run(limit, &cancel);
        let Calls {
            invoker,
            queue,
            done,
            ..
        } = calls;
        route.put_invoker(invoker);
        (done, queue)
    });
    // A handler thread that panicked took the batch's messages with it:
    // the worker cannot go on past them.
    task.await
        .map_err(|e| format!("the handler thread of module {} failed: {e}", plugin_name))
}

/// The handler calls for one batch of a partition's queue.
struct Calls<'a> {
    invoker: Invoker,
    route: &'a Route,
    queue: VecDeque<Message>,
    done: Vec<Handled>,
    /// The messages of a `handle-batch` call, and their correlation ids;
    /// kept to reuse their buffers.
    chunk: Vec<Message>,
    ids: Vec<String>,
}

impl Calls<'_> {
    fn run(&mut self, limit: usize, cancel: &CancellationToken) {
        let changes = self.route.module_changes();
        // How many messages are still to be handled one at a time after a
        // failed batch call.
        let mut singly = 0;
        let started = Instant::now();
        while self.done.len() < limit && !self.queue.is_empty() {
            // A new module version takes over from the next message.
            if cancel.is_cancelled() || changes.has_changed().unwrap_or(true) {
                break;
            }
            // The turn ends between calls, but not before the messages of a
            // failed batch call have had their calls one at a time.
            if started.elapsed() >= TURN && singly == 0 && !self.done.is_empty() {
                break;
            }
            let run = (limit - self.done.len())
                .min(self.queue.len())
                .min(self.route.batch_limit());
            let retried = self.queue.front().is_some_and(|m| m.attempt > 1);
            let stop = if singly == 0 && run > 1 && !retried && self.invoker.batches() {
                match self.batch(run) {
                    Some(stop) => stop,
                    None => {
                        singly = run;
                        continue;
                    }
                }
            } else {
                singly = singly.saturating_sub(1);
                self.single()
            };
            if stop {
                break;
            }
        }
    }

    /// Hands the next message to `handle`. Returns whether it failed.
    fn single(&mut self) -> bool {
        let Some(message) = self.queue.pop_front() else {
            return true;
        };
        let correlation = correlation_id(&message);
        let route = self.route;
        let started = Instant::now();
        let outcome = self
            .invoker
            .invoke_with_id(&message, &correlation, &route.invocation);
        let elapsed = started.elapsed();
        route.status.metrics.observe(elapsed);
        // A call cut short by a timeout, a trap or the memory limit says
        // nothing about the handler's usual cost per message.
        if matches!(outcome, Ok(_) | Err(Failure::Handler { .. })) {
            route.note_call(elapsed, 1);
        }
        push(&mut self.done, route, message, correlation, outcome)
    }

    /// Hands the next `run` messages to one `handle-batch` call. Returns
    /// whether a message failed, or `None` (with the queue as it was) when
    /// the call itself failed.
    fn batch(&mut self, run: usize) -> Option<bool> {
        let route = self.route;
        self.chunk.clear();
        self.chunk.extend(self.queue.drain(..run));
        self.ids.clear();
        self.ids.extend(self.chunk.iter().map(correlation_id));
        let started = Instant::now();
        let outcomes = self
            .invoker
            .invoke_batch(&self.chunk, &self.ids, &route.invocation);
        let elapsed = started.elapsed();
        let metrics = &route.status.metrics;
        metrics.batch_calls.fetch_add(1, Ordering::Relaxed);
        let outcomes = match outcomes {
            Ok(outcomes) if !outcomes.is_empty() => outcomes,
            failed => {
                metrics.batch_fallbacks.fetch_add(1, Ordering::Relaxed);
                let reason = failed.err().map_or_else(
                    || "it handled no message".to_owned(),
                    |failure| failure.to_string(),
                );
                tracing::debug!(
                    module = route.module_name(),
                    messages = run,
                    "a batch call failed, handling its messages one at a time: {reason}"
                );
                for message in self.chunk.drain(..).rev() {
                    self.queue.push_front(message);
                }
                return None;
            }
        };
        let handled = outcomes.len();
        route.note_call(elapsed, handled);
        let each = elapsed / u32::try_from(handled).unwrap_or(u32::MAX);
        let mut messages = self.chunk.drain(..);
        let mut ids = self.ids.drain(..);
        let mut stop = false;
        for outcome in outcomes {
            let (Some(message), Some(correlation)) = (messages.next(), ids.next()) else {
                break;
            };
            metrics.observe(each);
            stop = push(&mut self.done, route, message, correlation, outcome);
            if stop {
                break;
            }
        }
        // Messages the call did not get to go back, in order.
        for message in messages.rev() {
            self.queue.push_front(message);
        }
        Some(stop)
    }
}

/// Records a call's outcome for `message`. Returns whether it failed: after
/// a failure the worker may wait (a retry, a breaker, a stopped partition),
/// and nothing behind it is handled first.
fn push(
    done: &mut Vec<Handled>,
    route: &Route,
    message: Message,
    correlation: String,
    outcome: Outcome,
) -> bool {
    let next = classify(route, outcome);
    let failed = matches!(next, Next::Failed(_));
    done.push(Handled {
        message,
        next,
        correlation,
    });
    failed
}

/// Puts a message back at the head of the queue, followed by the handled
/// messages behind it, whose results are discarded: they are handled again.
fn requeue(
    queue: &mut VecDeque<Message>,
    message: Message,
    rest: impl DoubleEndedIterator<Item = Handled>,
) {
    for handled in rest.rev() {
        queue.push_front(handled.message);
    }
    queue.push_front(message);
}

/// Waits for the route's handler breaker, then the broker breaker. Either
/// may hand out its half-open probe, in which case one message is handled.
async fn admit(route: &Route, shared: &Shared) -> (Admission, Admission) {
    let handler = route.status.breaker.admit().await;
    let broker = shared.status.broker.admit().await;
    (handler, broker)
}

/// How long a partition stopped on a record the producer refused for good
/// waits before trying again, if no config reload comes first.
const REFUSED_RETRY: Duration = Duration::from_secs(30);

/// The partition worker. Returns when the queue closes, or the partition is
/// revoked or the daemon shuts down ([`WorkerEnd::Done`]), or when it cannot
/// go on ([`WorkerEnd::Failed`]).
pub async fn run_worker(
    tp: TopicPartition,
    slot: RouteSlot,
    shared: Arc<Shared>,
    gate: Arc<Gate>,
    mut rx: mpsc::Receiver<Message>,
    room: mpsc::UnboundedSender<TopicPartition>,
) -> WorkerEnd {
    let (ack_tx, ack_rx) = mpsc::channel(ACK_QUEUE);
    let acker = tokio::spawn(run_acker(
        tp.clone(),
        slot.clone(),
        shared.clone(),
        gate.clone(),
        ack_rx,
    ));
    let mut end = WorkerEnd::Done;
    let mut batch = Vec::with_capacity(shared.batch_size);
    let mut reloads = slot.subscribe();
    'messages: loop {
        batch.clear();
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, shared.batch_size) => n,
            () = gate.cancel.cancelled() => 0,
        };
        if received == 0 {
            break;
        }
        // A paused partition is resumed once its queue is half empty, not at
        // the first free slot: every resume makes the consumer fetch again,
        // so resuming often costs more than it gains.
        if gate.paused.load(Ordering::Relaxed) && rx.len() <= rx.max_capacity() / 2 {
            let _ = room.send(tp.clone());
        }
        let mut queue: VecDeque<Message> = batch.drain(..).collect();
        'batches: while !queue.is_empty() {
            // The route as configured now: a config reload applies from the
            // next batch.
            let route = reloads.borrow_and_update().clone();
            // Held while the module file is deleted, or a breaker is open.
            // Held messages are not stored: they are delivered again.
            let plugin = tokio::select! {
                plugin = route.module() => plugin,
                _ = reloads.changed() => continue 'batches,
                () = gate.cancel.cancelled() => break 'messages,
            };
            let (mut handler, broker) = tokio::select! {
                admitted = admit(&route, &shared) => admitted,
                () = gate.cancel.cancelled() => break 'messages,
            };
            let limit = if handler.is_probe() || broker.is_probe() {
                1
            } else {
                usize::MAX
            };
            let (done, rest) =
                match invoke_batch(&route, &plugin, &shared, queue, limit, &gate.cancel).await {
                    Ok(handled) => handled,
                    Err(reason) => {
                        end = WorkerEnd::Failed(reason);
                        break 'messages;
                    }
                };
            queue = rest;
            if done.is_empty() {
                if gate.cancel.is_cancelled() {
                    break 'messages;
                }
                // A new module version arrived before the first call: the
                // batch starts again with it.
                continue 'batches;
            }
            let mut broker = Some(broker);
            let metrics = &route.status.metrics;
            let mut done = done.into_iter();
            while let Some(Handled {
                mut message,
                next,
                correlation,
            }) = done.next()
            {
                let (records, letter) = match next {
                    Next::Produce(outputs) => {
                        handler.report(true);
                        metrics.ok.fetch_add(1, Ordering::Relaxed);
                        let letter = Letter {
                            message,
                            correlation,
                            route: route.clone(),
                            plugin: plugin.clone(),
                            failed: None,
                        };
                        (outputs, letter)
                    }
                    Next::Failed(failed) => {
                        let retry = route.retries(&failed, message.attempt);
                        if failed.trips_breaker() && (handler.is_probe() || !retry) {
                            // Out of retries (or a failed probe): the
                            // breaker counts it, and while it is open the
                            // message is held rather than dead-lettered.
                            let state = handler.report(false);
                            if state != CircuitState::Closed {
                                metrics.held.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    topic = %tp.0, partition = tp.1, offset = message.offset,
                                    module = route.module_name(), attempt = message.attempt,
                                    correlation_id = %correlation, breaker = state.as_str(),
                                    "handler breaker is {state}: holding the message until a probe succeeds: {}",
                                    failed.reason
                                );
                                message.attempt += 1;
                                requeue(&mut queue, message, done);
                                continue 'batches;
                            }
                        } else if !retry {
                            // The handler answered; it is not what the
                            // breaker guards against.
                            handler.report(true);
                        }
                        if retry {
                            let delay = route.backoff.delay(message.attempt - 1);
                            metrics.retries.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(
                                topic = %tp.0, partition = tp.1, offset = message.offset,
                                module = route.module_name(), attempt = message.attempt,
                                correlation_id = %correlation,
                                delay_ms = delay.as_millis() as u64,
                                "retrying after: {}", failed.reason
                            );
                            tokio::select! {
                                () = tokio::time::sleep(delay) => {}
                                // A retry cut short is not exhausted: the
                                // message is not stored and will be
                                // delivered again.
                                () = gate.cancel.cancelled() => break 'messages,
                            }
                            message.attempt += 1;
                            requeue(&mut queue, message, done);
                            continue 'batches;
                        }
                        let Some(dlq) = route.dead_letter_topic.as_deref() else {
                            metrics.stopped.fetch_add(1, Ordering::Relaxed);
                            let stop = Stop {
                                tp: &tp,
                                plugin: &plugin,
                                message: &message,
                                failed: &failed,
                            };
                            if stop_partition(stop, &route, &shared, &gate, &mut reloads).await {
                                // A new version of the module, or of the
                                // route's config: try again.
                                message.attempt += 1;
                                requeue(&mut queue, message, done);
                                continue 'batches;
                            }
                            break 'messages;
                        };
                        metrics.dead_letter(failed.error_type);
                        let letter = Letter {
                            message,
                            correlation,
                            route: route.clone(),
                            plugin: plugin.clone(),
                            failed: Some(failed),
                        };
                        let record = letter.record(&tp, &shared, &gate, dlq);
                        (vec![record], letter)
                    }
                };
                // The message is done once every record is acknowledged.
                let Ok(Produced {
                    mut receipt,
                    mut refused,
                }) = produce_all(&shared, records, &letter.correlation, &gate.cancel).await
                else {
                    break 'messages;
                };
                let admission = broker
                    .take()
                    .unwrap_or_else(|| shared.status.broker.admission());
                if admission.is_probe()
                    && let Some(receipt) = receipt.take()
                {
                    // The broker's probe: its outcome is awaited here, before
                    // anything else is produced.
                    let dead_letter = letter.failed.is_some();
                    match settle(
                        &shared,
                        &route.status,
                        &gate,
                        &receipt,
                        Some(admission),
                        dead_letter,
                    )
                    .await
                    {
                        Settled::Acked => {}
                        Settled::Refused(r) => refused = refused.or(Some(r)),
                        Settled::Cancelled => break 'messages,
                    }
                }
                let pending = Pending {
                    receipt,
                    refused,
                    letter,
                };
                if ack_tx.send(pending).await.is_err() {
                    break 'messages;
                }
            }
        }
    }
    drop(ack_tx);
    let _ = acker.await;
    end
}

impl Letter {
    /// The dead-letter record of the message, cut to fit in a record, and
    /// logged.
    fn record(&self, tp: &TopicPartition, shared: &Shared, gate: &Gate, dlq: &str) -> Output {
        let message = &self.message;
        let route = &self.route;
        let (error_type, reason) = self
            .failed
            .as_ref()
            .map_or((ErrorType::InvalidOutput, ""), |f| {
                (f.error_type, f.reason.as_str())
            });
        let raw_keys = gate.raw_keys(message.offset);
        let letter = DeadLetter {
            message,
            raw_keys: &raw_keys,
            error_type,
            reason: reason.to_owned(),
            correlation_id: &self.correlation,
            retry_count: message.attempt - 1,
            module: route.module_name(),
            module_hash: self.plugin.hash(),
            failed_at: SystemTime::now(),
        };
        let record = letter.record(shared.max_record_bytes);
        let (shown, _) = super::dlq::cut_text(reason, super::dlq::MAX_REASON);
        tracing::warn!(
            topic = %tp.0, partition = tp.1, offset = message.offset,
            module = route.module_name(), module_hash = self.plugin.short_hash(),
            correlation_id = %self.correlation, error_type = error_type.as_str(),
            dead_letter_topic = dlq,
            "dead-lettering message: {shown}"
        );
        Output {
            topic: dlq.to_owned(),
            key: record.key,
            value: Some(record.value),
            headers: record.headers,
        }
    }
}

/// The message a partition stopped on.
struct Stop<'a> {
    tp: &'a TopicPartition,
    plugin: &'a Arc<Plugin>,
    message: &'a Message,
    failed: &'a Failed,
}

/// Without a dead-letter topic a failed message is never skipped: the
/// partition stops on it until a new version of its module is loaded or the
/// route's config changes (true: try the message again), or the partition is
/// revoked or the daemon stops (false).
async fn stop_partition(
    stop: Stop<'_>,
    route: &Route,
    shared: &Shared,
    gate: &Gate,
    reloads: &mut watch::Receiver<Arc<Route>>,
) -> bool {
    let Stop {
        tp,
        plugin,
        message,
        failed,
    } = stop;
    let (error_type, reason) = (failed.error_type, &failed.reason);
    tracing::error!(
        topic = %tp.0, partition = tp.1, offset = message.offset,
        module = route.module_name(), module_hash = plugin.short_hash(),
        error_type = error_type.as_str(),
        "partition stopped: the message failed and no dead_letter_topic is configured; \
         nothing after it is committed until it is handled (a new version of the module \
         retries it): {reason}"
    );
    shared.status.stop(
        tp,
        format!(
            "offset {}: {}: {reason}",
            message.offset,
            error_type.as_str()
        ),
    );
    let mut changes = route.module_changes();
    let new_version = async {
        loop {
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            let replaced = changes
                .borrow_and_update()
                .as_ref()
                .is_some_and(|p| !Arc::ptr_eq(p, plugin));
            if replaced {
                break;
            }
        }
    };
    let retry = tokio::select! {
        () = gate.cancel.cancelled() => false,
        () = new_version => true,
        _ = reloads.changed() => true,
    };
    shared.status.resume(tp);
    if retry {
        tracing::info!(
            topic = %tp.0, partition = tp.1, offset = message.offset,
            module = route.module_name(),
            "the module or the route changed: retrying the message the partition stopped on"
        );
    }
    retry
}

/// The message's correlation id: its `correlation_id` header, or a new UUID.
fn correlation_id(message: &Message) -> String {
    message
        .headers
        .iter()
        .find(|h| h.key == CORRELATION_HEADER)
        .and_then(|h| std::str::from_utf8(&h.value).ok())
        .map_or_else(new_correlation_id, str::to_owned)
}

/// A random (version 4) UUID. Correlation ids need uniqueness, not
/// unpredictability, so a fast user-space generator replaces a system call
/// per message.
fn new_correlation_id() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .to_string()
}

/// Settles handled messages in order and stores each offset once its own
/// and every earlier message's records are acknowledged. A record the broker
/// refused for now is produced again; its offset waits. A record refused for
/// good fails its message (see [`refused_for_good`]).
async fn run_acker(
    tp: TopicPartition,
    slot: RouteSlot,
    shared: Arc<Shared>,
    gate: Arc<Gate>,
    mut rx: mpsc::Receiver<Pending>,
) {
    let mut ready = Vec::with_capacity(256);
    while rx.recv_many(&mut ready, 256).await > 0 {
        // Store once per batch of handled messages: the last offset covers
        // every message before it.
        let mut last_acked = None;
        for mut pending in ready.drain(..) {
            let offset = pending.letter.message.offset;
            let settled = match (pending.refused.take(), &pending.receipt) {
                (Some(refused), Some(receipt)) => {
                    // The records enqueued before the refused one are
                    // answered first.
                    match settle_letter(&shared, &gate, receipt, &pending.letter).await {
                        Settled::Cancelled => Settled::Cancelled,
                        _ => Settled::Refused(refused),
                    }
                }
                (Some(refused), None) => Settled::Refused(refused),
                (None, Some(receipt)) => {
                    settle_letter(&shared, &gate, receipt, &pending.letter).await
                }
                (None, None) => Settled::Acked,
            };
            let done = match settled {
                Settled::Acked => true,
                Settled::Cancelled => false,
                Settled::Refused(refused) => {
                    // What is done before it is stored first: the
                    // partition may stop on this message for long.
                    if let Some(offset) = last_acked.take() {
                        gate.store(&shared, &tp, offset);
                    }
                    refused_for_good(&tp, &slot, &shared, &gate, pending.letter, refused).await
                }
            };
            if !done {
                if let Some(offset) = last_acked {
                    gate.store(&shared, &tp, offset);
                }
                return;
            }
            last_acked = Some(offset);
            gate.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(offset) = last_acked {
            gate.store(&shared, &tp, offset);
        }
    }
}

/// Settles a message's records with plain admissions.
async fn settle_letter(
    shared: &Shared,
    gate: &Gate,
    receipt: &Arc<Receipt>,
    letter: &Letter,
) -> Settled {
    let dead_letter = letter.failed.is_some();
    settle(
        shared,
        &letter.route.status,
        gate,
        receipt,
        None,
        dead_letter,
    )
    .await
}

/// A record of a handled message was refused for good. An output refused
/// fails the message as `InvalidOutput`, and it is dead-lettered. When the
/// route has no dead-letter topic, or the dead letter itself is refused for
/// good, the partition stops on the message: nothing after it is stored, it
/// shows in health, and the dead letter is tried again after a config
/// reload or [`REFUSED_RETRY`]. Returns whether the message is done (false:
/// revoked or shutting down).
async fn refused_for_good(
    tp: &TopicPartition,
    slot: &RouteSlot,
    shared: &Shared,
    gate: &Gate,
    mut letter: Letter,
    mut refused: Refused,
) -> bool {
    let offset = letter.message.offset;
    let mut reloads = slot.subscribe();
    // A dead letter refused for good is tried again only after the wait
    // below; an output refused for good makes one now.
    let mut produce_now = letter.failed.is_none();
    if produce_now {
        let failed = Failed {
            kind: RetryOn::InvalidOutput,
            error_type: ErrorType::InvalidOutput,
            reason: format!("an output could not be produced: {refused}"),
        };
        tracing::warn!(
            topic = %tp.0, partition = tp.1, offset,
            module = letter.route.module_name(), correlation_id = %letter.correlation,
            "{}", failed.reason
        );
        letter.route.status.metrics.dead_letter(failed.error_type);
        letter.failed = Some(failed);
    } else {
        letter.count_dlq_refusal();
    }
    loop {
        letter.route = reloads.borrow_and_update().clone();
        let dlq = letter.route.dead_letter_topic.clone();
        if produce_now && let Some(dlq) = &dlq {
            match letter.produce_dead_letter(tp, shared, gate, dlq).await {
                Settled::Acked => return true,
                Settled::Cancelled => return false,
                Settled::Refused(r) => {
                    letter.count_dlq_refusal();
                    refused = r;
                }
            }
        }
        produce_now = true;
        let why = match dlq {
            Some(_) => format!("its dead letter could not be produced: {refused}"),
            None => {
                format!("{refused}, and the route has no dead_letter_topic to take the message")
            }
        };
        let metrics = &letter.route.status.metrics;
        metrics.stopped.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            topic = %tp.0, partition = tp.1, offset,
            module = letter.route.module_name(),
            "partition stopped: {why}; nothing after it is committed; trying again after a \
             config reload or in {} s",
            REFUSED_RETRY.as_secs()
        );
        let error_type = letter
            .failed
            .as_ref()
            .map_or(ErrorType::InvalidOutput, |f| f.error_type);
        shared
            .status
            .stop(tp, format!("offset {offset}: {error_type}: {why}"));
        let go_on = tokio::select! {
            () = gate.cancel.cancelled() => false,
            _ = reloads.changed() => true,
            () = tokio::time::sleep(REFUSED_RETRY) => true,
        };
        shared.status.resume(tp);
        if !go_on {
            return false;
        }
    }
}

impl Letter {
    /// Produces the message's dead letter to `dlq` and waits for the
    /// broker's answer.
    async fn produce_dead_letter(
        &self,
        tp: &TopicPartition,
        shared: &Shared,
        gate: &Gate,
        dlq: &str,
    ) -> Settled {
        let record = self.record(tp, shared, gate, dlq);
        match produce_all(shared, vec![record], &self.correlation, &gate.cancel).await {
            Err(NotProduced::Cancelled) => Settled::Cancelled,
            Err(NotProduced::Refused(r))
            | Ok(Produced {
                refused: Some(r), ..
            }) => Settled::Refused(r),
            Ok(Produced { receipt: None, .. }) => Settled::Acked,
            Ok(Produced {
                receipt: Some(receipt),
                ..
            }) => settle_letter(shared, gate, &receipt, self).await,
        }
    }

    /// Counts a dead letter of the message refused for good.
    fn count_dlq_refusal(&self) {
        let metrics = &self.route.status.metrics;
        metrics.dlq_refusals.fetch_add(1, Ordering::Relaxed);
    }
}
