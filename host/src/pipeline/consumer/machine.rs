//! The consumer side's decisions, as a state machine with no I/O in it:
//! which partitions have a worker, where a message goes when its worker's
//! queue is full, which partitions are paused and why, what happens when a
//! worker ends early, and when stored offsets are committed.
//!
//! The consumer loop (`consumer/mod.rs`) feeds it events: the group's
//! assignments and revocations, messages fetched, room in a worker's queue,
//! a worker's end, the broker breaker, the clock, the drain. What it decides
//! is carried out through [`Shell`] (start a worker, pause, resume, seek,
//! commit) and [`Lane`] (hand a message to a worker). The simulation
//! (`consumer/sim.rs`) drives it together with the partitions' delivery
//! cores and checks, after every step, that:
//!
//! - every assigned partition is fetching unless paused for a reason the
//!   machine names ([`Paused`]);
//! - nothing is committed past an offset stored, and a revoked partition
//!   commits nothing more;
//! - commits keep their schedule however busy the fetch side is;
//! - a worker's queue and the messages held back for it stay bounded.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::breaker::CircuitState;
use crate::status::TopicPartition;

/// Names one worker of one partition: a restarted or reassigned partition
/// gets a new one, so the end of an earlier worker is told apart.
pub type WorkerId = u64;

/// What handing a message to a worker's queue came to.
#[derive(Debug)]
pub enum Sent<M> {
    /// It is in the queue.
    Queued,
    /// The queue is full: the message comes back.
    Full(M),
    /// The worker has stopped taking messages (revoked, shutting down, or
    /// ended): the message is not stored and is delivered again.
    Closed,
}

/// The way into one partition's worker.
pub trait Lane<M> {
    /// Hands the worker a message.
    fn send(&mut self, message: M) -> Sent<M>;
    /// Asks the worker to say when its queue has room again (`true`), or
    /// stops asking.
    fn wait_for_room(&mut self, waiting: bool);
    /// Where the partition starts again should its worker end early: the
    /// first message it was given, then the one after its last stored
    /// offset.
    fn resume_at(&self) -> i64;
    /// Whether the worker was told to stop (revoked, or shutting down).
    fn is_stopped(&self) -> bool;
}

/// What the machine has carried out.
pub trait Shell<M> {
    /// The lane to a new worker.
    type Lane: Lane<M>;
    /// Starts the worker `worker` of a partition whose first message is at
    /// `offset`. `None` when the partition's topic has no route.
    fn start_worker(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        worker: WorkerId,
    ) -> Option<Self::Lane>;
    /// Pauses or resumes fetching these partitions.
    fn set_paused(&mut self, tps: &[TopicPartition], paused: bool);
    /// Fetches the partition from `offset` on.
    fn seek(&mut self, tp: &TopicPartition, offset: i64);
    /// Commits the offsets stored.
    fn commit(&mut self);
    /// The partition no longer has a worker here.
    fn forget(&mut self, tp: &TopicPartition);
    /// A worker ended early and its partition starts again at `offset`.
    fn worker_failed(&mut self, tp: &TopicPartition, offset: i64, failure: &WorkerFailure);
}

/// Why an assigned partition is not fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paused {
    /// Its worker's queue is full: fetched messages are held back until it
    /// has room.
    QueueFull,
    /// The broker breaker is not closed: nothing more is fetched until
    /// records can be produced again.
    BrokerBreaker,
}

/// How a worker ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerEnd {
    /// Revoked, shutting down, or its queue closed.
    Done,
    /// It could not go on: the partition starts again from the offset
    /// after the last one stored, so nothing is lost.
    Failed(WorkerFailure),
}

/// Why a worker could not go on.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerFailure {
    /// The thread of a handler call ended without an answer (it panicked):
    /// the call's messages went with it.
    HandlerThread { module: String, error: String },
    /// The worker task itself panicked.
    Panicked(String),
    /// It ended without being told to, and without saying why.
    Unexplained,
}

impl std::fmt::Display for WorkerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerFailure::HandlerThread { module, error } => {
                write!(f, "the handler thread of module {module} failed: {error}")
            }
            WorkerFailure::Panicked(error) => write!(f, "the partition worker panicked: {error}"),
            WorkerFailure::Unexplained => f.write_str("the worker stopped without being told to"),
        }
    }
}

/// One partition with a worker.
struct Part<M, L> {
    worker: WorkerId,
    lane: L,
    /// Messages fetched while the worker's queue was full, in order.
    held: VecDeque<M>,
}

/// When stored offsets are committed.
struct Schedule {
    every: Duration,
    next: Instant,
}

