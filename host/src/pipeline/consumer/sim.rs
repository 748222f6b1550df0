//! Deterministic simulation of the consumer side: the consumer machine and
//! the delivery cores of its partitions' workers, driven together.
//!
//! A seeded schedule drives four partitions through what a consumer lives
//! through: a client that fetches ahead into a local buffer and keeps a
//! partition's pause across a revocation (as librdkafka does), a loop that
//! takes every message ready before it looks at its commit timer, workers
//! with small queues that fill and drain, handler calls that succeed or end
//! in a dead letter, a broker that acknowledges late and out of order,
//! eager and cooperative rebalances, commits refused while a rebalance is in
//! progress, workers that end early, a broker breaker that opens and closes,
//! and a drain followed by a restart from the committed offsets. After every
//! step the invariants are checked; at the end every fault is lifted and
//! every partition must be committed to the end of its input.
//!
//! `SLUICE_CONSUMER_SIM_SEED=N` replays one seed; `SLUICE_CONSUMER_SIM_SEEDS=N`
//! sets how many the test runs.

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::*;
use crate::pipeline::core::{self, Answer, Core, Env, Failed, Item, Outcome};
use crate::policy::{Backoff, FailureKind, RetryPolicy};

const PARTITIONS: i32 = 4;
const TOPIC: &str = "in";
/// Each worker's queue.
const QUEUE: usize = 3;
/// How far the client fetches ahead of the loop, per partition.
const FETCH_AHEAD: usize = 6;
const COMMIT_EVERY: Duration = Duration::from_millis(100);
/// The longest the clock moves in one turn of the loop.
const MAX_TURN: Duration = Duration::from_millis(30);

fn tp(p: i32) -> TopicPartition {
    TopicPartition::new(TOPIC, p)
}

#[derive(Debug, Clone)]
struct Msg {
    offset: i64,
}

impl Item for Msg {
    fn offset(&self) -> i64 {
        self.offset
    }
    fn set_attempt(&mut self, _attempt: u32) {}
}

/// What the worker and the loop share about one worker: its gate.
#[derive(Debug)]
struct SimGate {
    /// Told to stop: revoked or draining.
    stopped: bool,
    /// Revoked: nothing more is stored.
    revoked: bool,
    /// The task ended: its queue is closed.
    ended: bool,
    /// The machine waits for room.
    waiting: bool,
    resume_at: i64,
}

struct SimLane {
    queue: Rc<RefCell<VecDeque<Msg>>>,
    gate: Rc<RefCell<SimGate>>,
}

impl Lane<Msg> for SimLane {
    fn send(&mut self, message: Msg) -> Sent<Msg> {
        let gate = self.gate.borrow();
        if gate.ended || gate.stopped {
            return Sent::Closed;
        }
        let mut queue = self.queue.borrow_mut();
        if queue.len() >= QUEUE {
            return Sent::Full(message);
        }
        queue.push_back(message);
        Sent::Queued
    }
    fn wait_for_room(&mut self, waiting: bool) {
        self.gate.borrow_mut().waiting = waiting;
    }
    fn resume_at(&self) -> i64 {
        self.gate.borrow().resume_at
    }
    fn is_stopped(&self) -> bool {
        self.gate.borrow().stopped
    }
}

/// One worker task: its queue, gate and delivery core.
struct Worker {
    p: i32,
    id: WorkerId,
    queue: Rc<RefCell<VecDeque<Msg>>>,
    gate: Rc<RefCell<SimGate>>,
    core: Core<Msg, i64>,
    /// Productions with the producer: offset, generation.
    producing: Vec<(i64, u32)>,
}

/// One partition of the input as the client and the group see it.
#[derive(Debug)]
struct Log {
    len: i64,
    committed: i64,
    /// The offset a commit would write: one past the last stored.
    stored: Option<i64>,
    /// The next offset the client fetches.
    position: i64,
    paused: bool,
    assigned: bool,
    /// Fetched and not yet handed to the loop.
    buffer: VecDeque<i64>,
    /// Offsets whose records (outputs or dead letter) were acknowledged.
    finished: BTreeSet<i64>,
}

impl Log {
    /// Drops what was fetched ahead and fetches from `offset` next.
    fn refetch(&mut self, offset: i64) {
        self.buffer.clear();
        self.position = offset;
    }
}

