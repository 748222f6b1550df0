//! Handler calls: a run of a partition's messages handed, in order, to the
//! route's handler on a blocking thread, each outcome classified for the
//! delivery core.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::consumer::machine::WorkerFailure;
use super::core::{Failed, Item, Outcome};
use crate::policy::FailureKind;
use crate::route::{Route, TURN};
use crate::trace::{MessageTrace, Site, Tracer};
use crate::wasm::{self, Failure, Invoker, Message, Output, Plugin};
use tokio::sync::Semaphore;

/// The header that carries a message's correlation id.
pub const CORRELATION_HEADER: &str = "correlation_id";

/// A message fetched from its partition, with its correlation id (from its
/// header, or made up for it once) and its trace context, so that its
/// retries, outputs and dead letter share them.
pub struct Fetched {
    pub message: Message,
    pub correlation: String,
    /// What its outputs and dead letter carry in `traceparent` and
    /// `tracestate`, and its span; `None` when it has no trace context.
    pub trace: Option<Box<MessageTrace>>,
    /// The Kafka client's error when the record could not be decoded: the
    /// message has no content, and it is dead-lettered without a call.
    pub undecodable: Option<String>,
}

impl Fetched {
    /// The message as fetched for the route's `module`; with `tracer`, its
    /// span starts now.
    pub fn new(message: Message, tracer: Option<&Tracer>, module: &str) -> Fetched {
        let correlation = correlation_id(&message);
        let site = Site {
            topic: &message.topic,
            partition: message.partition,
            offset: message.offset,
            module,
            correlation_id: &correlation,
        };
        let headers = message
            .headers
            .iter()
            .map(|h| (h.key.as_str(), &h.value[..]));
        let trace = MessageTrace::of(headers, tracer, &site);
        Fetched {
            message,
            correlation,
            trace,
            undecodable: None,
        }
    }
}

impl Item for Fetched {
    fn offset(&self) -> i64 {
        self.message.offset
    }

    fn set_attempt(&mut self, attempt: u32) {
        self.message.attempt = attempt;
    }
}

/// What a run of calls did: the outcomes in order, and the messages it did
/// not get to.
pub struct Called {
    pub outcomes: Vec<(Fetched, Outcome<Output>)>,
    pub unhandled: Vec<Fetched>,
}

/// Calls the handler for up to `limit` of `messages` in order, on a
/// blocking thread, stopping after the first failure (so that nothing
/// behind it is handled first), when a new module version arrives, when its
/// [`TURN`] is over, or when cancelled.
///
/// A module with a `handle-batch` export gets runs of messages in one call.
/// When such a call traps, times out or runs out of memory, its messages are
/// handed over one at a time, so that only the message at fault fails. A
/// message being retried is always handled on its own.
///
/// Fails when the handler thread panicked: the messages went with it.
pub async fn call(
    route: Arc<Route>,
    plugin: Arc<Plugin>,
    slots: Arc<Semaphore>,
    messages: Vec<Fetched>,
    limit: usize,
    cancel: CancellationToken,
) -> Result<Called, WorkerFailure> {
    let Ok(_permit) = slots.acquire().await else {
        return Ok(Called {
            outcomes: Vec::new(),
            unhandled: messages,
        });
    };
    let plugin_name = plugin.name().to_owned();
    let task = tokio::task::spawn_blocking(move || {
        #[cfg(feature = "fault-injection")]
        super::faults::handler_thread(route.topic());
        let mut calls = Calls {
            invoker: route.take_invoker(&plugin),
            route: &route,
            queue: messages.into(),
            done: Vec::new(),
            chunk: Vec::new(),
            ids: Vec::new(),
            traces: Vec::new(),
        };
        calls.run(limit, &cancel);
        let Calls {
            invoker,
            queue,
            done,
            ..
        } = calls;
        route.put_invoker(invoker);
        Called {
            outcomes: done,
            unhandled: queue.into(),
        }
    });
    task.await.map_err(|e| WorkerFailure::HandlerThread {
        module: plugin_name,
        error: e.to_string(),
    })
}

