//! The Prometheus text exposition of [`Status`]: every metric's name, help,
//! type and labels are defined here and nowhere else.
//!
//! Owns formatting only; the counters live in [`crate::status`]. Label values
//! come from a small fixed set (outcomes, error types, breaker states) plus
//! topic, route and module names.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::breaker::CircuitState;
use crate::policy::ErrorType;
use crate::status::{LATENCY_BUCKETS, RouteStatus, Status};

/// Every metric family, for documentation and tests: name, type, labels.
pub const FAMILIES: &[(&str, &str, &str)] = &[
    ("sluice_up", "gauge", ""),
    ("sluice_started", "gauge", ""),
    ("sluice_broker_reachable", "gauge", ""),
    ("sluice_messages_consumed_total", "counter", ""),
    ("sluice_messages_total", "counter", "route, outcome"),
    ("sluice_dead_letters_total", "counter", "route, error_type"),
    ("sluice_retries_total", "counter", "route"),
    ("sluice_batch_calls_total", "counter", "route"),
    ("sluice_batch_fallbacks_total", "counter", "route"),
    ("sluice_handler_duration_seconds", "histogram", "route"),
    ("sluice_dlq_published_total", "counter", "route"),
    ("sluice_dlq_publish_failures_total", "counter", "route"),
    ("sluice_produce_failures_total", "counter", ""),
    ("sluice_produce_refusals_total", "counter", ""),
    ("sluice_dlq_refusals_total", "counter", "route"),
    ("sluice_partition_restarts_total", "counter", ""),
    (
        "kafka_event_bus_circuit_state",
        "gauge",
        "environment, group",
    ),
    ("sluice_circuit_transitions_total", "counter", "to"),
    ("sluice_route_circuit_state", "gauge", "route"),
    (
        "sluice_route_circuit_transitions_total",
        "counter",
        "route, to",
    ),
    ("sluice_consumer_lag", "gauge", "topic, partition"),
    ("sluice_in_flight_messages", "gauge", ""),
    ("sluice_stopped_partitions", "gauge", ""),
    ("sluice_stalled_partitions", "gauge", ""),
    ("sluice_plugin_loads_total", "counter", "module"),
    ("sluice_plugin_load_failures_total", "counter", "module"),
    ("sluice_guest_log_lines_dropped_total", "counter", "route"),
];

/// The outcomes of `sluice_messages_total`.
const OUTCOMES: [&str; 4] = ["ok", "dead_lettered", "stopped", "held"];

