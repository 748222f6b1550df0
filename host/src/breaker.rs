//! Circuit breakers.
//!
//! One breaker guards the broker (records that could not be produced), one
//! per route guards its handler (messages that kept failing with retryable
//! errors or timeouts). Both follow the event bus's states: `closed` until
//! `threshold` consecutive failures, then `open` for the reset timeout, then
//! `half_open`, where exactly one probe runs: its success closes the circuit,
//! its failure opens it again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// A breaker's state, named as the event bus names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Normal operation.
    Closed,
    /// Testing recovery with one probe.
    HalfOpen,
    /// Blocking: waiting for the reset timeout.
    Open,
}

impl CircuitState {
    /// Every state, in gauge order.
    pub const ALL: [CircuitState; 3] = [
        CircuitState::Closed,
        CircuitState::HalfOpen,
        CircuitState::Open,
    ];

    /// `closed`, `half_open` or `open`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }

    /// The gauge value: 0 closed, 1 half_open, 2 open.
    pub fn gauge(self) -> u8 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

impl std::fmt::Display for CircuitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A breaker seen from outside: its state and its transitions, and nothing
/// that moves it.
#[derive(Clone)]
pub struct BreakerView(Arc<Breaker>);

impl BreakerView {
    /// The current state.
    pub fn state(&self) -> CircuitState {
        self.0.state()
    }

    /// How many times the breaker entered `state`.
    pub fn transitions_to(&self, state: CircuitState) -> u64 {
        self.0.transitions_to(state)
    }

    /// A receiver that sees every transition.
    pub fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.0.subscribe()
    }
}

/// A circuit breaker. Cheap to consult; waiting for it is async.
pub struct Breaker {
    /// What it guards, for logs: `broker` or `route <topic>`.
    name: String,
    inner: Mutex<Inner>,
    /// Publishes every transition (and wakes waiters when a probe is
    /// released).
    state: watch::Sender<CircuitState>,
    /// Transitions into each state, indexed by [`CircuitState::gauge`].
    transitions: [AtomicU64; 3],
    /// Closed with no failure counted: a success then changes nothing, so
    /// reporting one (once per message) takes no lock.
    quiet: AtomicBool,
}

struct Inner {
    /// Consecutive failures that open it; 0 never opens.
    threshold: u32,
    reset_timeout: Duration,
    state: CircuitState,
    failures: u32,
    opened_at: Instant,
    /// Whether the half-open probe has been handed out.
    probing: bool,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures
    /// (never, for 0) and probes after `reset_timeout`.
    pub fn new(name: impl Into<String>, threshold: u32, reset_timeout: Duration) -> Arc<Breaker> {
        Arc::new(Breaker {
            name: name.into(),
            inner: Mutex::new(Inner {
                threshold,
                reset_timeout,
                state: CircuitState::Closed,
                failures: 0,
                opened_at: Instant::now(),
                probing: false,
            }),
            state: watch::Sender::new(CircuitState::Closed),
            transitions: Default::default(),
            quiet: AtomicBool::new(true),
        })
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        self.lock().state
    }