/// The handler calls for one run of a partition's messages.
struct Calls<'a> {
    invoker: Invoker,
    route: &'a Route,
    queue: VecDeque<Fetched>,
    done: Vec<(Fetched, Outcome<Output>)>,
    /// The messages of a `handle-batch` call, their correlation ids and
    /// trace contexts; kept to reuse their buffers.
    chunk: Vec<Message>,
    ids: Vec<String>,
    traces: Vec<Option<Box<MessageTrace>>>,
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
            if self.undecodable() {
                break;
            }
            let run = (limit - self.done.len())
                .min(self.queue.len())
                .min(self.route.batch_limit());
            let retried = self.queue.front().is_some_and(|f| f.message.attempt > 1);
            let stop = if singly == 0 && run > 1 && !retried && self.invoker.batches() {
                // A batch call stops short of a record that could not be
                // decoded.
                let run = self
                    .queue
                    .iter()
                    .take(run)
                    .position(|f| f.undecodable.is_some())
                    .unwrap_or(run);
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

    /// Fails the next message without a call when the Kafka client could
    /// not decode it. Returns whether it did.
    fn undecodable(&mut self) -> bool {
        let Some(reason) = self.queue.front().and_then(|f| f.undecodable.clone()) else {
            return false;
        };
        let Some(fetched) = self.queue.pop_front() else {
            return false;
        };
        let failed = Failed {
            kind: FailureKind::Undecodable,
            reason,
        };
        self.done.push((fetched, Outcome::Failed(failed)));
        true
    }

    /// Hands the next message to `handle`. Returns whether it failed.
    fn single(&mut self) -> bool {
        let Some(fetched) = self.queue.pop_front() else {
            return true;
        };
        let route = self.route;
        let started = Instant::now();
        let outcome =
            self.invoker
                .invoke_with_id(&fetched.message, &fetched.correlation, &route.invocation);
        let elapsed = started.elapsed();
        route.status.metrics.observe(elapsed);
        // A call cut short by a timeout, a trap or the memory limit says
        // nothing about the handler's usual cost per message.
        if matches!(outcome, Ok(_) | Err(Failure::Handler { .. })) {
            route.note_call(elapsed, 1);
        }
        self.push(fetched, outcome)
    }

    /// Hands the next `run` messages to one `handle-batch` call. Returns
    /// whether a message failed, or `None` (with the queue as it was) when
    /// the call itself failed.
    fn batch(&mut self, run: usize) -> Option<bool> {
        let route = self.route;
        self.chunk.clear();
        self.ids.clear();
        self.traces.clear();
        for fetched in self.queue.drain(..run) {
            self.chunk.push(fetched.message);
            self.ids.push(fetched.correlation);
            self.traces.push(fetched.trace);
        }
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
                self.unchunk(0);
                return None;
            }
        };
        let handled = outcomes.len().min(self.chunk.len());
        route.note_call(elapsed, handled);
        let each = elapsed / u32::try_from(handled).unwrap_or(u32::MAX);
        let mut stop = false;
        let mut messages = std::mem::take(&mut self.chunk).into_iter();
        let mut ids = std::mem::take(&mut self.ids).into_iter();
        let mut traces = std::mem::take(&mut self.traces).into_iter();
        for outcome in outcomes {
            let (Some(message), Some(correlation), Some(trace)) =
                (messages.next(), ids.next(), traces.next())
            else {
                break;
            };
            metrics.observe(each);
            let fetched = Fetched {
                message,
                correlation,
                trace,
                undecodable: None,
            };
            stop = self.push(fetched, outcome);
            if stop {
                break;
            }
        }
        // Messages the call did not get to go back, in order.
        self.chunk.extend(messages);
        self.ids.extend(ids);
        self.traces.extend(traces);
        self.unchunk(0);
        Some(stop)
    }

    /// Puts the messages of the chunk from `from` on back at the head of
    /// the queue, in order.
    fn unchunk(&mut self, from: usize) {
        let messages = self.chunk.drain(from..);
        let ids = self.ids.drain(from..);
        let traces = self.traces.drain(from..);
        let back: Vec<Fetched> = messages
            .zip(ids)
            .zip(traces)
            .map(|((message, correlation), trace)| Fetched {
                message,
                correlation,
                trace,
                undecodable: None,
            })
            .collect();
        for fetched in back.into_iter().rev() {
            self.queue.push_front(fetched);
        }
    }

    /// Records a call's outcome. Returns whether it failed: nothing behind
    /// a failure is handled before the delivery core decides about it.
    fn push(&mut self, fetched: Fetched, outcome: wasm::CallOutcome) -> bool {
        let outcome = classify(self.route, outcome);
        let failed = matches!(outcome, Outcome::Failed(_));
        self.done.push((fetched, outcome));
        failed
    }
}

/// A call's outcome as the delivery core sees it: outputs to a topic
/// outside the route's `output_topics` fail the message as
/// `InvalidOutput`.
fn classify(route: &Route, outcome: wasm::CallOutcome) -> Outcome<Output> {
    let failure = match outcome {
        Ok(outputs) => {
            let Some(bad) = outputs
                .iter()
                .find(|o| !route.output_topics.contains(&o.topic))
            else {
                return Outcome::Outputs(outputs);
            };
            let mut allowed: Vec<&str> = route.output_topics.iter().map(String::as_str).collect();
            allowed.sort_unstable();
            return Outcome::Failed(Failed {
                kind: FailureKind::InvalidOutput,
                reason: format!(
                    "handler emitted to topic {:?}, which is not in the route's output_topics \
                     {allowed:?}",
                    bad.topic
                ),
            });
        }
        Err(failure) => failure,
    };
    Outcome::Failed(Failed {
        kind: FailureKind::of_call(&failure),
        reason: failure.to_string(),
    })
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
