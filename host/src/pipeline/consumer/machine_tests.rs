//! The consumer machine's decisions, one at a time, against a shell that
//! records what it is asked.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;

/// A worker's queue of offsets, with room for `capacity`.
#[derive(Default)]
struct Queue {
    items: Vec<i64>,
    capacity: usize,
    waiting: bool,
    stopped: bool,
    resume_at: i64,
}

#[derive(Clone)]
struct TestLane(Rc<RefCell<Queue>>);

impl Lane<i64> for TestLane {
    fn send(&mut self, message: i64) -> Sent<i64> {
        let mut q = self.0.borrow_mut();
        if q.stopped {
            Sent::Closed
        } else if q.items.len() >= q.capacity {
            Sent::Full(message)
        } else {
            q.items.push(message);
            Sent::Queued
        }
    }
    fn wait_for_room(&mut self, waiting: bool) {
        self.0.borrow_mut().waiting = waiting;
    }
    fn resume_at(&self) -> i64 {
        self.0.borrow().resume_at
    }
    fn is_stopped(&self) -> bool {
        self.0.borrow().stopped
    }
}

/// Records every action; topics named `unrouted` have no route.
#[derive(Default)]
struct Recorder {
    actions: Vec<String>,
    lanes: Vec<(TopicPartition, WorkerId, TestLane)>,
    capacity: usize,
}

impl Recorder {
    fn new(capacity: usize) -> Recorder {
        Recorder {
            capacity,
            ..Recorder::default()
        }
    }
    fn lane(&self, p: i32) -> TestLane {
        self.lanes
            .iter()
            .rev()
            .find(|(tp, _, _)| tp.partition == p)
            .map(|(_, _, lane)| lane.clone())
            .expect("a worker for the partition")
    }
    fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.actions)
    }
}

impl Shell<i64> for Recorder {
    type Lane = TestLane;
    fn start_worker(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        worker: WorkerId,
    ) -> Option<TestLane> {
        if tp.topic == "unrouted" {
            return None;
        }
        self.actions
            .push(format!("start {} at {offset}", tp.partition));
        let lane = TestLane(Rc::new(RefCell::new(Queue {
            capacity: self.capacity,
            resume_at: offset,
            ..Queue::default()
        })));
        self.lanes.push((tp.clone(), worker, lane.clone()));
        Some(lane)
    }
    fn set_paused(&mut self, tps: &[TopicPartition], paused: bool) {
        let ps: Vec<i32> = tps.iter().map(|tp| tp.partition).collect();
        let verb = if paused { "pause" } else { "resume" };
        self.actions.push(format!("{verb} {ps:?}"));
    }
    fn seek(&mut self, tp: &TopicPartition, offset: i64) {
        self.actions
            .push(format!("seek {} to {offset}", tp.partition));
    }
    fn commit(&mut self) {
        self.actions.push("commit".to_owned());
    }
    fn forget(&mut self, tp: &TopicPartition) {
        self.actions.push(format!("forget {}", tp.partition));
    }
    fn worker_failed(&mut self, tp: &TopicPartition, offset: i64, _failure: &WorkerFailure) {
        self.actions
            .push(format!("failed {} at {offset}", tp.partition));
    }
}

fn tp(p: i32) -> TopicPartition {
    TopicPartition::new("in", p)
}

fn machine() -> (Machine<i64, TestLane>, Instant) {
    let now = Instant::now();
    (Machine::new(Some(Duration::from_secs(1)), now), now)
}

fn fetch(m: &mut Machine<i64, TestLane>, shell: &mut Recorder, p: i32, offset: i64) {
    m.fetched(&tp(p), offset, Instant::now(), shell, |_| offset);
}

#[test]
fn a_full_queue_holds_messages_in_order_and_pauses_until_there_is_room() {
    let (mut m, _) = machine();
    let mut shell = Recorder::new(2);
    m.assign(&[tp(0)], &mut shell);
    for offset in 0..5 {
        fetch(&mut m, &mut shell, 0, offset);
    }
    assert_eq!(shell.take(), ["resume [0]", "start 0 at 0", "pause [0]"]);
    assert_eq!(m.paused(&tp(0)), Some(Paused::QueueFull));
    let lane = shell.lane(0);
    assert_eq!(lane.0.borrow().items, [0, 1]);
    assert!(lane.0.borrow().waiting);

    lane.0.borrow_mut().items.clear();
    m.room(&tp(0), &mut shell);
    assert_eq!(lane.0.borrow().items, [2, 3], "still one held back");
    assert!(
        shell.take().is_empty(),
        "not resumed while a message is held"
    );

    lane.0.borrow_mut().items.clear();
    m.room(&tp(0), &mut shell);
    assert_eq!(lane.0.borrow().items, [4]);
    assert_eq!(shell.take(), ["resume [0]"]);
    assert_eq!(m.paused(&tp(0)), None);
    assert!(!lane.0.borrow().waiting);
}

