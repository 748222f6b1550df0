//! The Prometheus text exposition of [`Status`]: every metric's name, help,
//! type and labels are defined here and nowhere else, each family once in a
//! table beside how its samples are read.
//!
//! Owns formatting only; the counters live in [`crate::status`]. Label values
//! come from a small fixed set (outcomes, error types, breaker states) plus
//! topic, route and module names.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::breaker::CircuitState;
use crate::policy::ErrorType;
use crate::status::{LATENCY_BUCKETS, RouteStatus, Status, TopicPartition};

/// Every metric family, for documentation and tests: name, type, labels.
pub const FAMILIES: &[(&str, &str, &str)] = &summaries::<{ METRICS.len() }>(METRICS);

/// A metric family's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The name the `# TYPE` line gives.
    const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: its name, type, labels and help, and how its samples
/// are read from the status.
struct Family {
    name: &'static str,
    kind: Kind,
    /// The label names, comma-separated, for [`FAMILIES`]; the samples
    /// name their own.
    labels: &'static str,
    /// The `# HELP` text.
    help: &'static str,
    samples: Samples,
}

/// How a family's samples are read.
enum Samples {
    /// One sample, without labels.
    One(fn(&Status) -> u64),
    /// One sample per route, labelled `route`.
    PerRoute(fn(&RouteStatus) -> u64),
    /// Any other shape: the function writes the family's samples, under the
    /// name it is given.
    Custom(fn(&mut Exposition, &str, &Scrape<'_>)),
}

/// What one rendering reads once and every family shares.
struct Scrape<'a> {
    status: &'a Status,
    /// Every route, read once so that every family lists the same ones.
    routes: Vec<Arc<RouteStatus>>,
    /// Loads and refusals of every module, read once for both families
    /// that show them.
    loads: BTreeMap<String, (u64, u64)>,
}

/// The outcomes of `sluice_messages_total`.
const OUTCOMES: [&str; 4] = ["ok", "dead_lettered", "stopped", "held"];

/// Every metric family, in the order they are rendered.
const METRICS: &[Family] = &[
    Family {
        name: "sluice_up",
        kind: Kind::Gauge,
        labels: "",
        help: "1 while the daemon runs.",
        samples: Samples::One(|_| 1),
    },
    Family {
        name: "sluice_started",
        kind: Kind::Gauge,
        labels: "",
        help: "1 once modules are loaded and topics subscribed.",
        samples: Samples::One(|s| u64::from(s.started())),
    },
    Family {
        name: "sluice_broker_reachable",
        kind: Kind::Gauge,
        labels: "",
        help: "1 when a Kafka broker answered at last report.",
        samples: Samples::One(|s| u64::from(s.is_reachable())),
    },
    Family {
        name: "sluice_messages_consumed_total",
        kind: Kind::Counter,
        labels: "",
        help: "Messages received from Kafka, redeliveries included.",
        samples: Samples::One(Status::consumed),
    },
    Family {
        name: "sluice_messages_total",
        kind: Kind::Counter,
        labels: "route, outcome",
        help: "Messages handled, by route and outcome: ok (outputs produced), dead_lettered, \
               stopped (no dead-letter topic), held (by the open handler breaker).",
        samples: Samples::Custom(messages_by_outcome),
    },
    Family {
        name: "sluice_dead_letters_total",
        kind: Kind::Counter,
        labels: "route, error_type",
        help: "Messages dead-lettered, by route and error type.",
        samples: Samples::Custom(dead_letters_by_type),
    },
    Family {
        name: "sluice_retries_total",
        kind: Kind::Counter,
        labels: "route",
        help: "Retries of failed handler calls.",
        samples: Samples::PerRoute(|r| load(&r.metrics.retries)),
    },
    Family {
        name: "sluice_batch_calls_total",
        kind: Kind::Counter,
        labels: "route",
        help: "Handler calls that took several messages at once (handle-packed or \
               handle-batch).",
        samples: Samples::PerRoute(|r| load(&r.metrics.batch_calls)),
    },
    Family {
        name: "sluice_batch_fallbacks_total",
        kind: Kind::Counter,
        labels: "route",
        help: "Batch calls that trapped or timed out, after which their messages were handled \
               one at a time.",
        samples: Samples::PerRoute(|r| load(&r.metrics.batch_fallbacks)),
    },
    Family {
        name: "sluice_handler_duration_seconds",
        kind: Kind::Histogram,
        labels: "route",
        help: "Handler call duration, in seconds.",
        samples: Samples::Custom(handler_durations),
    },
    Family {
        name: "sluice_dlq_published_total",
        kind: Kind::Counter,
        labels: "route",
        help: "Dead-letter records acknowledged by the broker.",
        samples: Samples::PerRoute(|r| load(&r.metrics.dlq_published)),
    },
    Family {
        name: "sluice_dlq_publish_failures_total",
        kind: Kind::Counter,
        labels: "route",
        help: "Dead-letter records the broker did not acknowledge (each attempt; they are \
               produced again).",
        samples: Samples::PerRoute(|r| load(&r.metrics.dlq_failures)),
    },
    Family {
        name: "sluice_produce_failures_total",
        kind: Kind::Counter,
        labels: "",
        help: "Records (outputs and dead letters) the broker did not acknowledge, each attempt.",
        samples: Samples::One(|s| load(&s.produce_failures)),
    },
    Family {
        name: "sluice_produce_refusals_total",
        kind: Kind::Counter,
        labels: "",
        help: "Records (outputs and dead letters) refused for good: too large, invalid, for a \
               topic that does not exist or may not be written. They are not produced again.",
        samples: Samples::One(Status::produce_refusals),
    },
    Family {
        name: "sluice_dlq_refusals_total",
        kind: Kind::Counter,
        labels: "route",
        help: "Dead-letter records refused for good; the partition stops on the message.",
        samples: Samples::PerRoute(|r| load(&r.metrics.dlq_refusals)),
    },
    Family {
        name: "sluice_partition_restarts_total",
        kind: Kind::Counter,
        labels: "",
        help: "Partition workers that ended early and were restarted from their last stored \
               offset.",
        samples: Samples::One(Status::worker_restarts),
    },
    Family {
        name: "sluice_consumer_record_errors_total",
        kind: Kind::Counter,
        labels: "",
        help: "Consumer errors about a record the Kafka client fetched but could not decode (a \
               corrupt batch, a record over the fetch limit), each time it was reported.",
        samples: Samples::One(|s| load(&s.record_errors)),
    },
    Family {
        name: "sluice_assigned_partitions",
        kind: Kind::Gauge,
        labels: "",
        help: "Partitions the consumer holds.",
        samples: Samples::One(|s| s.assigned() as u64),
    },
    Family {
        name: "sluice_unassigned_seconds",
        kind: Kind::Gauge,
        labels: "",
        help: "How long the consumer has held no partition, once that is longer than its \
               session timeout; 0 otherwise.",
        samples: Samples::One(|s| s.unassigned_for(Instant::now()).map_or(0, |d| d.as_secs())),
    },
    Family {
        name: "sluice_undecodable_partitions",
        kind: Kind::Gauge,
        labels: "",
        help: "Partitions held up by a record the Kafka client cannot decode.",
        samples: Samples::One(|s| s.undecodable().len() as u64),
    },
    Family {
        name: "kafka_event_bus_circuit_state",
        kind: Kind::Gauge,
        labels: "environment, group",
        help: "Broker circuit breaker state: 0 closed, 1 half_open, 2 open.",
        samples: Samples::Custom(broker_circuit_state),
    },
    Family {
        name: "sluice_circuit_transitions_total",
        kind: Kind::Counter,
        labels: "to",
        help: "Broker circuit breaker transitions, by the state entered.",
        samples: Samples::Custom(broker_circuit_transitions),
    },
    Family {
        name: "sluice_route_circuit_state",
        kind: Kind::Gauge,
        labels: "route",
        help: "Handler circuit breaker state per route: 0 closed, 1 half_open, 2 open.",
        samples: Samples::PerRoute(|r| u64::from(r.breaker.state().gauge())),
    },
    Family {
        name: "sluice_route_circuit_transitions_total",
        kind: Kind::Counter,
        labels: "route, to",
        help: "Handler circuit breaker transitions, by route and the state entered.",
        samples: Samples::Custom(route_circuit_transitions),
    },
    Family {
        name: "sluice_consumer_lag",
        kind: Kind::Gauge,
        labels: "topic, partition",
        help: "Messages between the committed offset and the end of each assigned partition, \
               from librdkafka's statistics.",
        samples: Samples::Custom(consumer_lag),
    },
    Family {
        name: "sluice_in_flight_messages",
        kind: Kind::Gauge,
        labels: "",
        help: "Messages received and not yet finished (outputs or dead letter acknowledged).",
        samples: Samples::One(Status::in_flight),
    },
    Family {
        name: "sluice_stopped_partitions",
        kind: Kind::Gauge,
        labels: "",
        help: "Partitions stopped on a message: it failed and no dead-letter topic is \
               configured, or a record of it was refused for good.",
        samples: Samples::One(|s| s.stopped_partitions().len() as u64),
    },
    Family {
        name: "sluice_stalled_partitions",
        kind: Kind::Gauge,
        labels: "",
        help: "Partitions whose lag has not moved for processing.stall_timeout_seconds while \
               they were neither paused, held nor stopped.",
        samples: Samples::One(|s| s.stalled().len() as u64),
    },
    Family {
        name: "sluice_plugin_loads_total",
        kind: Kind::Counter,
        labels: "module",
        help: "Modules loaded, by module.",
        samples: Samples::Custom(|out, name, scrape| {
            for (module, (ok, _)) in &scrape.loads {
                out.sample(name, &[("module", module)], ok);
            }
        }),
    },
    Family {
        name: "sluice_plugin_load_failures_total",
        kind: Kind::Counter,
        labels: "module",
        help: "Module files refused (invalid, wrong world or version), by module.",
        samples: Samples::Custom(|out, name, scrape| {
            for (module, (_, failed)) in &scrape.loads {
                out.sample(name, &[("module", module)], failed);
            }
        }),
    },
    Family {
        name: "sluice_guest_log_lines_dropped_total",
        kind: Kind::Counter,
        labels: "route",
        help: "Log lines (log calls, stdout and stderr lines) of the module serving each route \
               that the per-module rate limit dropped; starts again from 0 when a new module \
               version is loaded.",
        samples: Samples::Custom(guest_log_lines_dropped),
    },
];

/// Renders every metric in the Prometheus text format (version 0.0.4).
pub fn render(status: &Status) -> String {
    let scrape = Scrape {
        status,
        routes: status.routes(),
        loads: status.all_plugin_loads(),
    };
    let mut out = Exposition::default();
    for family in METRICS {
        out.header(family);
        match family.samples {
            Samples::One(read) => out.sample(family.name, &[], read(status)),
            Samples::PerRoute(read) => {
                for r in &scrape.routes {
                    out.sample(family.name, &[("route", &r.topic)], read(r));
                }
            }
            Samples::Custom(write) => write(&mut out, family.name, &scrape),
        }
    }
    out.text
}

/// `sluice_messages_total`: each route's messages by outcome, every
/// dead-lettered one under `dead_lettered` whatever its error type.
fn messages_by_outcome(out: &mut Exposition, name: &str, scrape: &Scrape<'_>) {
    for r in &scrape.routes {
        let m = &r.metrics;
        let counts = [
            load(&m.ok),
            m.dead_lettered.iter().map(load).sum(),
            load(&m.stopped),
            load(&m.held),
        ];
        for (outcome, n) in OUTCOMES.iter().zip(counts) {
            out.sample(name, &[("route", &r.topic), ("outcome", outcome)], n);
        }
    }
}

/// `sluice_dead_letters_total`: each route's dead letters by error type.
fn dead_letters_by_type(out: &mut Exposition, name: &str, scrape: &Scrape<'_>) {
    for r in &scrape.routes {
        for (t, n) in ErrorType::ALL.iter().zip(&r.metrics.dead_lettered) {
            out.sample(
                name,
                &[("route", &r.topic), ("error_type", t.as_str())],
                load(n),
            );
        }
    }
}

/// `sluice_handler_duration_seconds`: each route's cumulative buckets, sum
/// and count.
fn handler_durations(out: &mut Exposition, name: &str, scrape: &Scrape<'_>) {
    for r in &scrape.routes {
        let m = &r.metrics;
        let route = ("route", r.topic.as_str());
        let mut cumulative = 0;
        for (i, n) in m.latency_buckets.iter().enumerate() {
            cumulative += load(n);
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            out.sample(&format!("{name}_bucket"), &[route, ("le", &le)], cumulative);
        }
        let sum = load(&m.latency_sum_nanos) as f64 / 1e9;
        out.sample(&format!("{name}_sum"), &[route], sum);
        out.sample(&format!("{name}_count"), &[route], cumulative);
    }
}

/// `kafka_event_bus_circuit_state`: the broker breaker, labelled with the
/// environment and group.
fn broker_circuit_state(out: &mut Exposition, name: &str, scrape: &Scrape<'_>) {
    let status = scrape.status;
    out.sample(
        name,
        &[
            ("environment", &status.environment),
            ("group", &status.group),
        ],
        status.broker_state().gauge(),
    );
}

/// `sluice_circuit_transitions_total`: the broker breaker's transitions by
/// the state entered.
fn broker_circuit_transitions(out: &mut Exposition, name: &str, scrape: &Scrape<'_>) {
    for state in CircuitState::ALL {
        let n = scrape.status.broker_transitions_to(state);
        out.sample(name, &[("to", state.as_str())], n);
    }
}

/// `sluice_route_circuit_transitions_total`: each handler breaker's
/// transitions by the state entered.
fn route_circuit_transitions(out: &mut Exposition, name: &str, scrape: &Scrape<'_>) {
    for r in &scrape.routes {
        for state in CircuitState::ALL {
            out.sample(
                name,
                &[("route", &r.topic), ("to", state.as_str())],
                r.breaker.transitions_to(state),
            );
        }
    }
}

/// `sluice_consumer_lag`: each assigned partition's lag.
fn consumer_lag(out: &mut Exposition, name: &str, scrape: &Scrape<'_>) {
    for (TopicPartition { topic, partition }, n) in scrape.status.lag() {
        out.sample(
            name,
            &[("topic", &topic), ("partition", &partition.to_string())],
            u64::try_from(n).unwrap_or(0),
        );
    }
}

/// `sluice_guest_log_lines_dropped_total`: for each route that a module
/// serves, that module's dropped log lines.
fn guest_log_lines_dropped(out: &mut Exposition, name: &str, scrape: &Scrape<'_>) {
    for r in &scrape.routes {
        if let Some(m) = r.module() {
            out.sample(name, &[("route", &r.topic)], m.log_lines_dropped());
        }
    }
}

/// The exposition text, written family by family.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// The `# HELP` and `# TYPE` lines of `family`.
    fn header(&mut self, family: &Family) {
        let (name, help, kind) = (family.name, family.help, family.kind.as_str());
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample line, its label values escaped.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
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

/// [`FAMILIES`] from [`METRICS`]: `N` is their length.
const fn summaries<const N: usize>(
    metrics: &[Family],
) -> [(&'static str, &'static str, &'static str); N] {
    let mut out = [("", "", ""); N];
    let mut i = 0;
    while i < N {
        let family = &metrics[i];
        out[i] = (family.name, family.kind.as_str(), family.labels);
        i += 1;
    }
    out
}

fn load(n: &AtomicU64) -> u64 {
    n.load(Ordering::Relaxed)
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
