//! One assigned partition: its [`Gate`], which the rebalance callback
//! closes, and its [`Worker`], which owns the partition's delivery core and
//! carries out what it decides: handler calls, productions, offset stores.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message as _, OwnedMessage};
use tokio::sync::{mpsc, watch};

use super::calls::{self, Called, Fetched};
use super::consumer::machine::{WorkerEnd, WorkerFailure};
use super::core::{Action, Answer, Core, Note};
use super::delivery::{NotProduced, Produced, Receipt, produce_all};
use super::events;
use super::gate::Gate;
use super::route_env::RouteEnv;
use super::shared::Shared;
use crate::breaker::{Admission, CircuitState};
use crate::policy::{ProduceRefusal, Refused};
use crate::route::{Route, RouteSlot};
use crate::status::TopicPartition;
use crate::trace::SpanOutcome;
use crate::wasm::{Message, Output, Plugin};

/// The most settled productions taken in one turn of a worker.
const ANSWERS_PER_TURN: usize = 256;

/// Handled messages whose records await acknowledgement, per partition. It
/// bounds how far production may run ahead of the broker.
const ACK_WINDOW: usize = 4096;

/// The core's view of the worker's route, with the handler breaker's
/// admission of the call whose outcomes are reported: a macro, so that it
/// borrows the worker's fields and not the whole worker.
macro_rules! env {
    ($worker:ident, $handler:expr) => {
        RouteEnv {
            route: &$worker.route,
            plugin: $worker.plugin.clone().or_else(|| $worker.route.current()),
            handler: $handler,
            gate: &$worker.gate,
            max_record_bytes: $worker.shared.max_record_bytes,
        }
    };
}

/// The partition worker: owns the partition's delivery [`Core`], feeds it
/// every event, and carries out its actions. One task per partition;
/// handler calls run on blocking threads, records go to the shared
/// producer.
pub struct Worker {
    /// The partition.
    tp: TopicPartition,
    shared: Arc<Shared>,
    /// Closed by the rebalance callback or at shutdown.
    gate: Arc<Gate>,
    /// Messages from the consumer loop, in offset order.
    rx: mpsc::Receiver<Message>,
    /// Tells the consumer loop that a paused partition's queue has room.
    room: mpsc::UnboundedSender<TopicPartition>,
    /// Announces config reloads of the route.
    reloads: watch::Receiver<Arc<Route>>,
    /// The route as configured now.
    route: Arc<Route>,
    /// Announces new versions of the route's module.
    modules: watch::Receiver<Option<Arc<Plugin>>>,
    /// The module version of the last call: dead letters name it.
    plugin: Option<Arc<Plugin>>,
    /// What happens to each message, decided without I/O.
    core: Core<Fetched, Output>,
    /// The handler call being admitted or made.
    call: Call,
    /// Productions awaiting the broker's answers, oldest first.
    productions: VecDeque<Production>,
    /// The broker breaker's half-open probe, reported with the answer of
    /// the next production.
    broker_probe: Option<Admission>,
    /// Stopping: no more calls, waiting for the broker's last answers.
    draining: bool,
}

/// The state of the partition's handler call.
enum Call {
    /// No call.
    Idle,
    /// Waiting for the module and both breakers.
    Admitting(BoxFuture<'static, Admitted>),
    /// The handler has messages.
    Running {
        task: BoxFuture<'static, Result<Called, WorkerFailure>>,
        handler: Admission,
    },
}

/// Leave to call the handler.
struct Admitted {
    plugin: Arc<Plugin>,
    handler: Admission,
    broker: Admission,
}

/// A production awaiting the broker's answers.
struct Production {
    offset: i64,
    generation: u32,
    /// `None` when nothing was enqueued.
    receipt: Option<Arc<Receipt>>,
    /// A record the producer refused for good before it was enqueued.
    refused: Option<Refused>,
}

/// What woke the worker.
enum Event {
    Cancelled,
    Answered(Vec<(KafkaError, OwnedMessage)>),
    Admitted(Admitted),
    Called(Result<Called, WorkerFailure>),
    Received,
    Closed,
    Wake,
    ModuleChanged,
    Reloaded,
}

/// Runs the worker of partition `tp` until it is revoked, the daemon stops
/// or it cannot go on.
pub async fn run_worker(
    tp: TopicPartition,
    slot: RouteSlot,
    shared: Arc<Shared>,
    gate: Arc<Gate>,
    rx: mpsc::Receiver<Message>,
    room: mpsc::UnboundedSender<TopicPartition>,
) -> WorkerEnd {
    let mut reloads = slot.subscribe();
    let route = reloads.borrow_and_update().clone();
    let mut modules = route.module_changes();
    modules.mark_unchanged();
    let worker = Worker {
        tp,
        shared,
        gate,
        rx,
        room,
        reloads,
        route,
        modules,
        plugin: None,
        core: Core::new(ACK_WINDOW),
        call: Call::Idle,
        productions: VecDeque::new(),
        broker_probe: None,
        draining: false,
    };
    worker.run().await
}

impl Worker {
    async fn run(mut self) -> WorkerEnd {
        let mut inbox = Vec::new();
        loop {
            if let Some(end) = self.carry_out().await {
                return end;
            }
            if self.draining && self.core.drained() {
                return WorkerEnd::Done;
            }
            self.start_call();
            let event = self.next_event(&mut inbox).await;
            if let Some(end) = self.handle(event, &mut inbox) {
                return end;
            }
        }
    }