/// The client, the group and the broker, with what the checks need.
struct World {
    logs: Vec<Log>,
    workers: Vec<Worker>,
    now: Instant,
    /// Commits are refused (a rebalance is in progress).
    refuse_commits: bool,
    last_commit: Instant,
    /// The first guarantee broken inside a step, for the checks after it.
    broken: Option<String>,
    /// What each step did, newest last, for a failure's report.
    trace: VecDeque<String>,
}

impl World {
    fn log(&mut self, p: i32) -> &mut Log {
        &mut self.logs[usize::try_from(p).expect("partition")]
    }

    fn note(&mut self, what: String) {
        if self.trace.len() == 40 {
            self.trace.pop_front();
        }
        self.trace.push_back(what);
    }

    fn broke(&mut self, what: String) {
        self.broken.get_or_insert(what);
    }

    /// Commits the stored offsets of the partitions assigned, as the client
    /// does, unless a rebalance is in progress.
    fn commit(&mut self) {
        self.last_commit = self.now;
        if self.refuse_commits {
            self.note("commit refused: rebalance in progress".to_owned());
            return;
        }
        let mut broken = None;
        for (p, log) in self.logs.iter_mut().enumerate() {
            let Some(stored) = log.stored else { continue };
            if !log.assigned || stored <= log.committed {
                continue;
            }
            if let Some(o) = (log.committed..stored).find(|o| !log.finished.contains(o)) {
                broken = Some(format!(
                    "partition {p}: commit of {stored} while offset {o} is not finished"
                ));
            }
            log.committed = stored;
        }
        if let Some(what) = broken {
            self.broke(what);
        }
    }
}

/// The shell the machine carries its decisions out on.
struct SimShell<'a> {
    world: &'a mut World,
    started: Vec<Worker>,
}

impl Shell<Msg> for SimShell<'_> {
    type Lane = SimLane;

    fn start_worker(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        worker: WorkerId,
    ) -> Option<SimLane> {
        let queue = Rc::new(RefCell::new(VecDeque::new()));
        let gate = Rc::new(RefCell::new(SimGate {
            stopped: false,
            revoked: false,
            ended: false,
            waiting: false,
            resume_at: offset,
        }));
        self.started.push(Worker {
            p: tp.partition,
            id: worker,
            queue: queue.clone(),
            gate: gate.clone(),
            core: Core::new(8),
            producing: Vec::new(),
        });
        self.world.note(format!(
            "p{} worker {worker} started at {offset}",
            tp.partition
        ));
        Some(SimLane { queue, gate })
    }
    fn set_paused(&mut self, tps: &[TopicPartition], paused: bool) {
        for tp in tps {
            let log = self.world.log(tp.partition);
            if paused && !log.paused {
                // Pausing drops what was fetched ahead of the loop.
                let from = log.buffer.front().copied().unwrap_or(log.position);
                log.refetch(from);
            }
            log.paused = paused;
        }
        self.world.note(format!(
            "{} {tps:?}",
            if paused { "pause" } else { "resume" }
        ));
    }
    fn seek(&mut self, tp: &TopicPartition, offset: i64) {
        self.world.log(tp.partition).refetch(offset);
        self.world.note(format!("p{} seek {offset}", tp.partition));
    }
    fn commit(&mut self) {
        self.world.commit();
    }
    fn forget(&mut self, _tp: &TopicPartition) {}
    fn worker_failed(&mut self, tp: &TopicPartition, offset: i64, _failure: &WorkerFailure) {
        self.world
            .note(format!("p{} restarts at {offset}", tp.partition));
    }
}

/// The handler side: no breaker, a dead-letter topic, no retries.
struct SimEnv {
    policy: RetryPolicy,
}

impl Env<Msg, i64> for SimEnv {
    fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
    fn has_dead_letter_topic(&self) -> bool {
        true
    }
    fn dead_letter(&mut self, message: &Msg, _attempt: u32, _failed: &Failed) -> i64 {
        message.offset
    }
    fn report_handler(&mut self, _ok: Option<bool>) -> bool {
        true
    }
    fn handler_probe(&self) -> bool {
        false
    }
    fn jitter(&mut self) -> f64 {
        1.0
    }
}

type Sim = Machine<Msg, SimLane>;

