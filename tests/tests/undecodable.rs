//! A record the Kafka client cannot decode (here a batch that says gzip and
//! is not) is named in health with its partition, offset and error, counted,
//! logged once; under `on_undecodable = "dead-letter"` it becomes a dead
//! letter with its coordinates and the partition goes on, losing nothing.
//!
//! The broker is librdkafka's mock cluster: Nisshi, like Kafka, checks every
//! batch's CRC and decodes it before storing it (so a client meets such a
//! batch only after a broker's storage went bad), while the mock stores what
//! it is sent. Each test counts a few dozen records, well inside the tail
//! the mock keeps.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use sluice_tests::broker::free_port;
use sluice_tests::corrupt::produce_undecodable_batch;
use sluice_tests::daemon::{Daemon, DaemonProcess, config_text, module_route, parse};
use sluice_tests::http;
use sluice_tests::kafka::{produce_sequence_part, read_topic, wait_committed};

const PROGRAM: &str = env!("CARGO_BIN_EXE_sluice-test-daemon");
const LONG: Duration = Duration::from_secs(90);
/// Records before the bad batch, in it, and after it.
const BEFORE: usize = 10;
const BAD: i32 = 3;
const AFTER: usize = 10;

type Mock = MockCluster<'static, DefaultProducerContext>;

/// A mock cluster whose `orders` (one partition) holds `BEFORE` good
/// records, one batch of `BAD` records no client can decode, `AFTER` good
/// records. Returns it and the bad batch's first offset.
async fn orders_with_a_bad_batch() -> (Mock, i64) {
    let mock = MockCluster::new(1).expect("mock cluster");
    for topic in ["orders", "orders.out", "dlq"] {
        mock.create_topic(topic, 1, 1).expect("mock topic");
    }
    let bootstrap = mock.bootstrap_servers();
    produce_sequence_part(&bootstrap, "orders", 1, 0..BEFORE, "order").await;
    let bad = produce_undecodable_batch(&bootstrap, "orders", 0, BAD);
    assert_eq!(bad, BEFORE as i64, "the bad batch follows the good records");
    produce_sequence_part(&bootstrap, "orders", 1, BEFORE..BEFORE + AFTER, "order").await;
    (mock, bad)
}