    /// Waits for the next event.
    async fn next_event(&mut self, inbox: &mut Vec<Message>) -> Event {
        let front = self.productions.front().map(|p| p.receipt.clone());
        let want = self.shared.batch_size.saturating_sub(self.core.queued());
        let receiving = want > 0 && !self.draining;
        let wake = self.core.next_wake();
        tokio::select! {
            biased;
            () = self.gate.cancel.cancelled(), if !self.draining => Event::Cancelled,
            refused = answers(front), if !self.productions.is_empty() => Event::Answered(refused),
            event = call_event(&mut self.call) => event,
            n = self.rx.recv_many(inbox, want), if receiving => {
                if n == 0 { Event::Closed } else { Event::Received }
            }
            () = sleep_until(wake), if wake.is_some() => Event::Wake,
            Ok(()) = self.modules.changed() => Event::ModuleChanged,
            Ok(()) = self.reloads.changed() => Event::Reloaded,
        }
    }

    /// Feeds an event to the core. Returns how the worker ends, if it does.
    fn handle(&mut self, event: Event, inbox: &mut Vec<Message>) -> Option<WorkerEnd> {
        let now = Instant::now();
        match event {
            Event::Cancelled if self.gate.is_revoked() => {
                self.core.revoke();
                return Some(WorkerEnd::Done);
            }
            Event::Cancelled | Event::Closed => self.drain(),
            Event::Answered(refused) => {
                self.answered(now, refused);
                self.answered_since(now);
            }
            Event::Admitted(admitted) => self.admitted(admitted),
            Event::Called(Err(reason)) => return Some(WorkerEnd::Failed(reason)),
            Event::Called(Ok(called)) => self.called(now, called),
            Event::Received => self.received(inbox),
            Event::Wake => {
                let mut env = env!(self, None);
                self.core.tick(now, &mut env);
            }
            Event::ModuleChanged => {
                let loaded = self.modules.borrow_and_update().is_some();
                if loaded {
                    self.core.module_changed();
                }
            }
            Event::Reloaded => self.reloaded(now),
        }
        None
    }

    /// Starts admitting a call when the core wants one and none is going.
    fn start_call(&mut self) {
        if !matches!(self.call, Call::Idle) || self.draining || !self.core.wants_call() {
            return;
        }
        let route = self.route.clone();
        let broker = self.shared.broker.clone();
        self.call = Call::Admitting(
            async move {
                // Held while the module file is deleted, or a breaker is
                // open: held messages are not stored, they are delivered
                // again.
                let plugin = route.module().await;
                let handler = route.status.breaker.admit().await;
                let broker = broker.admit().await;
                Admitted {
                    plugin,
                    handler,
                    broker,
                }
            }
            .boxed(),
        );
    }

    /// Both breakers let the call go: the core picks its messages (one for
    /// a half-open probe).
    fn admitted(&mut self, admitted: Admitted) {
        let Admitted {
            plugin,
            handler,
            broker,
        } = admitted;
        let limit = if handler.is_probe() || broker.is_probe() {
            1
        } else {
            usize::MAX
        };
        let messages = self.core.take_call(limit);
        if messages.is_empty() {
            self.call = Call::Idle;
            return;
        }
        if broker.is_probe() {
            self.broker_probe = Some(broker);
        }
        self.plugin = Some(plugin.clone());
        let task = calls::call(
            self.route.clone(),
            plugin,
            self.shared.slots.clone(),
            messages,
            limit,
            self.gate.cancel.clone(),
        )
        .boxed();
        self.call = Call::Running { task, handler };
    }

    /// The handler's outcomes reach the core.
    fn called(&mut self, now: Instant, called: Called) {
        let Call::Running { mut handler, .. } = std::mem::replace(&mut self.call, Call::Idle)
        else {
            return;
        };
        let mut env = env!(self, Some(&mut handler));
        self.core
            .called(now, called.outcomes, called.unhandled, &mut env);
    }