    /// A receiver that sees every transition.
    pub fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.state.subscribe()
    }

    /// How many times the breaker entered `state`.
    pub fn transitions_to(&self, state: CircuitState) -> u64 {
        self.transitions[usize::from(state.gauge())].load(Ordering::Relaxed)
    }

    /// A handle that can only look at the breaker.
    pub fn view(self: &Arc<Self>) -> BreakerView {
        BreakerView(self.clone())
    }

    /// The consecutive failures counted so far (0 unless closed).
    pub fn failures(&self) -> u32 {
        self.lock().failures
    }

    /// Changes the threshold and the reset timeout (a config reload); the
    /// state is kept.
    pub fn set_limits(&self, threshold: u32, reset_timeout: Duration) {
        let mut inner = self.lock();
        inner.threshold = threshold;
        inner.reset_timeout = reset_timeout;
    }

    /// Closes the breaker now (the operator's manual reset).
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.failures = 0;
        inner.probing = false;
        self.set(&mut inner, CircuitState::Closed, "manual reset");
        self.settle(&inner);
    }

    /// A plain admission, for work admitted together with an earlier one.
    pub fn admission(self: &Arc<Self>) -> Admission {
        Admission {
            breaker: self.clone(),
            probe: false,
        }
    }

    /// Waits until work may proceed: at once while closed; while open, until
    /// the reset timeout has passed and this caller gets the half-open probe.
    pub async fn admit(self: &Arc<Self>) -> Admission {
        self.wait(true).await
    }

    /// Waits until the breaker is closed, never taking the probe: for work
    /// that cannot report its own outcome promptly.
    pub async fn closed(self: &Arc<Self>) -> Admission {
        self.wait(false).await
    }

    async fn wait(self: &Arc<Self>, may_probe: bool) -> Admission {
        let mut changes = self.state.subscribe();
        loop {
            changes.borrow_and_update();
            let due = {
                let mut inner = self.lock();
                if inner.state == CircuitState::Open
                    && Instant::now() >= inner.opened_at + inner.reset_timeout
                {
                    self.set(&mut inner, CircuitState::HalfOpen, "reset timeout elapsed");
                }
                match inner.state {
                    CircuitState::Closed => {
                        return Admission {
                            breaker: self.clone(),
                            probe: false,
                        };
                    }
                    CircuitState::HalfOpen if may_probe && !inner.probing => {
                        inner.probing = true;
                        return Admission {
                            breaker: self.clone(),
                            probe: true,
                        };
                    }
                    CircuitState::HalfOpen => None,
                    CircuitState::Open => Some(inner.opened_at + inner.reset_timeout),
                }
            };
            match due {
                None => {
                    let _ = changes.changed().await;
                }
                Some(due) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        _ = changes.changed() => {}
                    }
                }
            }
        }
    }

    fn report(&self, probe: bool, ok: bool) -> CircuitState {
        if ok && !probe && self.quiet.load(Ordering::Acquire) {
            return CircuitState::Closed;
        }
        let mut inner = self.lock();
        let state = self.report_locked(&mut inner, probe, ok);
        self.settle(&inner);
        state
    }

    /// Keeps `quiet` in step with the state and the failure count.
    fn settle(&self, inner: &Inner) {
        self.quiet.store(
            inner.state == CircuitState::Closed && inner.failures == 0,
            Ordering::Release,
        );
    }

    fn report_locked(&self, inner: &mut Inner, probe: bool, ok: bool) -> CircuitState {
        match (inner.state, ok) {
            (CircuitState::Closed, true) => inner.failures = 0,
            (CircuitState::Closed, false) => {
                inner.failures += 1;
                if inner.threshold > 0 && inner.failures >= inner.threshold {
                    let why = format!("{} consecutive failures", inner.failures);
                    self.open(inner, &why);
                }
            }
            (CircuitState::HalfOpen, true) if probe => {
                inner.probing = false;
                inner.failures = 0;
                self.set(inner, CircuitState::Closed, "probe succeeded");
            }
            (CircuitState::HalfOpen, false) if probe => {
                inner.probing = false;
                self.open(inner, "probe failed");
            }
            // Work admitted before the circuit opened, finishing late: the
            // probe alone decides.
            _ => {}
        }
        inner.state
    }

    fn release_probe(&self) {
        let mut inner = self.lock();
        if inner.state == CircuitState::HalfOpen && inner.probing {
            inner.probing = false;
            // Wake a waiter to take the probe instead.
            self.state.send_replace(inner.state);
        }
    }

    fn open(&self, inner: &mut Inner, why: &str) {
        inner.opened_at = Instant::now();
        inner.failures = 0;
        self.set(inner, CircuitState::Open, why);
    }

    fn set(&self, inner: &mut Inner, to: CircuitState, why: &str) {
        let from = inner.state;
        if from == to {
            return;
        }
        inner.state = to;
        self.transitions[usize::from(to.gauge())].fetch_add(1, Ordering::Relaxed);
        match to {
            CircuitState::Open => tracing::error!(
                breaker = %self.name, from = from.as_str(), to = to.as_str(),
                reset_timeout_s = inner.reset_timeout.as_secs_f64(),
                "circuit breaker opened: {why}"
            ),
            _ => tracing::warn!(
                breaker = %self.name, from = from.as_str(), to = to.as_str(),
                "circuit breaker {}: {why}", to.as_str()
            ),
        }
        self.state.send_replace(to);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Permission to do work past a breaker. Its outcome is reported with
/// [`Admission::report`]; the first report of a probe decides the half-open
/// state, later ones count as ordinary outcomes. A probe dropped unreported
/// (its work was cancelled) is handed to the next waiter.
pub struct Admission {
    breaker: Arc<Breaker>,
    probe: bool,
}

impl Admission {
    /// Whether this is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Reports the outcome of the admitted work; returns the breaker's state
    /// after it.
    pub fn report(&mut self, ok: bool) -> CircuitState {
        let probe = std::mem::take(&mut self.probe);
        self.breaker.report(probe, ok)
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESET: Duration = Duration::from_secs(30);

    fn breaker(threshold: u32) -> Arc<Breaker> {
        Breaker::new("test", threshold, RESET)
    }

    fn fail(b: &Arc<Breaker>, n: u32) -> CircuitState {
        let mut state = b.state();
        for _ in 0..n {
            state = b.admission().report(false);
        }
        state
    }

    /// Whether `admit` completes without time passing.
    async fn admits_now(b: &Arc<Breaker>) -> Option<Admission> {
        tokio::time::timeout(Duration::ZERO, b.admit()).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_consecutive_failures_only() {
        let b = breaker(3);
        assert_eq!(fail(&b, 2), CircuitState::Closed);
        // A success resets the count: two more failures do not open it.
        assert_eq!(b.admit().await.report(true), CircuitState::Closed);
        assert_eq!(fail(&b, 2), CircuitState::Closed);
        assert_eq!(fail(&b, 1), CircuitState::Open);
        assert_eq!(b.transitions_to(CircuitState::Open), 1);
        assert!(admits_now(&b).await.is_none(), "open blocks at once");
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_reset_timeout_with_a_single_probe() {
        let b = breaker(1);
        fail(&b, 1);
        let opened = Instant::now();
        let probe = b.admit().await;
        assert_eq!(opened.elapsed(), RESET, "the probe waits the reset timeout");
        assert!(probe.is_probe());
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(admits_now(&b).await.is_none(), "one probe at a time");
        drop(probe);
        let second = admits_now(&b)
            .await
            .expect("an abandoned probe is handed on");
        assert!(second.is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn probe_success_closes_and_releases_every_waiter() {
        let b = breaker(1);
        fail(&b, 1);
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.closed().await.is_probe() }
        });
        let mut probe = b.admit().await;
        assert!(!waiter.is_finished());
        assert_eq!(probe.report(true), CircuitState::Closed);
        assert!(
            !waiter.await.expect("the waiter does not panic"),
            "waiters proceed as plain admissions"
        );
        assert_eq!(b.transitions_to(CircuitState::Closed), 1);
        assert!(admits_now(&b).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn probe_failure_opens_again_for_another_reset_timeout() {
        let b = breaker(2);
        fail(&b, 2);
        let mut probe = b.admit().await;
        assert_eq!(probe.report(false), CircuitState::Open);
        let reopened = Instant::now();
        let probe = b.admit().await;
        assert_eq!(reopened.elapsed(), RESET);
        assert!(probe.is_probe());
        assert_eq!(b.transitions_to(CircuitState::Open), 2);
        assert_eq!(b.transitions_to(CircuitState::HalfOpen), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn late_outcomes_of_plain_admissions_do_not_decide() {
        let b = breaker(1);
        let mut early = b.admit().await;
        fail(&b, 1);
        assert_eq!(early.report(true), CircuitState::Open, "open stays open");
        let mut probe = b.admit().await;
        assert_eq!(b.admission().report(true), CircuitState::HalfOpen);
        assert_eq!(probe.report(true), CircuitState::Closed);
        // Only the first report of a probe is the probe's.
        assert_eq!(probe.report(false), CircuitState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_waiters_never_take_the_probe() {
        let b = breaker(1);
        fail(&b, 1);
        tokio::time::advance(RESET).await;
        assert!(
            tokio::time::timeout(Duration::from_secs(1), b.closed())
                .await
                .is_err()
        );
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(
            admits_now(&b)
                .await
                .expect("half-open admits a probe")
                .is_probe()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn manual_reset_closes() {
        let b = breaker(1);
        fail(&b, 1);
        b.reset();
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(
            !admits_now(&b)
                .await
                .expect("closed admits at once")
                .is_probe()
        );
    }

    #[test]
    fn threshold_zero_never_opens() {
        let b = breaker(0);
        assert_eq!(fail(&b, 1000), CircuitState::Closed);
    }
}