/// One run of the simulation.
struct Run {
    rng: fastrand::Rng,
    world: World,
    machine: Sim,
    env: SimEnv,
    breaker: CircuitState,
    /// Assignment changes the callbacks saw and the loop has not.
    group: Vec<(bool, Vec<TopicPartition>)>,
}

impl Run {
    fn new(seed: u64) -> Run {
        let mut rng = fastrand::Rng::with_seed(seed);
        let now = Instant::now();
        let logs = (0..PARTITIONS)
            .map(|_| Log {
                len: rng.i64(20..120),
                committed: 0,
                stored: None,
                position: 0,
                paused: false,
                assigned: false,
                buffer: VecDeque::new(),
                finished: BTreeSet::new(),
            })
            .collect();
        Run {
            rng,
            world: World {
                logs,
                workers: Vec::new(),
                now,
                refuse_commits: false,
                last_commit: now,
                broken: None,
                trace: VecDeque::new(),
            },
            machine: Machine::new(Some(COMMIT_EVERY), now),
            env: SimEnv {
                policy: RetryPolicy {
                    retry_on: Vec::new(),
                    max_retry_attempts: 0,
                    backoff: Backoff {
                        base: Duration::from_millis(1),
                        max: Duration::from_millis(1),
                    },
                },
            },
            breaker: CircuitState::Closed,
            group: Vec::new(),
        }
    }

