//! The daemon against a hostile handler (`tests/fixtures/hostile`) on one
//! route while another route flows: a handler that sleeps for an hour is
//! stopped at its deadline and frees its only concurrency slot, outputs over
//! a bound and a huge reason end in dead letters that say why in bounded
//! text, a flood of log lines is rate-limited and counted, and shutdown is
//! not held by a handler that waits.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text, module_route, parse};
use sluice_tests::kafka::{Record, produce_values, read_topic};

const LONG: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(1);

fn envelope(record: &Record) -> serde_json::Value {
    serde_json::from_slice(record.value.as_deref().unwrap_or_default()).expect("a JSON envelope")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_handler_is_held_by_its_limits_while_another_route_flows() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["naps", "naps.out", "flow", "flow.out", "dlq"] {
        broker.create_topic(topic, 1);
    }
    let rest = module_route(
        "hostile",
        "naps",
        "naps.out",
        "timeout_ms = 300\nmax_retry_attempts = 0\nmax_outputs = 10",
    ) + &module_route("uppercase", "flow", "flow.out", "");
    let hostile: Vec<String> = [
        "sleep:3600000",
        "poll:3600000",
        "outputs:5000",
        "bytes:2000000",
        "reason:100000",
        "log:1000",
        "fine",
    ]
    .map(String::from)
    .to_vec();
    let flow: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    produce_values(&bootstrap, "naps", 1, &hostile).await;
    produce_values(&bootstrap, "flow", 1, &flow).await;
    let config = config_text(&bootstrap, "hostile", "dead_letter_topic = \"dlq\"", &rest);
    let mut config = parse(&config);
    // One concurrency slot: a handler that kept it while it slept would stop
    // every route.
    config.processing.concurrency = 1;
    let drain = config.processing.drain_timeout();
    let daemon = Daemon::start(config);

    let flowed = read_topic(&bootstrap, "flow.out", 1, flow.len(), LONG, SETTLE);
    let expected: Vec<String> = (0..20).map(|i| format!("M{i}")).collect();
    assert_eq!(
        flowed.iter().map(Record::text).collect::<Vec<_>>(),
        expected
    );
    let passed = read_topic(&bootstrap, "naps.out", 1, 1, LONG, SETTLE);
    assert_eq!(
        passed.iter().map(Record::text).collect::<Vec<_>>(),
        ["fine"]
    );

    let letters = read_topic(&bootstrap, "dlq", 1, 5, LONG, SETTLE);
    let by_value: BTreeMap<String, serde_json::Value> = letters
        .iter()
        .map(envelope)
        .map(|e| {
            let value = e["original_message"]["value"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            (value, e)
        })
        .collect();
    let error = |value: &str| {
        let e = &by_value[value];
        (
            e["error_type"].as_str().unwrap_or("").to_owned(),
            e["failure_reason"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert_eq!(by_value.len(), 5, "{by_value:#?}");
    for value in ["sleep:3600000", "poll:3600000"] {
        let (kind, reason) = error(value);
        assert_eq!(kind, "HandlerTimeout", "{value}: {reason}");
    }
    let (kind, reason) = error("outputs:5000");
    assert_eq!(kind, "InvalidOutput");
    assert!(
        reason.contains("max_outputs = 10") && reason.contains("5000"),
        "{reason}"
    );
    let (kind, reason) = error("bytes:2000000");
    assert_eq!(kind, "InvalidOutput");
    assert!(reason.contains("max_output_bytes = 1000000"), "{reason}");
    let (kind, reason) = error("reason:100000");
    assert_eq!(kind, "HandlerError");
    assert!(
        reason.len() < 1200,
        "the reason is cut: {} bytes",
        reason.len()
    );
    assert!(reason.contains("[cut from 100000 bytes]"), "{reason}");
    assert!(!reason.contains('\n'), "no raw newline: {reason}");
    assert!(!daemon.has_exited());

    // A flood of log lines is cut by the module's rate limit, and the
    // lines dropped are counted where an operator looks (the message before
    // "fine" made them, so they are counted by now).
    let metrics = sluice::metrics::render(&daemon.status);
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_guest_log_lines_dropped_total{route=\"naps\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no dropped-lines counter for naps:\n{metrics}"));
    assert!(
        dropped >= 500,
        "most of 1000 lines in a burst are dropped: {dropped}"
    );

    // A handler asleep for an hour does not hold shutdown.
    let consumed = daemon.status.consumed();
    produce_values(&bootstrap, "naps", 1, &["sleep:3600000".to_owned()]).await;
    let taken = async {
        while daemon.status.consumed() == consumed {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(LONG, taken)
        .await
        .expect("the daemon takes the message");
    tokio::time::timeout(drain + Duration::from_secs(2), daemon.stop())
        .await
        .expect("the daemon stops within its drain timeout and the call's deadline");
}
