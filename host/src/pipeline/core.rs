//! The delivery core: what happens to every message of one partition, as a
//! state machine with no I/O in it.
//!
//! The partition's worker (`pipeline/partition.rs`) feeds it events (messages
//! fetched, handler outcomes, the broker's answers for the records produced,
//! the clock, module and config changes, shutdown) and carries out what it
//! asks for ([`Action`]: produce a message's records, store an offset,
//! report). Handler calls are pulled with [`Core::take_call`]. Everything
//! it decides, a simulation test drives with a seeded schedule
//! (`core/sim.rs`) and checks against the guarantees:
//!
//! - messages are handed to the handler, and their records to the producer,
//!   in offset order;
//! - an offset is stored only once every record of its message, and of
//!   every message before it, is acknowledged by the broker;
//! - a record refused for now is produced again, and after it the outputs
//!   of every later message of the partition already produced and not yet
//!   stored (the same when a message is called again after a stop), so that
//!   for each key the last copy of each output on the broker is in input
//!   order;
//! - every message ends in its outputs, its dead letter, or its partition
//!   stopped or held on it, never dropped; after a revocation or shutdown
//!   nothing more is stored, and what was not stored is delivered again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::policy::{Decision, ErrorType, FailureKind, RetryPolicy};

/// A message as the core sees it: its offset, and the attempt the next call
/// of it is.
pub trait Item {
    /// Its offset in the partition.
    fn offset(&self) -> i64;
    /// Sets the number of the call it is about to have (1 for the first).
    fn set_attempt(&mut self, attempt: u32);
}

/// A failed call or a refused record, classified by [`crate::policy`].
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    /// The kind of failure.
    pub kind: FailureKind,
    /// What happened, for logs, health and the dead letter.
    pub reason: String,
}

/// What a handler call returned for one message.
#[derive(Debug)]
pub enum Outcome<R> {
    /// The records to produce (possibly none).
    Outputs(Vec<R>),
    /// The call failed.
    Failed(Failed),
}

/// The broker's answer for the records of one production of a message.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Answer {
    /// Every record was acknowledged.
    #[default]
    Acked,
    /// A record was refused for now (the broker was down, a request timed
    /// out): producing it again may succeed.
    RefusedForNow(String),
    /// A record was refused for good: it can never be produced as it is.
    RefusedForGood(String),
}

impl Answer {
    /// The answer for the records of both: a refusal for good outweighs a
    /// refusal for now, which outweighs an acknowledgement; between two of
    /// a kind the first is kept.
    #[must_use]
    pub fn and(self, other: Answer) -> Answer {
        match (&self, &other) {
            (Answer::RefusedForGood(_), _) => self,
            (_, Answer::RefusedForGood(_)) => other,
            (Answer::RefusedForNow(_), _) => self,
            _ => other,
        }
    }
}

/// What the core decides the handler breaker and the dead-letter writer
/// are asked, and how the route is configured now. The daemon implements it
/// on the route; the simulation with seeded fakes.
pub trait Env<M, R> {
    /// The route's retry rules.
    fn policy(&self) -> &RetryPolicy;
    /// Whether the route has a dead-letter topic.
    fn has_dead_letter_topic(&self) -> bool;
    /// The dead-letter record of `message`, which failed with `failed` on
    /// call number `attempt`.
    fn dead_letter(&mut self, message: &M, attempt: u32, failed: &Failed) -> R;
    /// Reports a handled message to the handler breaker: `Some(ok)` counts
    /// it, `None` says it was not the handler's fault. Returns whether the
    /// breaker is still closed.
    fn report_handler(&mut self, ok: Option<bool>) -> bool;
    /// Whether the call was the handler breaker's half-open probe.
    fn handler_probe(&self) -> bool;
    /// A random factor in [0.5, 1.5] for the retry backoff.
    fn jitter(&mut self) -> f64;
}

/// What the driver is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Hand the records of the message at `offset` ([`Core::records`]) to
    /// the producer, and report their answers with `generation`.
    Produce {
        /// The message's offset.
        offset: i64,
        /// Counts the productions of the message; answers for an earlier
        /// one are stale.
        generation: u32,
    },
    /// Store this offset: it and every message before it are done.
    Store {
        /// The last offset done.
        offset: i64,
        /// How many messages it finished.
        messages: usize,
    },
    /// Something to log, count or show in health.
    Note(Note),
}

