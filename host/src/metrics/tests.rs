use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::render;
use crate::config::Config;
use crate::policy::ErrorType;
use crate::status::{ModuleInfo, PartitionFlags, Status, Stuck, TopicPartition};
use crate::wasm::{Runtime, RuntimeConfig};

/// A status with something in every metric: two routes (one of them
/// serving a module, one with its breaker open), a label value that needs
/// escaping, lag, a stall, a stopped and an undecodable partition, module
/// loads and refusals.
fn busy_status() -> Arc<Status> {
    let text = "[kafka]\nenvironment = \"prod \\\"eu\\\"\\\\west\\n2\"\ngroup = \"orders\"\ncircuit_breaker_threshold = 1\n\
                [processing]\nstall_timeout_seconds = 60.0\n\
                [[routes]]\ntopic = \"in\"\nmodule = \"m\"\n\
                [[routes]]\ntopic = \"orders.v2\"\nmodule = \"m\"\ncircuit_breaker_threshold = 1\n";
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::create_dir(dir.path().join("plugins")).expect("plugins directory");
    std::fs::write(dir.path().join("plugins/m.wasm"), b"").expect("module file");
    let config = Config::parse(text, dir.path(), &|_| None).expect("config");
    let status = Status::new(&config);
    status.set_started(true);
    status.set_reachable(true);
    for _ in 0..12 {
        status.count_consumed();
    }
    status.produce_failures.store(4, Ordering::Relaxed);
    status.produce_refusals.store(2, Ordering::Relaxed);
    status.worker_restarts.store(1, Ordering::Relaxed);
    status.record_errors.store(3, Ordering::Relaxed);
    status.set_assigned(3, Instant::now());
    status.count_plugin_load("m", true);
    status.count_plugin_load("m", true);
    status.count_plugin_load("m", false);
    status.count_plugin_load("old", false);

    let long_ago = Instant::now()
        .checked_sub(Duration::from_secs(120))
        .expect("the machine has been up for two minutes");
    status.set_lag(
        BTreeMap::from([
            (TopicPartition::new("in", 0), 5),
            (TopicPartition::new("in", 1), 0),
            (TopicPartition::new("orders.v2", 2), 7),
        ]),
        long_ago,
    );
    let flags = PartitionFlags {
        in_flight: Arc::new(AtomicU64::new(6)),
        paused: Arc::new(AtomicBool::new(false)),
    };
    status.watch_partition(&TopicPartition::new("in", 1), flags);
    status.stop(&TopicPartition::new("in", 1), "it failed".to_owned());
    let stuck = Stuck {
        offset: 40,
        error: "a corrupt batch".to_owned(),
        since: Instant::now(),
        repeats: 2,
    };
    status.set_undecodable(
        BTreeMap::from([(TopicPartition::new("orders.v2", 3), stuck)]),
        |_| String::new(),
    );
    let broker = crate::breaker::Breaker::new("broker", 1, Duration::from_secs(60));
    status.observe_broker(broker.view());
    broker.admission().report(false);
    broker.reset();

    let route = status.route("in").expect("route in");
    let m = &route.metrics;
    m.ok.store(9, Ordering::Relaxed);
    m.stopped.store(1, Ordering::Relaxed);
    m.held.store(0, Ordering::Relaxed);
    m.retries.store(2, Ordering::Relaxed);
    m.batch_calls.store(5, Ordering::Relaxed);
    m.batch_fallbacks.store(1, Ordering::Relaxed);
    m.dlq_published.store(3, Ordering::Relaxed);
    m.dlq_failures.store(1, Ordering::Relaxed);
    m.dlq_refusals.store(1, Ordering::Relaxed);
    m.dead_letter(ErrorType::HandlerError);
    m.dead_letter(ErrorType::HandlerError);
    m.dead_letter(ErrorType::UndecodableRecord);
    for micros in [30, 80, 700, 700, 40_000, 3_000_000, 9_000_000] {
        m.observe(Duration::from_micros(micros));
    }
    route.set_module(Some(serving_module()));

    let other = status.route("orders.v2").expect("route orders.v2");
    other.metrics.held.store(4, Ordering::Relaxed);
    other.metrics.observe(Duration::from_millis(2));
    other.breaker.admission().report(false);
    status
}

/// A module as reported while it serves: the uppercase example, loaded.
fn serving_module() -> ModuleInfo {
    let runtime = Runtime::new(RuntimeConfig {
        pooling: false,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let plugin = runtime
        .load_file(sluice_test_artifacts::UPPERCASE.as_ref())
        .expect("the uppercase example loads");
    ModuleInfo::loaded(&plugin, Duration::from_millis(1))
}

/// The exposition of [`busy_status`], byte for byte, as `busy_status.prom`
/// holds it: every family's help, type and samples, in order.
#[test]
fn the_exposition_of_a_busy_status_is_pinned() {
    let text = render(&busy_status());
    let expected = include_str!("busy_status.prom");
    for (i, (got, want)) in text.lines().zip(expected.lines()).enumerate() {
        assert_eq!(got, want, "line {}", i + 1);
    }
    assert_eq!(text, expected);
}