    /// Runs `f` with the machine and a shell over the world.
    fn with_shell<T>(&mut self, f: impl FnOnce(&mut Sim, &mut SimShell<'_>) -> T) -> T {
        let mut shell = SimShell {
            world: &mut self.world,
            started: Vec::new(),
        };
        let out = f(&mut self.machine, &mut shell);
        let started = shell.started;
        self.world.workers.extend(started);
        out
    }

    /// The loop takes the assignment changes, before anything else.
    fn sync(&mut self) {
        for (assigned, tps) in std::mem::take(&mut self.group) {
            self.with_shell(|m, s| {
                if assigned {
                    m.assign(&tps, s);
                } else {
                    m.revoke(&tps, s);
                }
            });
        }
    }

    /// The rebalance callbacks: a revocation stops the partitions' workers
    /// from storing and commits; an assignment fetches from the committed
    /// offset, keeping whatever pause the client had for the partition.
    fn revoke(&mut self, ps: &[i32]) {
        if ps.is_empty() {
            return;
        }
        for w in &mut self.world.workers {
            if ps.contains(&w.p) {
                let mut gate = w.gate.borrow_mut();
                gate.revoked = true;
                gate.stopped = true;
                drop(gate);
                w.core.revoke();
            }
        }
        self.world.commit();
        for &p in ps {
            let log = self.world.log(p);
            log.assigned = false;
            log.buffer.clear();
        }
        self.world.note(format!("revoked {ps:?}"));
        self.group
            .push((false, ps.iter().map(|&p| tp(p)).collect()));
    }

    fn assign(&mut self, ps: &[i32]) {
        if ps.is_empty() {
            return;
        }
        for &p in ps {
            let log = self.world.log(p);
            log.assigned = true;
            log.stored = None;
            let committed = log.committed;
            log.refetch(committed);
        }
        self.world.note(format!("assigned {ps:?}"));
        self.group.push((true, ps.iter().map(|&p| tp(p)).collect()));
    }

    fn assigned(&self) -> Vec<i32> {
        (0..PARTITIONS)
            .filter(|&p| self.world.logs[p as usize].assigned)
            .collect()
    }

    /// The client fetches ahead for every partition it may fetch.
    fn fetch(&mut self) {
        for log in &mut self.world.logs {
            while log.assigned
                && !log.paused
                && log.position < log.len
                && log.buffer.len() < FETCH_AHEAD
            {
                log.buffer.push_back(log.position);
                log.position += 1;
            }
        }
    }

    /// One turn of the consumer loop. The commit timer is looked at only
    /// when no message is ready: a shell may look at its branches in any
    /// order, and the machine must keep the commit schedule however busy
    /// the fetch side is.
    fn turn(&mut self) {
        self.fetch();
        let ready: Vec<i32> = (0..PARTITIONS)
            .filter(|&p| !self.world.logs[p as usize].buffer.is_empty())
            .collect();
        if ready.is_empty() {
            if self
                .machine
                .next_commit()
                .is_some_and(|at| self.world.now >= at)
            {
                let now = self.world.now;
                self.with_shell(|m, s| m.tick(now, s));
            }
            return;
        }
        let burst = self.rng.usize(1..12);
        for _ in 0..burst {
            self.sync();
            let p = ready[self.rng.usize(..ready.len())];
            let Some(offset) = self.world.log(p).buffer.pop_front() else {
                continue;
            };
            self.world.note(format!("p{p} fetched {offset}"));
            let now = self.world.now;
            self.with_shell(|m, s| m.fetched(&tp(p), offset, now, s, |_| Msg { offset }));
        }
    }

    /// A worker takes messages, calls the handler, and carries out its
    /// core's actions.
    fn work(&mut self, i: usize) {
        let now = self.world.now;
        let w = &mut self.world.workers[i];
        if w.gate.borrow().ended {
            return;
        }
        let taken: Vec<Msg> = {
            let mut queue = w.queue.borrow_mut();
            let n = queue.len().min(2);
            queue.drain(..n).collect()
        };
        let stopped = w.gate.borrow().stopped;
        for m in taken {
            if !stopped {
                w.core.fetched(m);
            }
        }
        let room = {
            let gate = w.gate.borrow();
            gate.waiting && !gate.stopped && w.queue.borrow().len() <= QUEUE / 2
        };
        let call = w.core.take_call(2);
        if !call.is_empty() {
            let outcomes = call
                .into_iter()
                .map(|m| {
                    let outcome = if self.rng.u8(..10) == 0 {
                        Outcome::Failed(Failed {
                            kind: FailureKind::Permanent,
                            reason: "no".to_owned(),
                        })
                    } else {
                        Outcome::Outputs(vec![m.offset])
                    };
                    (m, outcome)
                })
                .collect();
            w.core.called(now, outcomes, Vec::new(), &mut self.env);
        }
        let (p, id) = (w.p, w.id);
        self.actions(i);
        if room {
            self.world.note(format!("p{p} worker {id} has room"));
            self.sync();
            self.with_shell(|m, s| m.room(&tp(p), s));
        }
    }

    /// The broker acknowledges one of a worker's productions.
    fn ack(&mut self, i: usize) {
        let now = self.world.now;
        let w = &mut self.world.workers[i];
        if w.producing.is_empty() || w.gate.borrow().ended {
            return;
        }
        let (offset, generation) = w.producing.remove(self.rng.usize(..w.producing.len()));
        if !w.gate.borrow().revoked {
            let p = w.p;
            self.world.log(p).finished.insert(offset);
        }
        let w = &mut self.world.workers[i];
        w.core
            .answered(now, offset, generation, Answer::Acked, &mut self.env);
        self.actions(i);
    }

    /// Carries out a worker core's actions: productions and stores.
    fn actions(&mut self, i: usize) {
        let w = &mut self.world.workers[i];
        let actions: Vec<core::Action> = w.core.actions().collect();
        let (p, id) = (w.p, w.id);
        for action in actions {
            match action {
                core::Action::Produce { offset, generation } => {
                    self.world.workers[i].producing.push((offset, generation));
                }
                core::Action::Store { offset, .. } => self.store(i, p, id, offset),
                core::Action::Note(_) => {}
            }
        }
    }

    /// A worker stores an offset through its gate: nothing once revoked,
    /// and the client refuses a partition not assigned.
    fn store(&mut self, i: usize, p: i32, id: WorkerId, offset: i64) {
        let gate = self.world.workers[i].gate.clone();
        if gate.borrow().revoked {
            return;
        }
        gate.borrow_mut().resume_at = offset + 1;
        let current = self.machine.worker(&tp(p));
        let log = self.world.log(p);
        if !log.assigned {
            return;
        }
        let finished = log.finished.contains(&offset);
        log.stored = Some(offset + 1);
        if current.is_some_and(|current| current != id) {
            self.world.broke(format!(
                "partition {p}: worker {id} stored {offset} while worker {current:?} serves it"
            ));
        }
        if !finished {
            self.world.broke(format!(
                "partition {p}: offset {offset} stored before its records were acknowledged"
            ));
        }
        self.world.note(format!("p{p} worker {id} stored {offset}"));
    }

    /// A worker ends early, or one told to stop ends as told.
    fn end_worker(&mut self, i: usize) {
        let w = &self.world.workers[i];
        if w.gate.borrow().ended {
            return;
        }
        let stopped = w.gate.borrow().stopped;
        w.gate.borrow_mut().ended = true;
        let (p, id) = (w.p, w.id);
        let end = if stopped {
            WorkerEnd::Done
        } else {
            WorkerEnd::Failed(WorkerFailure::Panicked("a handler bug".to_owned()))
        };
        self.world.note(format!("p{p} worker {id} ended: {end:?}"));
        self.sync();
        self.with_shell(|m, s| m.worker_ended(&tp(p), id, &end, s));
    }

    fn set_breaker(&mut self, state: CircuitState) {
        self.breaker = state;
        self.world.note(format!("broker breaker {state:?}"));
        self.sync();
        self.with_shell(|m, s| m.breaker(state, s));
    }

    /// The daemon stops: the machine drains, the workers finish what the
    /// producer has, the offsets are committed; then a new process starts
    /// with nothing paused and the same partitions assigned.
    fn restart(&mut self) {
        self.world.note("drain and restart".to_owned());
        self.sync();
        self.machine.drain();
        for w in &mut self.world.workers {
            w.gate.borrow_mut().stopped = true;
            w.core.drain();
        }
        for i in 0..self.world.workers.len() {
            if self.world.workers[i].gate.borrow().ended {
                continue;
            }
            self.actions(i);
            while !self.world.workers[i].producing.is_empty() {
                self.ack(i);
            }
        }
        self.world.refuse_commits = false;
        self.world.commit();
        self.world.workers.clear();
        let held = self.assigned();
        for log in &mut self.world.logs {
            log.assigned = false;
            log.paused = false;
            log.buffer.clear();
        }
        self.machine = Machine::new(Some(COMMIT_EVERY), self.world.now);
        self.world.last_commit = self.world.now;
        self.breaker = CircuitState::Closed;
        self.group.clear();
        self.assign(&held);
    }

    /// The invariants, checked after every step.
    fn check(&self) -> Result<(), String> {
        if let Some(what) = &self.world.broken {
            return Err(what.clone());
        }
        for p in 0..PARTITIONS {
            let log = &self.world.logs[p as usize];
            if !log.assigned {
                continue;
            }
            let reason = self.machine.paused(&tp(p));
            if log.paused != reason.is_some() {
                return Err(format!(
                    "partition {p}: paused in the client is {}, the machine's reason is \
                     {reason:?}",
                    log.paused
                ));
            }
            let held = self.machine.held(&tp(p));
            if held > FETCH_AHEAD + 1 {
                return Err(format!("partition {p}: {held} messages held back"));
            }
        }
        let since = self.world.now.duration_since(self.world.last_commit);
        if since > COMMIT_EVERY + MAX_TURN {
            return Err(format!(
                "no commit for {since:?}, with commits due every {COMMIT_EVERY:?}"
            ));
        }
        Ok(())
    }

    /// One random step.
    fn step(&mut self) {
        let live: Vec<usize> = (0..self.world.workers.len())
            .filter(|&i| !self.world.workers[i].gate.borrow().ended)
            .collect();
        match self.rng.u32(..100) {
            0..30 => {
                self.world.now += Duration::from_millis(self.rng.u64(0..=30));
                self.turn();
            }
            30..60 if !live.is_empty() => {
                let i = live[self.rng.usize(..live.len())];
                self.work(i);
            }
            60..85 if !live.is_empty() => {
                let i = live[self.rng.usize(..live.len())];
                self.ack(i);
            }
            85..88 => {
                // Eager: everything is revoked, then a new assignment.
                let held = self.assigned();
                self.revoke(&held);
                let next: Vec<i32> = (0..PARTITIONS).filter(|_| self.rng.bool()).collect();
                self.assign(&next);
            }
            88..91 => {
                // Cooperative: some partitions move, the rest stay.
                let p = self.rng.i32(0..PARTITIONS);
                if self.world.logs[p as usize].assigned {
                    self.revoke(&[p]);
                } else {
                    self.assign(&[p]);
                }
            }
            91..93 => self.world.refuse_commits = !self.world.refuse_commits,
            93..95 if !live.is_empty() => {
                let i = live[self.rng.usize(..live.len())];
                self.end_worker(i);
            }
            95..98 => {
                let next = match self.breaker {
                    CircuitState::Closed => CircuitState::Open,
                    CircuitState::Open => CircuitState::HalfOpen,
                    CircuitState::HalfOpen if self.rng.bool() => CircuitState::Open,
                    CircuitState::HalfOpen => CircuitState::Closed,
                };
                self.set_breaker(next);
            }
            98 if self.rng.u8(..20) == 0 => self.restart(),
            _ => {}
        }
        self.sync();
    }

    fn done(&self) -> bool {
        self.world.logs.iter().all(|l| l.committed == l.len)
    }

    fn fail(&self, seed: u64, step: usize, e: &str) -> ! {
        let trace: Vec<&String> = self.world.trace.iter().collect();
        panic!(
            "consumer simulation seed {seed} failed at step {step}: {e}\nreplay with \
             SLUICE_CONSUMER_SIM_SEED={seed} cargo test -p sluice --lib consumer_simulation\n\
             last steps, newest last: {trace:#?}"
        );
    }
}

/// Runs one seed: a faulty stretch, then faults lifted until every
/// partition is committed to its end.
fn run(seed: u64) {
    let mut run = Run::new(seed);
    run.assign(&(0..PARTITIONS).collect::<Vec<_>>());
    run.sync();
    let steps = 3_000;
    for step in 0..steps {
        run.step();
        if let Err(e) = run.check() {
            run.fail(seed, step, &e);
        }
    }
    // Every fault lifted: the breaker closes, commits go through, every
    // partition is assigned here.
    run.world.refuse_commits = false;
    if run.breaker != CircuitState::Closed {
        run.set_breaker(CircuitState::Closed);
    }
    let missing: Vec<i32> = (0..PARTITIONS)
        .filter(|&p| !run.world.logs[p as usize].assigned)
        .collect();
    run.assign(&missing);
    run.sync();
    let mut step = steps;
    while !run.done() {
        step += 1;
        if step > steps + 100_000 {
            let logs: Vec<String> = run
                .world
                .logs
                .iter()
                .map(|l| {
                    format!(
                        "committed {} of {}, position {}, paused {}",
                        l.committed, l.len, l.position, l.paused
                    )
                })
                .collect();
            run.fail(
                seed,
                step,
                &format!("the input was not all committed: {logs:?}"),
            );
        }
        match run.rng.u8(..3) {
            0 => {
                run.world.now += Duration::from_millis(run.rng.u64(0..=30));
                run.turn();
            }
            1 | 2 => {
                let live: Vec<usize> = (0..run.world.workers.len())
                    .filter(|&i| !run.world.workers[i].gate.borrow().ended)
                    .collect();
                if let Some(&i) = live.get(run.rng.usize(..live.len().max(1))) {
                    if run.rng.bool() {
                        run.work(i);
                    } else {
                        run.ack(i);
                    }
                }
            }
            _ => unreachable!(),
        }
        run.sync();
        if let Err(e) = run.check() {
            run.fail(seed, step, &e);
        }
    }
    for (p, log) in run.world.logs.iter().enumerate() {
        if let Some(o) = (0..log.len).find(|o| !log.finished.contains(o)) {
            run.fail(
                seed,
                step,
                &format!("partition {p}: offset {o} committed, never finished"),
            );
        }
    }
}

/// Seeds that turned red when a bug was put back by hand; they run on every
/// test run beside the random ones, whatever `SLUICE_CONSUMER_SIM_SEEDS` says.
/// - 0: an assigned partition not set to fetch (a partition paused for a
///   full queue, lost and given back, was never fetched again): red at
///   step 83, every one of the first 50 seeds red.
/// - 0: due commits not made on the fetch path (commits fell behind while
///   the loop always had a message ready): red at step 872, 49 of 50.
/// - 3: a worker's end not matched to the worker now serving the
///   partition (an earlier worker's end restarted the new one, whose
///   predecessor then stored over it): 5 of the first 20 seeds red.
const CORPUS: &[u64] = &[0, 3];

#[test]
fn consumer_simulation() {
    if let Some(seed) = std::env::var("SLUICE_CONSUMER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run(seed);
        return;
    }
    let seeds: u64 = std::env::var("SLUICE_CONSUMER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    for &seed in CORPUS {
        run(seed);
    }
    for seed in 0..seeds {
        run(seed);
    }
}