/// The consumer side's state. `M` is a message, `L` the lane to a worker.
pub struct Machine<M, L> {
    /// The partitions the group assigned to this consumer.
    assigned: BTreeSet<TopicPartition>,
    /// The partitions with a worker: keys are topic names from the config
    /// and the broker, so a fast hash is safe.
    parts: HashMap<TopicPartition, Part<M, L>, rustc_hash::FxBuildHasher>,
    breaker: CircuitState,
    /// `None` when librdkafka commits on its own (auto-commit).
    schedule: Option<Schedule>,
    draining: bool,
    next_worker: WorkerId,
}

impl<M, L: Lane<M>> Machine<M, L> {
    /// A machine that commits every `commit_every` (`None`: auto-commit),
    /// starting at `now`.
    pub fn new(commit_every: Option<Duration>, now: Instant) -> Machine<M, L> {
        Machine {
            assigned: BTreeSet::new(),
            parts: HashMap::default(),
            breaker: CircuitState::Closed,
            schedule: commit_every.map(|every| Schedule {
                every,
                next: now + every,
            }),
            draining: false,
            next_worker: 0,
        }
    }

    /// Why an assigned partition is paused, if it is.
    pub fn paused(&self, tp: &TopicPartition) -> Option<Paused> {
        if !self.assigned.contains(tp) {
            return None;
        }
        if self.breaker != CircuitState::Closed {
            return Some(Paused::BrokerBreaker);
        }
        self.parts
            .get(tp)
            .filter(|p| !p.held.is_empty())
            .map(|_| Paused::QueueFull)
    }

    /// Whether the partition is paused because its worker's queue is full.
    pub fn queue_full(&self, tp: &TopicPartition) -> bool {
        self.parts.get(tp).is_some_and(|p| !p.held.is_empty())
    }

    /// The partitions assigned.
    pub fn assigned(&self) -> impl Iterator<Item = &TopicPartition> {
        self.assigned.iter()
    }

    /// The messages held back for a partition's full queue.
    #[cfg(test)]
    pub fn held(&self, tp: &TopicPartition) -> usize {
        self.parts.get(tp).map_or(0, |p| p.held.len())
    }

    /// The worker serving a partition, if any.
    #[cfg(test)]
    pub fn worker(&self, tp: &TopicPartition) -> Option<WorkerId> {
        self.parts.get(tp).map(|p| p.worker)
    }

    /// The group assigned these partitions. A partition this consumer
    /// paused and lost keeps that pause inside the client: given back, it
    /// would never be fetched again. So each is set to fetch, or held
    /// paused while the broker breaker is not closed.
    pub fn assign<S: Shell<M, Lane = L>>(&mut self, tps: &[TopicPartition], shell: &mut S) {
        self.assigned.extend(tps.iter().cloned());
        if !tps.is_empty() {
            shell.set_paused(tps, self.breaker != CircuitState::Closed);
        }
    }

    /// The group took these partitions away: their workers (already told
    /// to stop and store nothing more) are forgotten with what was held
    /// back for them, which the new owner delivers again.
    pub fn revoke<S: Shell<M, Lane = L>>(&mut self, tps: &[TopicPartition], shell: &mut S) {
        for tp in tps {
            self.assigned.remove(tp);
            if self.parts.remove(tp).is_some() {
                shell.forget(tp);
            }
        }
    }

    /// A message fetched at `offset` for `tp` at about `now` (read once
    /// per burst): `make` builds it with the lane of the partition's worker,
    /// started if the partition has none. Commits that are due are made
    /// here too, so that a fetch side that always has a message ready
    /// cannot hold them back, whatever order the shell looks at its timer.
    pub fn fetched<S: Shell<M, Lane = L>>(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        now: Instant,
        shell: &mut S,
        make: impl FnOnce(&mut L) -> M,
    ) {
        if self.draining {
            return;
        }
        self.tick(now, shell);
        if !self.parts.contains_key(tp) && !self.start(tp, offset, shell) {
            return;
        }
        let Some(part) = self.parts.get_mut(tp) else {
            return;
        };
        let message = make(&mut part.lane);
        if !part.held.is_empty() {
            part.held.push_back(message);
            return;
        }
        match part.lane.send(message) {
            Sent::Queued | Sent::Closed => {}
            Sent::Full(message) => {
                part.held.push_back(message);
                part.lane.wait_for_room(true);
                shell.set_paused(std::slice::from_ref(tp), true);
            }
        }
    }