/// What happened to a message, for logs, metrics and health.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// The handler call succeeded with this many records to produce.
    Handled { offset: i64, outputs: usize },
    /// The call failed and is tried again after `delay`.
    Retry {
        offset: i64,
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    /// The handler breaker opened: the message is held and called again
    /// once the breaker admits it.
    Held { offset: i64, reason: String },
    /// The message is given up on and dead-lettered.
    DeadLetter {
        offset: i64,
        error_type: ErrorType,
        reason: String,
    },
    /// The partition stopped on the message: nothing after it is handled
    /// or stored until it is.
    Stopped { offset: i64, reason: String },
    /// The partition goes on with the message it stopped on.
    Resumed { offset: i64 },
    /// A record of the message was refused for now: it and every later
    /// message's records are produced again after `delay`.
    Refused {
        offset: i64,
        delay: Duration,
        reason: String,
    },
    /// The message's dead letter was refused for good.
    DeadLetterRefused { offset: i64, reason: String },
}

/// How long a partition stopped on a dead letter refused for good waits
/// before trying it again, if no config change comes first.
pub const REFUSED_RETRY: Duration = Duration::from_secs(30);

/// Why a partition stopped on a message.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StopKind {
    /// It failed and the route has no dead-letter topic: it is called
    /// again when its module or the route changes.
    NoDeadLetter,
    /// Its dead letter was refused for good: it is written again when the
    /// route changes, or at the given time.
    LetterRefused(Instant),
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Fetched, waiting for a call.
    Queued,
    /// Handed to the handler.
    Calling,
    /// Failed; called again at the given time.
    Backoff(Instant),
    /// The partition stopped on it.
    Stopped(StopKind),
    /// Its records wait for the producer.
    Ready,
    /// Its records are with the producer.
    Producing,
    /// Every record of its last production was acknowledged.
    Acked,
}

/// One message of the partition, from fetched to stored.
#[derive(Debug)]
struct Entry<M, R> {
    offset: i64,
    /// `None` while the handler has it.
    message: Option<M>,
    /// The number of its last call (0 before the first).
    attempt: u32,
    state: State,
    /// The records to produce: its outputs, or its dead letter.
    records: Vec<R>,
    /// Whether `records` is its dead letter.
    dead_letter: bool,
    /// The failure that made it a dead letter or stopped the partition.
    failed: Option<Failed>,
    /// Counts its productions.
    generation: u32,
}

/// One partition's messages from fetch to stored offset.
pub struct Core<M, R> {
    /// Every message fetched and not yet stored, in offset order.
    entries: VecDeque<Entry<M, R>>,
    /// How many entries are [`State::Queued`].
    queued: usize,
    /// How many entries wait on a timer (a retry's backoff, a refused dead
    /// letter): without any, nothing is scanned for the next wake.
    timers: usize,
    /// Every entry before this index is with the producer or acknowledged:
    /// production and calls look from here on.
    ready_from: usize,
    /// Handled messages whose records are not stored yet, at most: it
    /// bounds how far production runs ahead of the broker.
    window: usize,
    /// Set after a record was refused for now: nothing is produced before
    /// then.
    hold: Option<Instant>,
    /// The highest offset produced: a message produced at or before it
    /// again has later messages' outputs produced again after its own.
    last_produced: i64,
    /// Refusals for now in a row, for the delay before producing again.
    refusals: u32,
    /// The last offset stored.
    stored: Option<i64>,
    /// No more calls: the daemon is stopping.
    draining: bool,
    /// The partition went to another consumer: nothing more is stored.
    revoked: bool,
    actions: Vec<Action>,
}

impl<M: Item, R> Core<M, R> {
    /// An empty partition that lets `window` handled messages await the
    /// broker.
    pub fn new(window: usize) -> Core<M, R> {
        Core {
            entries: VecDeque::new(),
            queued: 0,
            timers: 0,
            ready_from: 0,
            window: window.max(1),
            hold: None,
            last_produced: -1,
            refusals: 0,
            stored: None,
            draining: false,
            revoked: false,
            actions: Vec::new(),
        }
    }