/// Renders every metric in the Prometheus text format (version 0.0.4).
pub fn render(status: &Status) -> String {
    let mut out = Families::default();
    let load = |n: &AtomicU64| n.load(Ordering::Relaxed);

    out.family("sluice_up", "1 while the daemon runs.");
    out.sample("sluice_up", &[], 1);
    out.family(
        "sluice_started",
        "1 once modules are loaded and topics subscribed.",
    );
    out.sample("sluice_started", &[], u64::from(status.started()));
    out.family(
        "sluice_broker_reachable",
        "1 when a Kafka broker answered at last report.",
    );
    out.sample(
        "sluice_broker_reachable",
        &[],
        u64::from(status.is_reachable()),
    );
    out.family(
        "sluice_messages_consumed_total",
        "Messages received from Kafka, redeliveries included.",
    );
    out.sample("sluice_messages_consumed_total", &[], status.consumed());

    let routes: Vec<Arc<RouteStatus>> = status.routes();
    out.family(
        "sluice_messages_total",
        "Messages handled, by route and outcome: ok (outputs produced), dead_lettered, \
         stopped (no dead-letter topic), held (by the open handler breaker).",
    );
    for r in &routes {
        let m = &r.metrics;
        let counts = [
            load(&m.ok),
            m.dead_lettered.iter().map(load).sum(),
            load(&m.stopped),
            load(&m.held),
        ];
        for (outcome, n) in OUTCOMES.iter().zip(counts) {
            out.sample(
                "sluice_messages_total",
                &[("route", &r.topic), ("outcome", outcome)],
                n,
            );
        }
    }
    out.family(
        "sluice_dead_letters_total",
        "Messages dead-lettered, by route and error type.",
    );
    for r in &routes {
        for (t, n) in ErrorType::ALL.iter().zip(&r.metrics.dead_lettered) {
            out.sample(
                "sluice_dead_letters_total",
                &[("route", &r.topic), ("error_type", t.as_str())],
                load(n),
            );
        }
    }
    out.family("sluice_retries_total", "Retries of failed handler calls.");
    for r in &routes {
        out.sample(
            "sluice_retries_total",
            &[("route", &r.topic)],
            load(&r.metrics.retries),
        );
    }
    out.family(
        "sluice_batch_calls_total",
        "Handler calls that took several messages at once (handle-packed or handle-batch).",
    );
    for r in &routes {
        out.sample(
            "sluice_batch_calls_total",
            &[("route", &r.topic)],
            load(&r.metrics.batch_calls),
        );
    }
    out.family(
        "sluice_batch_fallbacks_total",
        "Batch calls that trapped or timed out, after which their messages were handled one at a time.",
    );
    for r in &routes {
        out.sample(
            "sluice_batch_fallbacks_total",
            &[("route", &r.topic)],
            load(&r.metrics.batch_fallbacks),
        );
    }
    out.histogram_family(
        "sluice_handler_duration_seconds",
        "Handler call duration, in seconds.",
    );
    for r in &routes {
        let m = &r.metrics;
        let mut cumulative = 0;
        for (i, n) in m.latency_buckets.iter().enumerate() {
            cumulative += load(n);
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            out.sample(
                "sluice_handler_duration_seconds_bucket",
                &[("route", &r.topic), ("le", &le)],
                cumulative,
            );
        }
        let sum = load(&m.latency_sum_nanos) as f64 / 1e9;
        let _ = writeln!(
            out.text,
            "sluice_handler_duration_seconds_sum{{route=\"{}\"}} {sum}",
            escape(&r.topic)
        );
        out.sample(
            "sluice_handler_duration_seconds_count",
            &[("route", &r.topic)],
            cumulative,
        );
    }
    out.family(
        "sluice_dlq_published_total",
        "Dead-letter records acknowledged by the broker.",
    );
    for r in &routes {
        out.sample(
            "sluice_dlq_published_total",
            &[("route", &r.topic)],
            load(&r.metrics.dlq_published),
        );
    }
    out.family(
        "sluice_dlq_publish_failures_total",
        "Dead-letter records the broker did not acknowledge (each attempt; they are produced \
         again).",
    );
    for r in &routes {
        out.sample(
            "sluice_dlq_publish_failures_total",
            &[("route", &r.topic)],
            load(&r.metrics.dlq_failures),
        );
    }
    out.family(
        "sluice_produce_failures_total",
        "Records (outputs and dead letters) the broker did not acknowledge, each attempt.",
    );
    out.sample(
        "sluice_produce_failures_total",
        &[],
        load(&status.produce_failures),
    );
    out.family(
        "sluice_produce_refusals_total",
        "Records (outputs and dead letters) refused for good: too large, invalid, for a topic \
         that does not exist or may not be written. They are not produced again.",
    );
    out.sample(
        "sluice_produce_refusals_total",
        &[],
        status.produce_refusals(),
    );
    out.family(
        "sluice_dlq_refusals_total",
        "Dead-letter records refused for good; the partition stops on the message.",
    );
    for r in &routes {
        out.sample(
            "sluice_dlq_refusals_total",
            &[("route", &r.topic)],
            load(&r.metrics.dlq_refusals),
        );
    }
    out.family(
        "sluice_partition_restarts_total",
        "Partition workers that ended early and were restarted from their last stored offset.",
    );
    out.sample(
        "sluice_partition_restarts_total",
        &[],
        status.worker_restarts(),
    );
    out.family(
        "sluice_consumer_record_errors_total",
        "Consumer errors about a record the Kafka client fetched but could not decode (a \
         corrupt batch, a record over the fetch limit), each time it was reported.",
    );
    out.sample(
        "sluice_consumer_record_errors_total",
        &[],
        load(&status.record_errors),
    );
    out.family(
        "sluice_assigned_partitions",
        "Partitions the consumer holds.",
    );
    out.sample("sluice_assigned_partitions", &[], status.assigned() as u64);
    out.family(
        "sluice_unassigned_seconds",
        "How long the consumer has held no partition, once that is longer than its session \
         timeout; 0 otherwise.",
    );
    out.sample(
        "sluice_unassigned_seconds",
        &[],
        status
            .unassigned_for(std::time::Instant::now())
            .map_or(0, |d| d.as_secs()),
    );
    out.family(
        "sluice_undecodable_partitions",
        "Partitions held up by a record the Kafka client cannot decode.",
    );
    out.sample(
        "sluice_undecodable_partitions",
        &[],
        status.undecodable().len() as u64,
    );

    out.family(
        "kafka_event_bus_circuit_state",
        "Broker circuit breaker state: 0 closed, 1 half_open, 2 open.",
    );
    out.sample(
        "kafka_event_bus_circuit_state",
        &[
            ("environment", &status.environment),
            ("group", &status.group),
        ],
        u64::from(status.broker.state().gauge()),
    );
    out.family(
        "sluice_circuit_transitions_total",
        "Broker circuit breaker transitions, by the state entered.",
    );
    for state in CircuitState::ALL {
        out.sample(
            "sluice_circuit_transitions_total",
            &[("to", state.as_str())],
            status.broker.transitions_to(state),
        );
    }
    out.family(
        "sluice_route_circuit_state",
        "Handler circuit breaker state per route: 0 closed, 1 half_open, 2 open.",
    );
    for r in &routes {
        out.sample(
            "sluice_route_circuit_state",
            &[("route", &r.topic)],
            u64::from(r.breaker.state().gauge()),
        );
    }
    out.family(
        "sluice_route_circuit_transitions_total",
        "Handler circuit breaker transitions, by route and the state entered.",
    );
    for r in &routes {
        for state in CircuitState::ALL {
            out.sample(
                "sluice_route_circuit_transitions_total",
                &[("route", &r.topic), ("to", state.as_str())],
                r.breaker.transitions_to(state),
            );
        }
    }

    out.family(
        "sluice_consumer_lag",
        "Messages between the committed offset and the end of each assigned partition, from \
         librdkafka's statistics.",
    );
    for ((topic, partition), n) in status.lag() {
        out.sample(
            "sluice_consumer_lag",
            &[("topic", &topic), ("partition", &partition.to_string())],
            u64::try_from(n).unwrap_or(0),
        );
    }
    out.family(
        "sluice_in_flight_messages",
        "Messages received and not yet finished (outputs or dead letter acknowledged).",
    );
    out.sample("sluice_in_flight_messages", &[], status.in_flight());
    out.family(
        "sluice_stopped_partitions",
        "Partitions stopped on a message: it failed and no dead-letter topic is configured, or \
         a record of it was refused for good.",
    );
    let stopped = status.stopped_partitions().len();
    out.sample("sluice_stopped_partitions", &[], stopped as u64);
    out.family(
        "sluice_stalled_partitions",
        "Partitions whose lag has not moved for processing.stall_timeout_seconds while they \
         were neither paused, held nor stopped.",
    );
    out.sample(
        "sluice_stalled_partitions",
        &[],
        status.stalled().len() as u64,
    );

    let loads = status.all_plugin_loads();
    out.family("sluice_plugin_loads_total", "Modules loaded, by module.");
    for (module, (ok, _)) in loads.iter() {
        out.sample("sluice_plugin_loads_total", &[("module", module)], *ok);
    }
    out.family(
        "sluice_plugin_load_failures_total",
        "Module files refused (invalid, wrong world or version), by module.",
    );
    for (module, (_, failed)) in loads.iter() {
        out.sample(
            "sluice_plugin_load_failures_total",
            &[("module", module)],
            *failed,
        );
    }
    out.family(
        "sluice_guest_log_lines_dropped_total",
        "Log lines (log calls, stdout and stderr lines) of the module serving each route that \
         the per-module rate limit dropped; starts again from 0 when a new module version is \
         loaded.",
    );
    for r in &routes {
        if let Some(m) = r.module() {
            out.sample(
                "sluice_guest_log_lines_dropped_total",
                &[("route", &r.topic)],
                m.log_lines_dropped(),
            );
        }
    }
    out.text
}

#[derive(Default)]
struct Families {
    text: String,
}

impl Families {
    fn family(&mut self, name: &str, help: &str) {
        self.header(name, help, kind_of(name));
    }

    fn histogram_family(&mut self, name: &str, help: &str) {
        self.header(name, help, "histogram");
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

fn kind_of(name: &str) -> &'static str {
    FAMILIES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map_or("untyped", |(_, kind, _)| kind)
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests;
