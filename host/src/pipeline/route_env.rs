//! The route as the delivery core asks about it: its retry rules, its
//! dead-letter topic and how a dead letter is made, and the handler
//! breaker's verdict on the call being reported.

use std::sync::Arc;
use std::time::SystemTime;

use super::calls::Fetched;
use super::core::{Env, Failed};
use super::dlq::DeadLetter;
use super::gate::Gate;
use crate::breaker::{Admission, CircuitState};
use crate::policy::RetryPolicy;
use crate::route::Route;
use crate::wasm::{Output, Plugin};

/// The route as the delivery core asks about it.
pub(super) struct RouteEnv<'a> {
    pub(super) route: &'a Route,
    /// The module version dead letters name.
    pub(super) plugin: Option<Arc<Plugin>>,
    /// The handler breaker's admission of the call being reported.
    pub(super) handler: Option<&'a mut Admission>,
    pub(super) gate: &'a Gate,
    pub(super) max_record_bytes: usize,
}

impl Env<Fetched, Output> for RouteEnv<'_> {
    fn policy(&self) -> &RetryPolicy {
        &self.route.policy
    }

    fn has_dead_letter_topic(&self) -> bool {
        self.route.dead_letter_topic.is_some()
    }

    fn dead_letter(&mut self, fetched: &Fetched, attempt: u32, failed: &Failed) -> Output {
        let message = &fetched.message;
        let raw_keys = self.gate.raw_keys(message.offset);
        let (module_hash, module) = match &self.plugin {
            Some(plugin) => (plugin.hash(), self.route.module_name()),
            None => ("", self.route.module_name()),
        };
        let letter = DeadLetter {
            message,
            raw_keys: &raw_keys,
            error_type: failed.kind.error_type(),
            reason: failed.reason.clone(),
            correlation_id: &fetched.correlation,
            retry_count: attempt.saturating_sub(1),
            module,
            module_hash,
            failed_at: SystemTime::now(),
        };
        // Room for the trace headers the record gets when it is produced.
        let room = if fetched.trace.is_some() {
            crate::trace::HEADER_ROOM
        } else {
            0
        };
        let record = letter.record(self.max_record_bytes.saturating_sub(room));
        Output {
            topic: self.route.dead_letter_topic.clone().unwrap_or_default(),
            key: record.key,
            value: Some(record.value),
            headers: record.headers,
        }
    }

    fn report_handler(&mut self, ok: Option<bool>) -> bool {
        match self.handler.as_deref_mut() {
            Some(admission) => admission.report(ok.unwrap_or(true)) == CircuitState::Closed,
            None => true,
        }
    }

    fn handler_probe(&self) -> bool {
        self.handler.as_deref().is_some_and(Admission::is_probe)
    }

    fn jitter(&mut self) -> f64 {
        0.5 + fastrand::f64()
    }
}