/// Health, once `done` holds for it (looked at every 200 ms), or the last
/// answer after `LONG`.
async fn health_when(
    http: SocketAddr,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + LONG;
    loop {
        // The daemon process listens a moment after it starts.
        if tokio::net::TcpStream::connect(http).await.is_ok() {
            let health = http::get(http, "/health/event-bus").await.json();
            if done(&health) || Instant::now() >= deadline {
                return health;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never listened on {http}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_route_names_the_partition_offset_and_error_in_health_and_logs_it_once() {
    let (mock, bad) = orders_with_a_bad_batch().await;
    let bootstrap = mock.bootstrap_servers();
    let port = free_port();
    let http = SocketAddr::from(([127, 0, 0, 1], port));
    let text = config_text(
        &bootstrap,
        "stops",
        "",
        &format!(
            "[http]\nlisten = \"{http}\"\n{}",
            module_route("uppercase", "orders", "orders.out", "")
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("sluice.log");
    let daemon = DaemonProcess::start_logging_to(PROGRAM, &text, Some(&log));

    // Named within a minute, with its coordinates, the client's error and
    // the repeats counted; readiness is false.
    let health = health_when(http, |h| {
        h["undecodable_partitions"][0]["repeats"].as_u64() >= Some(10)
    })
    .await;
    let stuck = &health["undecodable_partitions"];
    assert_eq!(stuck.as_array().map(Vec::len), Some(1), "{health}");
    assert_eq!(stuck[0]["topic"], "orders");
    assert_eq!(stuck[0]["partition"], 0);
    assert_eq!(stuck[0]["offset"], bad);
    let error = stuck[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("compressed data"),
        "the client's error: {error}"
    );
    assert_eq!(health["healthy"], false);
    assert!(stuck[0]["for_seconds"].as_u64() < Some(60), "{health}");
    let ready = http::get(http, "/health/ready").await;
    assert_eq!(ready.status, 503, "not ready while a partition is held up");
    let metrics = http::get(http, "/metrics").await.body;
    assert!(
        metrics.contains("\nsluice_undecodable_partitions 1\n"),
        "{metrics}"
    );

    // Nothing before it was lost, nothing behind it was handled, and its
    // offset is not committed past.
    assert_eq!(
        wait_committed(&bootstrap, "test.stops", "orders", &[bad], LONG),
        vec![Some(bad)]
    );
    let out = read_topic(
        &bootstrap,
        "orders.out",
        1,
        BEFORE,
        LONG,
        Duration::from_secs(1),
    );
    assert_eq!(out.len(), BEFORE, "only the records before it are handled");

    // Said once, not twice a second: the error has repeated at least ten
    // times by now.
    let _ = daemon.terminate();
    let log = std::fs::read_to_string(&log).expect("the log");
    let named = log
        .lines()
        .filter(|l| l.contains("cannot decode the record at orders[0] offset"))
        .count();
    assert_eq!(named, 1, "named once:\n{log}");
    let client = log
        .lines()
        .filter(|l| l.contains("Kafka consumer:") && l.contains("compressed data"))
        .count();
    assert_eq!(client, 1, "the client's error is said once:\n{log}");
    assert!(
        log.contains("on_undecodable = \"dead-letter\""),
        "the log says the way past it:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_route_writes_each_undecodable_offset_once_and_goes_on() {
    let (mock, bad) = orders_with_a_bad_batch().await;
    let bootstrap = mock.bootstrap_servers();
    let text = config_text(
        &bootstrap,
        "skips",
        "dead_letter_topic = \"dlq\"",
        &module_route(
            "uppercase",
            "orders",
            "orders.out",
            "on_undecodable = \"dead-letter\"",
        ),
    );
    let daemon = Daemon::start(parse(&text));
    let total = (BEFORE + BAD as usize + AFTER) as i64;
    assert_eq!(
        wait_committed(&bootstrap, "test.skips", "orders", &[total], LONG),
        vec![Some(total)],
        "the partition goes past the batch"
    );
    // Health turns at the next statistics report.
    let deadline = Instant::now() + LONG;
    while !daemon.status.healthy() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(daemon.status.undecodable().is_empty(), "no longer held up");
    assert!(daemon.status.healthy(), "healthy again");
    daemon.stop().await;

    let out = read_topic(
        &bootstrap,
        "orders.out",
        1,
        BEFORE + AFTER,
        LONG,
        Duration::from_secs(1),
    );
    let mut values: Vec<String> = out.iter().map(|r| r.text()).collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), BEFORE + AFTER, "every good record, once");
    let letters = read_topic(
        &bootstrap,
        "dlq",
        1,
        BAD as usize,
        LONG,
        Duration::from_secs(1),
    );
    let mut offsets: Vec<i64> = letters
        .iter()
        .map(|r| {
            let e: serde_json::Value =
                serde_json::from_slice(r.value.as_deref().unwrap_or_default()).expect("JSON");
            assert_eq!(e["error_type"], "UndecodableRecord", "{e}");
            assert_eq!(e["original_topic"], "orders");
            assert_eq!(e["original_message"]["partition"], 0);
            let reason = e["failure_reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains("compressed data"),
                "the client's error: {reason}"
            );
            // The runbook's envelope gives the offset as a string.
            e["original_message"]["offset"]
                .as_str()
                .and_then(|o| o.parse().ok())
                .expect("an offset")
        })
        .collect();
    offsets.sort_unstable();
    let expected: Vec<i64> = (bad..bad + i64::from(BAD)).collect();
    assert_eq!(offsets, expected, "one dead letter per undecodable offset");
}
