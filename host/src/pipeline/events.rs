//! Telemetry from events: each thing that happens to a message (handled,
//! retried, held, dead-lettered, stopped on, tried again, refused by the
//! broker, its dead letter refused) is one type whose `emit` writes its log
//! line and counts it in the metrics and health, so that what is logged and
//! what is counted cannot drift apart. The delivery core decides; its
//! [`Note`]s become these events in the partition's worker.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::core::Note;
use super::dlq;
use crate::policy::ErrorType;
use crate::route::Route;
use crate::status::{Status, TopicPartition};

/// Where an event happened: the partition, its route, the daemon's status.
pub struct Scope<'a> {
    pub tp: &'a TopicPartition,
    pub route: &'a Route,
    pub status: &'a Status,
}

/// An event that logs and counts itself.
pub trait Emit {
    fn emit(self, scope: &Scope<'_>);
}

/// The handler call succeeded.
pub struct Handled;

/// The call failed and is tried again after `delay`.
pub struct Retried {
    pub offset: i64,
    pub attempt: u32,
    pub delay: Duration,
    pub reason: String,
}

/// The handler breaker is open: the message waits for a probe to succeed.
pub struct Held {
    pub offset: i64,
    pub reason: String,
}

/// The message is given up on and dead-lettered.
pub struct DeadLettered {
    pub offset: i64,
    pub error_type: ErrorType,
    pub reason: String,
}

/// The partition stopped on the message: it shows in health.
pub struct Stopped {
    pub offset: i64,
    pub reason: String,
}

/// The partition goes on with the message it stopped on.
pub struct Resumed {
    pub offset: i64,
}

/// A record of the message was refused for now: its records and the
/// outputs after them are produced again after `delay`.
pub struct Refused {
    pub offset: i64,
    pub delay: Duration,
    pub reason: String,
}

/// The message's dead letter was refused for good.
pub struct DeadLetterRefused {
    pub offset: i64,
    pub reason: String,
}

/// Emits what the core noted.
pub fn emit(note: Note, scope: &Scope<'_>) {
    match note {
        Note::Handled { .. } => Handled.emit(scope),
        Note::Retry {
            offset,
            attempt,
            delay,
            reason,
        } => Retried {
            offset,
            attempt,
            delay,
            reason,
        }
        .emit(scope),
        Note::Held { offset, reason } => Held { offset, reason }.emit(scope),
        Note::DeadLetter {
            offset,
            error_type,
            reason,
        } => DeadLettered {
            offset,
            error_type,
            reason,
        }
        .emit(scope),
        Note::Stopped { offset, reason } => Stopped { offset, reason }.emit(scope),
        Note::Resumed { offset } => Resumed { offset }.emit(scope),
        Note::Refused {
            offset,
            delay,
            reason,
        } => Refused {
            offset,
            delay,
            reason,
        }
        .emit(scope),
        Note::DeadLetterRefused { offset, reason } => {
            DeadLetterRefused { offset, reason }.emit(scope);
        }
    }
}

fn millis(delay: Duration) -> u64 {
    u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
}

impl Emit for Handled {
    fn emit(self, scope: &Scope<'_>) {
        scope
            .route
            .status
            .metrics
            .ok
            .fetch_add(1, Ordering::Relaxed);
    }
}

impl Emit for Retried {
    fn emit(self, scope: &Scope<'_>) {
        let Scope { tp, route, .. } = scope;
        route.status.metrics.retries.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            topic = %tp.topic, partition = tp.partition, offset = self.offset,
            module = route.module_name(), attempt = self.attempt,
            delay_ms = millis(self.delay), "retrying after: {}", self.reason
        );
    }
}

impl Emit for Held {
    fn emit(self, scope: &Scope<'_>) {
        let Scope { tp, route, .. } = scope;
        route.status.metrics.held.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            topic = %tp.topic, partition = tp.partition, offset = self.offset, module = route.module_name(),
            "handler breaker is open: holding the message until a probe succeeds: {}",
            self.reason
        );
    }
}

impl Emit for DeadLettered {
    fn emit(self, scope: &Scope<'_>) {
        let Scope { tp, route, .. } = scope;
        route.status.metrics.dead_letter(self.error_type);
        let (shown, _) = dlq::cut_text(&self.reason, dlq::MAX_REASON);
        tracing::warn!(
            topic = %tp.topic, partition = tp.partition, offset = self.offset, module = route.module_name(),
            error_type = self.error_type.as_str(),
            dead_letter_topic = route.dead_letter_topic.as_deref().unwrap_or(""),
            "dead-lettering message: {shown}"
        );
    }
}

impl Emit for Stopped {
    fn emit(self, scope: &Scope<'_>) {
        let Scope { tp, route, status } = scope;
        route.status.metrics.stopped.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            topic = %tp.topic, partition = tp.partition, offset = self.offset, module = route.module_name(),
            "partition stopped: nothing after the message is committed until it is handled \
             (a new version of the module or a config reload tries it again): {}",
            self.reason
        );
        let (shown, _) = dlq::cut_text(&self.reason, dlq::MAX_REASON);
        status.stop(tp, format!("offset {}: {shown}", self.offset));
    }
}

impl Emit for Resumed {
    fn emit(self, scope: &Scope<'_>) {
        let Scope { tp, route, status } = scope;
        status.resume(tp);
        tracing::info!(
            topic = %tp.topic, partition = tp.partition, offset = self.offset, module = route.module_name(),
            "trying again the message the partition stopped on"
        );
    }
}

impl Emit for Refused {
    fn emit(self, scope: &Scope<'_>) {
        let tp = scope.tp;
        tracing::warn!(
            topic = %tp.topic, partition = tp.partition, offset = self.offset,
            delay_ms = millis(self.delay),
            "record not acknowledged by the broker; the message's records (and the outputs \
             after them) are produced again: {}",
            self.reason
        );
    }
}

impl Emit for DeadLetterRefused {
    fn emit(self, scope: &Scope<'_>) {
        let Scope { tp, route, .. } = scope;
        route
            .status
            .metrics
            .dlq_refusals
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            topic = %tp.topic, partition = tp.partition, offset = self.offset, module = route.module_name(),
            "dead letter refused for good: {}",
            self.reason
        );
    }
}
