//! One assigned partition: a worker that hands its messages, in order, to
//! the route's handler, produces the outputs or dead-letter records, and an
//! acknowledger that stores each offset once everything produced for it (and
//! for every message before it) is acknowledged by the broker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use rdkafka::consumer::Consumer as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::breaker::{Admission, CircuitState};
use super::delivery::{Receipt, produce_all, settle};
use super::dlq::{DeadLetter, ErrorType};
use super::route::{Route, RouteSlot, TURN};
use crate::config::RetryOn;
use crate::status::{RouteStatus, TopicPartition};
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
    pub paused: AtomicBool,
    /// Messages handed to the worker and not yet finished.
    pub in_flight: Arc<AtomicU64>,
}

impl Gate {
    pub fn new(cancel: CancellationToken) -> Gate {
        Gate {
            revoked: Mutex::new(false),
            cancel,
            paused: AtomicBool::new(false),
            in_flight: Arc::new(AtomicU64::new(0)),
        }
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
    }
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
    offset: i64,
    /// The broker's answers for its records; `None` when it has none left
    /// to wait for.
    receipt: Option<Arc<Receipt>>,
    /// Whether the records are the message's dead letter.
    dead_letter: bool,
}

/// What a call's outcome means for the message.
enum Next {
    Produce(Vec<Output>),
    Failed(Failed),
}

/// A failed call, classified.
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
) -> (Vec<Handled>, VecDeque<Message>) {
    let Ok(_permit) = shared.slots.acquire().await else {
        return (Vec::new(), queue);
    };
    let route = route.clone();
    let plugin = plugin.clone();
    let cancel = cancel.clone();
    let task = tokio::task::spawn_blocking(move || {
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
    match task.await {
        Ok(result) => result,
        Err(e) => {
            // The runtime is shutting down; nothing handled is lost because
            // nothing was stored.
            tracing::error!("handler thread failed: {e}");
            (Vec::new(), VecDeque::new())
        }
    }
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

/// The partition worker. Returns when the queue closes, or the partition is
/// revoked or the daemon shuts down.
pub async fn run_worker(
    tp: TopicPartition,
    slot: RouteSlot,
    shared: Arc<Shared>,
    gate: Arc<Gate>,
    mut rx: mpsc::Receiver<Message>,
    room: mpsc::UnboundedSender<TopicPartition>,
) {
    let (ack_tx, ack_rx) = mpsc::channel(ACK_QUEUE);
    let acker = tokio::spawn(run_acker(
        tp.clone(),
        slot.borrow().status.clone(),
        shared.clone(),
        gate.clone(),
        ack_rx,
    ));
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
                invoke_batch(&route, &plugin, &shared, queue, limit, &gate.cancel).await;
            queue = rest;
            if done.is_empty() {
                break 'messages;
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
                let dead_letter_record = matches!(next, Next::Failed(_));
                let records = match next {
                    Next::Produce(outputs) => {
                        handler.report(true);
                        metrics.ok.fetch_add(1, Ordering::Relaxed);
                        outputs
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
                        vec![dead_letter(
                            &tp,
                            &route,
                            &plugin,
                            &message,
                            failed,
                            &correlation,
                            dlq,
                        )]
                    }
                };
                // The message is done once every record is acknowledged.
                let Ok(mut receipt) =
                    produce_all(&shared, records, &correlation, &gate.cancel).await
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
                    if !settle(
                        &shared,
                        &route.status,
                        &gate,
                        &receipt,
                        Some(admission),
                        dead_letter_record,
                    )
                    .await
                    {
                        break 'messages;
                    }
                }
                let pending = Pending {
                    offset: message.offset,
                    receipt,
                    dead_letter: dead_letter_record,
                };
                if ack_tx.send(pending).await.is_err() {
                    break 'messages;
                }
            }
        }
    }
    drop(ack_tx);
    let _ = acker.await;
}

/// Builds the dead-letter record for a failed message, and logs it.
fn dead_letter(
    tp: &TopicPartition,
    route: &Route,
    plugin: &Plugin,
    message: &Message,
    failed: Failed,
    correlation: &str,
    dlq: &str,
) -> Output {
    let error_type = failed.error_type;
    let letter = DeadLetter {
        message,
        error_type,
        reason: failed.reason,
        correlation_id: correlation,
        retry_count: message.attempt - 1,
        module: route.module_name(),
        module_hash: plugin.hash(),
        failed_at: SystemTime::now(),
    };
    tracing::warn!(
        topic = %tp.0, partition = tp.1, offset = message.offset,
        module = route.module_name(), module_hash = plugin.short_hash(),
        correlation_id = %correlation, error_type = error_type.as_str(),
        dead_letter_topic = dlq,
        "dead-lettering message: {}", letter.reason
    );
    Output {
        topic: dlq.to_owned(),
        key: message.key.clone(),
        value: serde_json::to_vec(&letter.envelope()).ok(),
        headers: letter.headers(),
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
    let stopped = |insert: bool| {
        let mut stopped = shared
            .status
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if insert {
            stopped.insert(
                tp.clone(),
                format!(
                    "offset {}: {}: {reason}",
                    message.offset,
                    error_type.as_str()
                ),
            );
        } else {
            stopped.remove(tp);
        }
    };
    stopped(true);
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
    stopped(false);
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
/// refused is produced again; its offset waits.
async fn run_acker(
    tp: TopicPartition,
    route: Arc<RouteStatus>,
    shared: Arc<Shared>,
    gate: Arc<Gate>,
    mut rx: mpsc::Receiver<Pending>,
) {
    let mut ready = Vec::with_capacity(256);
    while rx.recv_many(&mut ready, 256).await > 0 {
        // Store once per batch of handled messages: the last offset covers
        // every message before it.
        let mut last_acked = None;
        for pending in ready.drain(..) {
            if let Some(receipt) = &pending.receipt
                && !settle(&shared, &route, &gate, receipt, None, pending.dead_letter).await
            {
                if let Some(offset) = last_acked {
                    gate.store(&shared, &tp, offset);
                }
                return;
            }
            last_acked = Some(pending.offset);
            gate.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(offset) = last_acked {
            gate.store(&shared, &tp, offset);
        }
    }
}
