//! A call's deadline where epoch interruption cannot reach: inside host
//! calls that wait.
//!
//! Epoch interruption stops running guest code at its deadline, but a guest
//! blocked in a WASI call (`std::thread::sleep`, a `wasi:io/poll` `poll` or
//! `pollable.block`) runs no guest code, so it would hold its thread (and its
//! worker's concurrency slot) for as long as it asked to wait. This module
//! replaces those two waiting imports with versions that wait at most until
//! the call's deadline and then trap with [`Trap::Interrupt`], the same trap
//! as a spinning guest, so the call ends as a timeout. Nothing else in the
//! sandbox can wait: sockets, name lookups and files are not granted, stdin
//! is empty and the guest's stdout and stderr never refuse a write.
//!
//! The deadline is kept in ticks of the deadline clock (the epoch ticker),
//! so arming it for a call is one atomic load; it does not own the clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::Trap;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::sync::io::poll as sync_poll;
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;

/// Counts ticks of the deadline clock: the engine's epoch as a number the
/// host can read. It advances only while guest code runs, as the epoch does.
#[derive(Debug, Clone, Default)]
pub(crate) struct TickCount(Arc<AtomicU64>);

impl TickCount {
    /// Advances the count by one tick.
    pub(crate) fn advance(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    fn now(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// The deadline of the call a store is running.
#[derive(Debug)]
pub(crate) struct Deadline {
    ticks: TickCount,
    /// How long one tick is.
    tick: Duration,
    /// The tick count at which the call is over.
    at: u64,
}

impl Deadline {
    /// A deadline on `ticks`, each `tick` long, that has already passed
    /// until it is armed.
    pub(crate) fn new(ticks: TickCount, tick: Duration) -> Self {
        Deadline { ticks, tick, at: 0 }
    }

    /// Sets the deadline `ticks` ticks from now, as the store's epoch
    /// deadline is set.
    pub(crate) fn arm(&mut self, ticks: u64) {
        self.at = self.ticks.now().saturating_add(ticks);
    }

    /// The time left before the deadline, by the deadline clock.
    fn remaining(&self) -> Duration {
        let ticks = self.at.saturating_sub(self.ticks.now());
        self.tick
            .saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX))
    }
}

/// Replaces the linker's `wasi:io/poll` with the deadline-aware one below.
/// Call after the WASI imports are added.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> Polls<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = sync_poll::add_to_linker::<T, HasPolls>(linker, get);
    linker.allow_shadowing(false);
    added
}

/// The [`HasData`] marker for [`Polls`].
struct HasPolls;

impl HasData for HasPolls {
    type Data<'a> = Polls<'a>;
}

/// `wasi:io/poll` for one store: WASI's own implementation, over the store's
/// resources, with every wait cut at the call's deadline.
pub(crate) struct Polls<'a> {
    /// The store's WASI resources.
    pub(crate) table: &'a mut ResourceTable,
    /// The deadline of the call that is waiting.
    pub(crate) deadline: &'a Deadline,
}

impl Polls<'_> {
    /// Waits for `ready` until the deadline; at the deadline the call traps
    /// as interrupted.
    fn until_deadline<R>(
        remaining: Duration,
        ready: impl Future<Output = wasmtime::Result<R>>,
    ) -> wasmtime::Result<R> {
        if remaining.is_zero() {
            return Err(Trap::Interrupt.into());
        }
        wasmtime_wasi::runtime::in_tokio(async { tokio::time::timeout(remaining, ready).await })
            .map_err(|_elapsed| wasmtime::Error::from(Trap::Interrupt))?
    }
}

impl sync_poll::Host for Polls<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        let remaining = self.deadline.remaining();
        Self::until_deadline(remaining, async_poll::Host::poll(self.table, pollables))
    }
}

impl sync_poll::HostPollable for Polls<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        sync_poll::HostPollable::ready(self.table, pollable)
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        let remaining = self.deadline.remaining();
        Self::until_deadline(
            remaining,
            async_poll::HostPollable::block(self.table, pollable),
        )
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        sync_poll::HostPollable::drop(self.table, pollable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_time_counts_down_with_the_clock_and_stops_at_zero() {
        let ticks = TickCount::default();
        let mut deadline = Deadline::new(ticks.clone(), Duration::from_millis(2));
        assert_eq!(deadline.remaining(), Duration::ZERO, "unarmed: passed");
        deadline.arm(5);
        assert_eq!(deadline.remaining(), Duration::from_millis(10));
        for _ in 0..4 {
            ticks.advance();
        }
        assert_eq!(deadline.remaining(), Duration::from_millis(2));
        ticks.advance();
        ticks.advance();
        assert_eq!(deadline.remaining(), Duration::ZERO);
    }

    #[test]
    fn a_passed_deadline_traps_as_interrupted_without_waiting() {
        let error = Polls::until_deadline(
            Duration::ZERO,
            std::future::pending::<wasmtime::Result<()>>(),
        )
        .expect_err("the deadline has passed");
        assert_eq!(error.downcast_ref::<Trap>(), Some(&Trap::Interrupt));
    }

    #[test]
    fn a_wait_past_the_deadline_traps_as_interrupted() {
        let error = Polls::until_deadline(
            Duration::from_millis(1),
            std::future::pending::<wasmtime::Result<()>>(),
        )
        .expect_err("the wait never ends");
        assert_eq!(error.downcast_ref::<Trap>(), Some(&Trap::Interrupt));
        let done = Polls::until_deadline(Duration::from_secs(1), async { Ok(7) });
        assert_eq!(done.ok(), Some(7));
    }
}