    /// A record at `offset` the client cannot decode, to be dead-lettered:
    /// handed to the partition's worker like a message, then the partition
    /// is fetched from the offset after it.
    pub fn skip<S: Shell<M, Lane = L>>(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        now: Instant,
        shell: &mut S,
        make: impl FnOnce(&mut L) -> M,
    ) {
        if self.draining || (!self.parts.contains_key(tp) && !self.start(tp, offset, shell)) {
            return;
        }
        self.fetched(tp, offset, now, shell, make);
        shell.seek(tp, offset + 1);
    }

    /// Starts a worker for `tp` at `offset`; whether the partition has a
    /// route to start one for.
    fn start<S: Shell<M, Lane = L>>(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        shell: &mut S,
    ) -> bool {
        let worker = self.next_worker;
        self.next_worker += 1;
        match shell.start_worker(tp, offset, worker) {
            Some(lane) => {
                let part = Part {
                    worker,
                    lane,
                    held: VecDeque::new(),
                };
                self.parts.insert(tp.clone(), part);
                true
            }
            None => false,
        }
    }

    /// The partition's worker has room in its queue: what was held back
    /// moves in, and once nothing is held the partition is fetched again
    /// (unless the broker breaker holds every partition).
    pub fn room<S: Shell<M, Lane = L>>(&mut self, tp: &TopicPartition, shell: &mut S) {
        let Some(part) = self.parts.get_mut(tp) else {
            return;
        };
        if part.held.is_empty() {
            return;
        }
        while let Some(message) = part.held.pop_front() {
            match part.lane.send(message) {
                Sent::Queued => {}
                Sent::Full(message) => {
                    part.held.push_front(message);
                    return;
                }
                // The worker ended: its end restarts the partition.
                Sent::Closed => {
                    part.held.clear();
                    break;
                }
            }
        }
        part.lane.wait_for_room(false);
        if self.breaker == CircuitState::Closed {
            shell.set_paused(std::slice::from_ref(tp), false);
        }
    }

    /// A worker ended. One that ended while its partition is still here
    /// and it was not told to stop is replaced: the partition is fetched
    /// again from the offset after its last stored one, so nothing is
    /// skipped, and the next message fetched starts a new worker.
    pub fn worker_ended<S: Shell<M, Lane = L>>(
        &mut self,
        tp: &TopicPartition,
        worker: WorkerId,
        end: &WorkerEnd,
        shell: &mut S,
    ) {
        let Some(part) = self.parts.get(tp) else {
            return;
        };
        if part.worker != worker {
            return;
        }
        if self.draining || part.lane.is_stopped() {
            return;
        }
        let Some(part) = self.parts.remove(tp) else {
            return;
        };
        shell.forget(tp);
        let offset = part.lane.resume_at();
        let failure = match end {
            WorkerEnd::Failed(failure) => failure.clone(),
            WorkerEnd::Done => WorkerFailure::Unexplained,
        };
        shell.worker_failed(tp, offset, &failure);
        shell.seek(tp, offset);
        if !part.held.is_empty() && self.breaker == CircuitState::Closed {
            shell.set_paused(std::slice::from_ref(tp), false);
        }
    }

    /// The broker breaker moved: every assigned partition is paused while
    /// it is open, and those whose queue has room resume once it closes.
    pub fn breaker<S: Shell<M, Lane = L>>(&mut self, state: CircuitState, shell: &mut S) {
        self.breaker = state;
        let tps: Vec<TopicPartition> = match state {
            CircuitState::Open => self.assigned.iter().cloned().collect(),
            CircuitState::Closed => self
                .assigned
                .iter()
                .filter(|tp| !self.queue_full(tp))
                .cloned()
                .collect(),
            CircuitState::HalfOpen => return,
        };
        if !tps.is_empty() {
            shell.set_paused(&tps, state == CircuitState::Open);
        }
    }

    /// The clock: commits the stored offsets when their time has come.
    pub fn tick<S: Shell<M, Lane = L>>(&mut self, now: Instant, shell: &mut S) {
        let Some(schedule) = &mut self.schedule else {
            return;
        };
        if now < schedule.next || self.draining {
            return;
        }
        schedule.next = now + schedule.every;
        shell.commit();
    }

    /// When the next commit is due, if commits are this machine's to make.
    pub fn next_commit(&self) -> Option<Instant> {
        self.schedule.as_ref().map(|s| s.next)
    }

    /// The daemon is stopping: nothing more is handed to workers or
    /// started, and what was held back is dropped (delivered again after
    /// the restart). The shell then waits for the workers and commits.
    pub fn drain(&mut self) {
        self.draining = true;
        self.parts.clear();
    }
}

#[cfg(test)]
#[path = "sim.rs"]
mod sim;

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