    /// Messages from the consumer loop join the core's queue; a paused
    /// partition is resumed once its queue is half empty, not at the first
    /// free slot: every resume makes the consumer fetch again.
    fn received(&mut self, inbox: &mut Vec<Message>) {
        for message in inbox.drain(..) {
            let tracer = self.shared.tracer.as_deref();
            let offset = message.offset;
            let mut fetched = Fetched::new(message, tracer, self.route.module_name());
            fetched.undecodable = self.gate.take_undecodable(offset);
            self.core.fetched(fetched);
        }
        if self.gate.paused.load(Ordering::Relaxed) && self.rx.len() <= self.rx.max_capacity() / 2 {
            let _ = self.room.send(self.tp.clone());
        }
    }

    /// The route's config changed: a call being admitted starts again with
    /// it, and the messages the partition stopped on are tried with it.
    fn reloaded(&mut self, now: Instant) {
        self.route = self.reloads.borrow_and_update().clone();
        self.modules = self.route.module_changes();
        self.modules.mark_unchanged();
        if matches!(self.call, Call::Admitting(_)) {
            self.call = Call::Idle;
        }
        let mut env = env!(self, None);
        self.core.config_changed(now, &mut env);
    }

    /// Stops calling; what is with the producer is waited for.
    fn drain(&mut self) {
        self.draining = true;
        self.call = Call::Idle;
        self.core.drain();
    }

    /// The answers of the productions after the oldest that are settled
    /// too reach the core in the same turn: one wake-up for a run of
    /// messages, as the broker answers them in batches.
    fn answered_since(&mut self, now: Instant) {
        for _ in 0..ANSWERS_PER_TURN {
            let Some(production) = self.productions.front() else {
                return;
            };
            let refused = match &production.receipt {
                None => Vec::new(),
                Some(receipt) => match receipt.answers().now_or_never() {
                    Some(refused) => refused,
                    None => return,
                },
            };
            self.answered(now, refused);
        }
    }

    /// The broker's answers for the oldest production reach the core, and
    /// its breaker.
    fn answered(&mut self, now: Instant, refused: Vec<(KafkaError, OwnedMessage)>) {
        let Some(production) = self.productions.pop_front() else {
            return;
        };
        let dead_letter = self.core.is_dead_letter(production.offset);
        let answer = self.answer(&production, refused, dead_letter);
        let mut env = env!(self, None);
        self.core.answered(
            now,
            production.offset,
            production.generation,
            answer,
            &mut env,
        );
    }