#[test]
fn an_assigned_partition_is_set_to_fetch_or_held_while_the_breaker_is_open() {
    let (mut m, _) = machine();
    let mut shell = Recorder::new(4);
    m.assign(&[tp(0), tp(1)], &mut shell);
    assert_eq!(shell.take(), ["resume [0, 1]"]);
    m.breaker(CircuitState::Open, &mut shell);
    assert_eq!(shell.take(), ["pause [0, 1]"]);
    m.assign(&[tp(2)], &mut shell);
    assert_eq!(shell.take(), ["pause [2]"]);
    assert_eq!(m.paused(&tp(2)), Some(Paused::BrokerBreaker));
    m.breaker(CircuitState::HalfOpen, &mut shell);
    assert!(shell.take().is_empty());
    assert_eq!(m.paused(&tp(2)), Some(Paused::BrokerBreaker));
}

#[test]
fn closing_the_breaker_resumes_every_partition_but_those_with_a_full_queue() {
    let (mut m, _) = machine();
    let mut shell = Recorder::new(1);
    m.assign(&[tp(0), tp(1)], &mut shell);
    fetch(&mut m, &mut shell, 0, 0);
    fetch(&mut m, &mut shell, 0, 1);
    m.breaker(CircuitState::Open, &mut shell);
    shell.take();
    m.breaker(CircuitState::Closed, &mut shell);
    assert_eq!(shell.take(), ["resume [1]"]);
    assert_eq!(m.paused(&tp(0)), Some(Paused::QueueFull));
}

#[test]
fn room_while_the_breaker_is_open_moves_messages_in_but_does_not_resume() {
    let (mut m, _) = machine();
    let mut shell = Recorder::new(1);
    m.assign(&[tp(0)], &mut shell);
    fetch(&mut m, &mut shell, 0, 0);
    fetch(&mut m, &mut shell, 0, 1);
    m.breaker(CircuitState::Open, &mut shell);
    shell.take();
    let lane = shell.lane(0);
    lane.0.borrow_mut().items.clear();
    m.room(&tp(0), &mut shell);
    assert_eq!(lane.0.borrow().items, [1]);
    assert!(shell.take().is_empty());
    assert_eq!(m.paused(&tp(0)), Some(Paused::BrokerBreaker));
}

#[test]
fn a_worker_that_ends_early_is_replaced_from_its_last_stored_offset() {
    let (mut m, _) = machine();
    let mut shell = Recorder::new(1);
    m.assign(&[tp(0)], &mut shell);
    fetch(&mut m, &mut shell, 0, 10);
    fetch(&mut m, &mut shell, 0, 11);
    let lane = shell.lane(0);
    lane.0.borrow_mut().resume_at = 10;
    let worker = m.worker(&tp(0)).expect("a worker");
    shell.take();
    m.worker_ended(
        &tp(0),
        worker,
        &WorkerEnd::Failed(WorkerFailure::Panicked("gone".to_owned())),
        &mut shell,
    );
    assert_eq!(
        shell.take(),
        ["forget 0", "failed 0 at 10", "seek 0 to 10", "resume [0]"],
        "the held message is dropped and fetched again, the pause lifted"
    );
    assert_eq!(m.paused(&tp(0)), None);
    fetch(&mut m, &mut shell, 0, 10);
    assert_eq!(shell.take(), ["start 0 at 10"]);
    assert_ne!(m.worker(&tp(0)), Some(worker));
}

#[test]
fn the_end_of_an_earlier_or_a_stopped_worker_changes_nothing() {
    let (mut m, _) = machine();
    let mut shell = Recorder::new(4);
    m.assign(&[tp(0)], &mut shell);
    fetch(&mut m, &mut shell, 0, 0);
    let first = m.worker(&tp(0)).expect("a worker");
    m.worker_ended(
        &tp(0),
        first,
        &WorkerEnd::Failed(WorkerFailure::Panicked("x".to_owned())),
        &mut shell,
    );
    fetch(&mut m, &mut shell, 0, 0);
    shell.take();
    m.worker_ended(
        &tp(0),
        first,
        &WorkerEnd::Failed(WorkerFailure::Panicked("late".to_owned())),
        &mut shell,
    );
    assert!(shell.take().is_empty(), "an earlier worker's end is stale");
    let second = m.worker(&tp(0)).expect("a worker");
    shell.lane(0).0.borrow_mut().stopped = true;
    m.worker_ended(&tp(0), second, &WorkerEnd::Done, &mut shell);
    assert!(
        shell.take().is_empty(),
        "a worker told to stop ends as told"
    );
}