    /// Takes the actions decided since the last call.
    pub fn actions(&mut self) -> std::vec::Drain<'_, Action> {
        self.actions.drain(..)
    }

    /// The records of the message at `offset`, for [`Action::Produce`].
    pub fn records(&self, offset: i64) -> &[R] {
        self.find(offset).map_or(&[], |i| &self.entries[i].records)
    }

    /// Whether the message at `offset` is produced as a dead letter.
    pub fn is_dead_letter(&self, offset: i64) -> bool {
        self.find(offset)
            .is_some_and(|i| self.entries[i].dead_letter)
    }

    /// The message at `offset`, while the core holds it.
    pub fn message(&self, offset: i64) -> Option<&M> {
        self.find(offset)
            .and_then(|i| self.entries[i].message.as_ref())
    }

    /// Messages fetched and not handed to the handler yet.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Whether the daemon is stopping and nothing is left to wait for.
    pub fn drained(&self) -> bool {
        self.draining && self.entries.is_empty()
    }

    /// Takes a message fetched from the partition. An offset at or before
    /// one already taken (fetched again after a seek) is ignored.
    pub fn fetched(&mut self, message: M) {
        let offset = message.offset();
        if self.draining
            || self.entries.back().is_some_and(|e| e.offset >= offset)
            || self.stored.is_some_and(|s| s >= offset)
        {
            return;
        }
        self.entries.push_back(Entry {
            offset,
            message: Some(message),
            attempt: 0,
            state: State::Queued,
            records: Vec::new(),
            dead_letter: false,
            failed: None,
            generation: 0,
        });
        self.queued += 1;
    }

    /// Whether a call may start now: nothing is with the handler, nothing
    /// before the next queued message waits (a retry, a stop), and the
    /// window has room.
    pub fn wants_call(&self) -> bool {
        self.next_call().is_some()
    }

    /// The index of the next message to call, if a call may start.
    fn next_call(&self) -> Option<usize> {
        if self.draining {
            return None;
        }
        let first = self.ready_from
            + self
                .entries
                .range(self.ready_from..)
                .position(|e| !matches!(e.state, State::Ready | State::Producing | State::Acked))?;
        let ready = self.entries[first].state == State::Queued && first < self.window;
        ready.then_some(first)
    }

    /// Hands up to `limit` queued messages, in order, to the handler.
    pub fn take_call(&mut self, limit: usize) -> Vec<M> {
        let Some(first) = self.next_call() else {
            return Vec::new();
        };
        let end = first
            .saturating_add(limit.max(1))
            .min(self.window)
            .min(self.entries.len());
        let mut call = Vec::with_capacity(end - first);
        for entry in self.entries.range_mut(first..end) {
            if entry.state != State::Queued {
                break;
            }
            let Some(mut message) = entry.message.take() else {
                break;
            };
            entry.attempt += 1;
            message.set_attempt(entry.attempt);
            entry.state = State::Calling;
            call.push(message);
        }
        self.queued -= call.len();
        call
    }

    /// The handler's outcomes for the messages of the call, in order, and
    /// the messages it did not get to (a new module version, its turn
    /// ended): those are called again.
    pub fn called<E: Env<M, R>>(
        &mut self,
        now: Instant,
        outcomes: Vec<(M, Outcome<R>)>,
        unhandled: Vec<M>,
        env: &mut E,
    ) {
        let mut stop = false;
        for (message, outcome) in outcomes {
            let Some(i) = self.calling(message.offset()) else {
                continue;
            };
            self.entries[i].message = Some(message);
            if stop {
                // After a failure that holds the partition, later results
                // are discarded: those messages are called again.
                self.requeue(i);
                continue;
            }
            stop = self.outcome(i, now, outcome, env);
        }
        for message in unhandled {
            if let Some(i) = self.calling(message.offset()) {
                self.entries[i].message = Some(message);
                self.requeue(i);
            }
        }
        self.produce_ready(now);
    }

    /// The index of the message at `offset` if it is with the handler.
    fn calling(&self, offset: i64) -> Option<usize> {
        self.find(offset)
            .filter(|&i| self.entries[i].state == State::Calling)
    }

    /// Puts a message back in the queue, not counting the call it had.
    fn requeue(&mut self, i: usize) {
        let entry = &mut self.entries[i];
        entry.attempt = entry.attempt.saturating_sub(1);
        entry.state = State::Queued;
        self.queued += 1;
    }

    /// Decides what one call's outcome does to its message. Returns whether
    /// the messages after it must wait (a retry, a hold, a stop).
    fn outcome<E: Env<M, R>>(
        &mut self,
        i: usize,
        now: Instant,
        outcome: Outcome<R>,
        env: &mut E,
    ) -> bool {
        let offset = self.entries[i].offset;
        let failed = match outcome {
            Outcome::Outputs(records) => {
                env.report_handler(Some(true));
                let outputs = records.len();
                self.note(Note::Handled { offset, outputs });
                let entry = &mut self.entries[i];
                entry.records = records;
                entry.dead_letter = false;
                entry.failed = None;
                self.set_ready(i);
                return false;
            }
            Outcome::Failed(failed) => failed,
        };
        let attempt = self.entries[i].attempt;
        let jitter = env.jitter();
        let decision = env.policy().decide(failed.kind, attempt, jitter);
        let retry = matches!(decision, Decision::Retry(_));
        if failed.kind.trips_breaker() && (env.handler_probe() || !retry) {
            // Out of retries, or a failed probe: the breaker counts it, and
            // while it is open the message is held, not given up on.
            if !env.report_handler(Some(false)) {
                self.entries[i].state = State::Queued;
                self.queued += 1;
                let reason = failed.reason;
                self.note(Note::Held { offset, reason });
                return true;
            }
        } else if !retry {
            // The handler answered; not what its breaker guards against.
            env.report_handler(None);
        }
        match decision {
            Decision::Retry(delay) => {
                self.entries[i].state = State::Backoff(now + delay);
                self.timers += 1;
                let reason = failed.reason;
                self.note(Note::Retry {
                    offset,
                    attempt,
                    delay,
                    reason,
                });
                true
            }
            Decision::GiveUp(_) => self.give_up(i, failed, env),
        }
    }

    /// A message that will not be called again: it is dead-lettered, or,
    /// without a dead-letter topic, its partition stops on it. Returns
    /// whether the messages after it must wait.
    fn give_up<E: Env<M, R>>(&mut self, i: usize, failed: Failed, env: &mut E) -> bool {
        let offset = self.entries[i].offset;
        if !env.has_dead_letter_topic() {
            let reason = format!(
                "{}: {}; the route has no dead_letter_topic",
                failed.kind.error_type(),
                failed.reason
            );
            self.entries[i].failed = Some(failed);
            self.stop(i, StopKind::NoDeadLetter, reason);
            return true;
        }
        self.note(Note::DeadLetter {
            offset,
            error_type: failed.kind.error_type(),
            reason: failed.reason.clone(),
        });
        self.write_letter(i, failed, env);
        false
    }

    /// Makes the message's dead letter its records.
    fn write_letter<E: Env<M, R>>(&mut self, i: usize, failed: Failed, env: &mut E) {
        let entry = &mut self.entries[i];
        let letter = match &entry.message {
            Some(message) => env.dead_letter(message, entry.attempt, &failed),
            None => return,
        };
        entry.records = vec![letter];
        entry.dead_letter = true;
        entry.failed = Some(failed);
        self.set_ready(i);
    }

    /// Stops the partition on the message at `i`.
    fn stop(&mut self, i: usize, kind: StopKind, reason: String) {
        if matches!(kind, StopKind::LetterRefused(_)) {
            self.timers += 1;
        }
        self.ready_from = self.ready_from.min(i);
        let entry = &mut self.entries[i];
        entry.state = State::Stopped(kind);
        let offset = entry.offset;
        self.note(Note::Stopped { offset, reason });
    }

    /// While draining, drops what can no longer finish before the stop:
    /// from the first message that is not with the producer.
    fn trim_draining(&mut self) {
        if !self.draining {
            return;
        }
        let keep = self
            .entries
            .iter()
            .position(|e| !matches!(e.state, State::Producing | State::Acked | State::Ready))
            .unwrap_or(self.entries.len());
        self.truncate(keep);
    }

    /// Forgets every message from index `len` on.
    fn truncate(&mut self, len: usize) {
        self.entries.truncate(len);
        self.ready_from = self.ready_from.min(len);
        self.queued = self
            .entries
            .iter()
            .filter(|e| e.state == State::Queued)
            .count();
        self.timers = self
            .entries
            .iter()
            .filter(|e| {
                matches!(
                    e.state,
                    State::Backoff(_) | State::Stopped(StopKind::LetterRefused(_))
                )
            })
            .count();
    }

    /// Marks the message at `i` ready for the producer.
    fn set_ready(&mut self, i: usize) {
        self.entries[i].state = State::Ready;
        self.ready_from = self.ready_from.min(i);
    }

    /// The position of the message at `offset`.
    /// The index of the entry at `offset`. A partition's offsets are
    /// usually consecutive, so the entry is where its distance from the
    /// first one says; a gap (a compacted topic, transaction markers) falls
    /// back to a binary search.
    fn find(&self, offset: i64) -> Option<usize> {
        let first = self.entries.front()?.offset;
        let guess = usize::try_from(offset.checked_sub(first)?).ok()?;
        if self.entries.get(guess).is_some_and(|e| e.offset == offset) {
            return Some(guess);
        }
        self.entries
            .binary_search_by_key(&offset, |e| e.offset)
            .ok()
    }

    fn note(&mut self, note: Note) {
        self.actions.push(Action::Note(note));
    }
}

#[path = "core/production.rs"]
mod production;

#[path = "core/lifecycle.rs"]
mod lifecycle;

#[cfg(test)]
#[path = "core/sim.rs"]
mod sim;