    /// The answer of a production, counted and reported to the broker
    /// breaker: a record refused for now counts against it, a record
    /// refused for good says nothing about the broker.
    fn answer(
        &mut self,
        production: &Production,
        refused: Vec<(KafkaError, OwnedMessage)>,
        dead_letter: bool,
    ) -> Answer {
        let status = &self.shared.status;
        let metrics = &self.route.status.metrics;
        let mut answer = match &production.refused {
            Some(refused) => Answer::RefusedForGood(refused.to_string()),
            None => Answer::Acked,
        };
        let mut for_now = false;
        let enqueued = production.receipt.as_ref().map_or(0, |r| r.enqueued());
        let answered = refused.len();
        for (error, message) in refused {
            let topic = message.topic().to_owned();
            if ProduceRefusal::of(&error) == ProduceRefusal::Permanent {
                status.produce_refusals.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    topic,
                    dead_letter,
                    "record refused for good by the broker; it is not produced again: {error}"
                );
                answer = answer.and(Answer::RefusedForGood(Refused { topic, error }.to_string()));
            } else {
                status.produce_failures.fetch_add(1, Ordering::Relaxed);
                if dead_letter {
                    metrics.dlq_failures.fetch_add(1, Ordering::Relaxed);
                }
                for_now = true;
                answer = answer.and(Answer::RefusedForNow(format!(
                    "the record for topic {topic:?} was not acknowledged: {error}"
                )));
            }
        }
        let mut admission = self
            .broker_probe
            .take()
            .unwrap_or_else(|| self.shared.broker.admission());
        if for_now {
            admission.report(false);
        } else if answered < enqueued {
            admission.report(true);
        }
        if dead_letter && answer == Answer::Acked {
            metrics.dlq_published.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// Carries out the core's actions. Returns how the worker ends when a
    /// production is cut short by a revocation.
    async fn carry_out(&mut self) -> Option<WorkerEnd> {
        // Offsets are stored once per turn: the last covers every message
        // before it.
        let mut store = None;
        let mut stored = 0;
        let end = loop {
            let actions: Vec<Action> = self.core.actions().collect();
            if actions.is_empty() {
                break None;
            }
            for action in actions {
                match action {
                    Action::Produce { offset, generation } => {
                        if let Some(end) = self.produce(offset, generation).await {
                            return Some(end);
                        }
                    }
                    Action::Store { offset, messages } => {
                        store = Some(offset);
                        stored += messages;
                    }
                    Action::Note(note) => self.report(note),
                }
            }
        };
        if let Some(offset) = store {
            self.gate.store(&self.shared, &self.tp, offset);
            let in_flight = &self.gate.in_flight;
            in_flight.fetch_sub(stored as u64, Ordering::Relaxed);
        }
        end
    }

    /// Hands a message's records to the producer; while the broker breaker
    /// is not closed, only once it admits them (as its half-open probe, or
    /// after another probe closed it).
    async fn produce(&mut self, offset: i64, generation: u32) -> Option<WorkerEnd> {
        let breaker = &self.shared.broker;
        if self.broker_probe.is_none() && breaker.state() != CircuitState::Closed {
            let admission = tokio::select! {
                admission = breaker.admit() => Some(admission),
                () = self.gate.cancel.cancelled() => None,
            };
            match admission {
                Some(admission) if admission.is_probe() => self.broker_probe = Some(admission),
                Some(_) => {}
                None => return self.not_produced(offset, generation),
            }
        }
        let records = self.core.records(offset);
        let message = self.core.message(offset);
        let correlation = message.map_or("", |f| f.correlation.as_str());
        let correlation = self.shared.output_correlation_id.then_some(correlation);
        let trace = message.and_then(|f| f.trace.as_deref());
        let produced = produce_all(
            &self.shared.producer,
            records,
            correlation,
            trace,
            &self.gate.cancel,
        )
        .await;
        if let Ok(Produced {
            refused: Some(_), ..
        })
        | Err(NotProduced::Refused(_)) = &produced
        {
            let refusals = &self.shared.status.produce_refusals;
            refusals.fetch_add(1, Ordering::Relaxed);
        }
        let (receipt, refused) = match produced {
            Ok(Produced { receipt, refused }) => (receipt, refused),
            Err(NotProduced::Refused(refused)) => (None, Some(refused)),
            Err(NotProduced::Cancelled) => return self.not_produced(offset, generation),
        };
        self.productions.push_back(Production {
            offset,
            generation,
            receipt,
            refused,
        });
        None
    }

    /// A production cut short by a revocation (the worker ends) or by the
    /// daemon stopping: the message is not stored and is delivered again.
    fn not_produced(&mut self, offset: i64, generation: u32) -> Option<WorkerEnd> {
        if self.gate.is_revoked() {
            self.core.revoke();
            return Some(WorkerEnd::Done);
        }
        self.drain();
        let answer = Answer::RefusedForNow("the daemon is stopping".to_owned());
        let mut env = env!(self, None);
        self.core
            .answered(Instant::now(), offset, generation, answer, &mut env);
        None
    }

    /// What the core decided, on the message's span (there is one only
    /// when spans are exported).
    fn trace_outcome(&self, note: &Note) {
        if self.shared.tracer.is_none() {
            return;
        }
        let (offset, outcome) = match *note {
            Note::Handled { offset, .. } => (offset, SpanOutcome::Ok),
            Note::Retry { offset, .. } => (offset, SpanOutcome::Retried),
            Note::Held { offset, .. } => (offset, SpanOutcome::Held),
            Note::DeadLetter { offset, .. } => (offset, SpanOutcome::DeadLettered),
            Note::Stopped { offset, .. } => (offset, SpanOutcome::Stopped),
            _ => return,
        };
        let Some(fetched) = self.core.message(offset) else {
            return;
        };
        if let Some(trace) = &fetched.trace {
            let attempts = fetched.message.attempt;
            // Handled after a retry: the retry is what it took.
            let outcome = match outcome {
                SpanOutcome::Ok if attempts > 1 => SpanOutcome::Retried,
                outcome => outcome,
            };
            trace.outcome(outcome, attempts);
        }
    }

    /// What the core decided, in the logs, the metrics, health and the
    /// message's span.
    fn report(&self, note: Note) {
        self.trace_outcome(&note);
        let scope = events::Scope {
            tp: &self.tp,
            route: &self.route,
            status: &self.shared.status,
        };
        events::emit(note, &scope);
    }
}

/// Waits for every answer of a production; returns the records refused.
async fn answers(receipt: Option<Option<Arc<Receipt>>>) -> Vec<(KafkaError, OwnedMessage)> {
    match receipt.flatten() {
        Some(receipt) => receipt.answers().await,
        None => Vec::new(),
    }
}

/// The next event of the handler call.
async fn call_event(call: &mut Call) -> Event {
    match call {
        Call::Idle => std::future::pending().await,
        Call::Admitting(admitting) => Event::Admitted(admitting.await),
        Call::Running { task, .. } => Event::Called(task.await),
    }
}

/// Sleeps until `wake`, or forever.
async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
