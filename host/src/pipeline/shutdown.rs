//! How long a shutdown may take, and what it is waiting for: past
//! `processing.drain_timeout_seconds` plus [`MARGIN`] from the signal, the
//! process logs the step it is stuck in and exits with status 1, whatever
//! holds it (a guest in a loop, a broker that is gone, a commit that does
//! not return). Nothing is lost that way: offsets not committed are
//! delivered again.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;

use crate::config::Config;

/// What the rest of a shutdown may take after the drain: committing the
/// stored offsets, flushing the producer and leaving the group, which take
/// well under a second while a broker answers.
pub const MARGIN: Duration = Duration::from_secs(15);

/// The step the shutdown is in.
static STAGE: Mutex<&str> = Mutex::new("waiting for the signal");

/// Records the step the shutdown is in.
pub fn stage(now: &'static str) {
    *STAGE.lock().unwrap_or_else(PoisonError::into_inner) = now;
}

/// The step the shutdown is in.
pub fn current() -> &'static str {
    *STAGE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long a shutdown of a daemon running `config` may take from the
/// signal.
pub fn bound(config: &Config) -> Duration {
    config.processing.drain_timeout() + MARGIN
}

/// Starts counting `bound` from now: once it is over, the process logs the
/// step it is stuck in and exits with status 1.
pub fn watchdog(bound: Duration) {
    let started = std::thread::Builder::new()
        .name("sluice-shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(bound);
            tracing::error!(
                "shutdown did not finish within {} s of the signal (drain_timeout_seconds plus \
                 {} s): still {}; exiting now, and offsets not committed are delivered again",
                bound.as_secs(),
                MARGIN.as_secs(),
                current()
            );
            std::process::exit(1);
        });
    if let Err(e) = started {
        tracing::warn!("cannot bound the shutdown: {e}");
    }
}