#[test]
fn a_worker_that_ends_done_without_being_told_to_is_replaced() {
    let (mut m, _) = machine();
    let mut shell = Recorder::new(4);
    m.assign(&[tp(0)], &mut shell);
    fetch(&mut m, &mut shell, 0, 3);
    let worker = m.worker(&tp(0)).expect("a worker");
    shell.take();
    m.worker_ended(&tp(0), worker, &WorkerEnd::Done, &mut shell);
    assert_eq!(shell.take(), ["forget 0", "failed 0 at 3", "seek 0 to 3"]);
}

#[test]
fn commits_keep_their_schedule() {
    let (mut m, start) = machine();
    let mut shell = Recorder::new(4);
    m.tick(start + Duration::from_millis(999), &mut shell);
    assert!(shell.take().is_empty());
    m.tick(start + Duration::from_millis(1000), &mut shell);
    m.tick(start + Duration::from_millis(1500), &mut shell);
    assert_eq!(shell.take(), ["commit"]);
    m.tick(start + Duration::from_millis(2000), &mut shell);
    assert_eq!(shell.take(), ["commit"]);
    assert_eq!(m.next_commit(), Some(start + Duration::from_millis(3000)));
}

#[test]
fn a_busy_fetch_side_commits_when_due() {
    let (mut m, start) = machine();
    let mut shell = Recorder::new(100);
    m.assign(&[tp(0)], &mut shell);
    shell.take();
    for (offset, ms) in [(0, 400), (1, 999), (2, 1001), (3, 1500), (4, 2002)] {
        m.fetched(
            &tp(0),
            offset,
            start + Duration::from_millis(ms),
            &mut shell,
            |_| offset,
        );
    }
    assert_eq!(shell.take(), ["start 0 at 0", "commit", "commit"]);
}

#[test]
fn with_auto_commit_the_machine_never_commits() {
    let now = Instant::now();
    let mut m: Machine<i64, TestLane> = Machine::new(None, now);
    let mut shell = Recorder::new(4);
    m.tick(now + Duration::from_secs(3600), &mut shell);
    assert!(shell.take().is_empty());
    assert_eq!(m.next_commit(), None);
}

#[test]
fn an_undecodable_record_goes_to_the_worker_and_the_fetch_moves_past_it() {
    let (mut m, _) = machine();
    let mut shell = Recorder::new(4);
    m.assign(&[tp(0)], &mut shell);
    shell.take();
    m.skip(&tp(0), 7, Instant::now(), &mut shell, |_| 7);
    assert_eq!(shell.take(), ["start 0 at 7", "seek 0 to 8"]);
    assert_eq!(shell.lane(0).0.borrow().items, [7]);
    let unrouted = TopicPartition::new("unrouted", 0);
    m.skip(&unrouted, 7, Instant::now(), &mut shell, |_| 7);
    assert!(
        shell.take().is_empty(),
        "no route: nothing moves past the record"
    );
}

#[test]
fn a_revoked_partition_is_forgotten_with_what_was_held_for_it() {
    let (mut m, _) = machine();
    let mut shell = Recorder::new(1);
    m.assign(&[tp(0)], &mut shell);
    fetch(&mut m, &mut shell, 0, 0);
    fetch(&mut m, &mut shell, 0, 1);
    shell.take();
    m.revoke(&[tp(0)], &mut shell);
    assert_eq!(shell.take(), ["forget 0"]);
    assert_eq!(m.paused(&tp(0)), None);
    assert_eq!(m.held(&tp(0)), 0);
    m.assign(&[tp(0)], &mut shell);
    assert_eq!(shell.take(), ["resume [0]"], "given back, it fetches again");
}

#[test]
fn after_the_drain_nothing_is_handed_over_started_or_committed() {
    let (mut m, start) = machine();
    let mut shell = Recorder::new(4);
    m.assign(&[tp(0)], &mut shell);
    m.drain();
    shell.take();
    fetch(&mut m, &mut shell, 0, 0);
    m.tick(start + Duration::from_secs(10), &mut shell);
    assert!(shell.take().is_empty());
}

#[test]
fn a_message_of_a_topic_without_a_route_starts_nothing() {
    let (mut m, _) = machine();
    let mut shell = Recorder::new(4);
    let unrouted = TopicPartition::new("unrouted", 0);
    m.fetched(&unrouted, 0, Instant::now(), &mut shell, |_| 0);
    assert!(shell.take().is_empty());
    assert_eq!(m.worker(&unrouted), None);
}
