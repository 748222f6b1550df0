//! Hostile records and broker refusals against a real broker: header
//! keys that are not UTF-8, outputs and dead letters past the record limit,
//! a dead-letter topic that refuses every record, and topics that do not
//! exist. Each test checks that the daemon keeps running, that the partition
//! moves on (or stops visibly, never silently), and that nothing is lost.

use std::time::Duration;

use base64::Engine as _;
use sluice::pipeline::CircuitState;
use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text, module_route, parse};
use sluice_tests::http::get;
use sluice_tests::kafka::{Record, Send, produce, produce_raw_headers, read_topic, wait_committed};

const LONG: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(2);

fn envelope(record: &Record) -> serde_json::Value {
    serde_json::from_slice(record.value.as_deref().unwrap_or_default()).expect("a JSON envelope")
}

fn route(topic: &str, output: &str, extra: &str) -> String {
    module_route("refusals", topic, output, extra)
}

async fn produce_texts(bootstrap: &str, topic: &str, values: &[&[u8]]) {
    produce(
        bootstrap,
        topic,
        values.iter().map(|v| Send {
            partition: Some(0),
            key: None,
            value: v,
            headers: &[],
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_key_that_is_not_utf8_reaches_the_handler_and_its_dead_letter_keeps_its_bytes() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["in", "out", "dlq"] {
        broker.create_topic(topic, 1);
    }
    let key: &[u8] = b"\xff\xfetrace";
    produce_raw_headers(&bootstrap, "in", 0, b"first", &[(key, b"v1")]).await;
    produce_raw_headers(&bootstrap, "in", 0, b"error:10", &[(key, b"v2")]).await;
    produce_texts(&bootstrap, "in", &[b"last"]).await;
    let daemon = Daemon::start(parse(&config_text(
        &bootstrap,
        "raw-keys",
        "dead_letter_topic = \"dlq\"",
        &route("in", "out", ""),
    )));

    let out = read_topic(&bootstrap, "out", 1, 2, LONG, SETTLE);
    let texts: Vec<String> = out.iter().map(Record::text).collect();
    assert_eq!(texts, ["first", "last"], "the partition moved on past both");
    assert_eq!(
        out[0].header("\u{fffd}\u{fffd}trace").as_deref(),
        Some("v1"),
        "the handler saw the key lossily decoded: {:?}",
        out[0].headers
    );
    let dlq = read_topic(&bootstrap, "dlq", 1, 1, LONG, SETTLE);
    assert_eq!(dlq.len(), 1);
    let header = &envelope(&dlq[0])["original_message"]["headers"][0];
    assert_eq!(header["key_encoding"], "base64");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(header["key"].as_str().expect("a base64 key"))
        .expect("valid base64");
    assert_eq!(raw, key, "the dead letter keeps the key's bytes");
    assert_eq!(
        wait_committed(&bootstrap, "test.raw-keys", "in", &[3], LONG),
        [Some(3)]
    );
    assert!(!daemon.has_exited(), "the daemon is still running");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_past_the_record_limit_is_dead_lettered_without_opening_the_broker_breaker() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["in", "out", "dlq"] {
        broker.create_topic(topic, 1);
    }
    // The route lets an output of up to 1,000,000 bytes of key, value and
    // headers (`max_output_bytes`, the producer's `message.max.bytes`)
    // through; the producer also counts a record's framing (up to 36 bytes),
    // so this one passes the route's bound and is refused by the producer.
    produce_texts(&bootstrap, "in", &[b"a", b"big:999990", b"b", b"c"]).await;
    let daemon = Daemon::start(parse(&config_text(
        &bootstrap,
        "too-large",
        "dead_letter_topic = \"dlq\"\ncircuit_breaker_threshold = 1",
        &route("in", "out", ""),
    )));

    let out = read_topic(&bootstrap, "out", 1, 3, LONG, SETTLE);
    let texts: Vec<String> = out.iter().map(Record::text).collect();
    assert_eq!(texts, ["a", "b", "c"]);
    let dlq = read_topic(&bootstrap, "dlq", 1, 1, LONG, SETTLE);
    assert_eq!(dlq.len(), 1, "one dead letter, not one per attempt");
    let e = envelope(&dlq[0]);
    assert_eq!(e["error_type"], "InvalidOutput");
    assert_eq!(e["original_message"]["value"], "big:999990");
    let reason = e["failure_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("\"out\"") && reason.contains("too large"),
        "the reason names the topic and the error: {reason}"
    );
    assert_eq!(
        wait_committed(&bootstrap, "test.too-large", "in", &[4], LONG),
        [Some(4)]
    );
    assert_eq!(
        daemon.status.broker_state(),
        CircuitState::Closed,
        "a record refused for good says nothing about the broker (threshold 1)"
    );
    assert!(daemon.status.produce_refusals() >= 1);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_past_the_record_limit_are_cut_to_fit_with_markers() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["in", "out", "dlq"] {
        broker.create_topic(topic, 1);
    }
    // A binary message whose envelope grows by base64 past 1 MB, and an
    // error whose reason is 3 MB.
    let mut binary = b"error:10\0".to_vec();
    binary.extend((0..800_000u32).map(|i| (i % 200) as u8 | 0x80));
    produce_texts(&bootstrap, "in", &[&binary, b"error:3000000", b"after"]).await;
    let daemon = Daemon::start(parse(&config_text(
        &bootstrap,
        "cut",
        "dead_letter_topic = \"dlq\"",
        &route("in", "out", ""),
    )));

    let dlq = read_topic(&bootstrap, "dlq", 1, 2, LONG, SETTLE);
    assert_eq!(dlq.len(), 2, "both failures are dead-lettered");
    for record in &dlq {
        let size = record.value.as_ref().map_or(0, Vec::len);
        assert!(
            size < 1_000_000,
            "a dead letter fits in a record: {size} bytes"
        );
    }
    let binary_letter = envelope(&dlq[0]);
    let original = &binary_letter["original_message"];
    assert_eq!(original["value_truncated"], true);
    assert_eq!(original["original_value_size"], binary.len());
    assert_eq!(
        original["offset"], "0",
        "the coordinates locate the whole record"
    );
    assert_eq!(original["partition"], 0);
    // A guest's reason is cut where it leaves the guest, marked, and the
    // letter keeps it whole from there.
    let reason_letter = envelope(&dlq[1]);
    let reason = reason_letter["failure_reason"].as_str().unwrap_or_default();
    assert!(
        reason.len() <= 4096 && reason.contains("[cut from 3000000 bytes]"),
        "{reason}"
    );
    assert_eq!(reason_letter["original_message"]["value"], "error:3000000");
    let out = read_topic(&bootstrap, "out", 1, 1, LONG, Duration::ZERO);
    assert_eq!(out.first().map(Record::text).as_deref(), Some("after"));
    assert_eq!(
        wait_committed(&bootstrap, "test.cut", "in", &[3], LONG),
        [Some(3)]
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_that_refuses_every_record_stops_only_its_partition_visibly() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["in", "out", "fine", "fine.out", "dlq"] {
        broker.create_topic(topic, 1);
    }
    produce_texts(&bootstrap, "in", &[b"a", b"error:2000", b"b"]).await;
    let routes = route("in", "out", "max_output_bytes = 1000")
        + &route("fine", "fine.out", "max_output_bytes = 1000");
    // The producer takes no record over 1000 bytes: a dead letter of a
    // 2000-byte reason does not fit even at its smallest (its
    // `failure_reason` header alone keeps 1 KiB of it), while small outputs
    // do.
    let text = config_text(
        &bootstrap,
        "refusing",
        "dead_letter_topic = \"dlq\"",
        &routes,
    )
    .replace(
        "\"reconnect.backoff.max.ms\" = 1000",
        "\"reconnect.backoff.max.ms\" = 1000\n\"message.max.bytes\" = 1000",
    );
    let daemon = Daemon::start(parse(&text));
    let addr = daemon.http_addr().await;

    let out = read_topic(&bootstrap, "out", 1, 1, LONG, Duration::ZERO);
    assert_eq!(out.first().map(Record::text).as_deref(), Some("a"));
    let mut stopped = daemon.status.stopped_partitions();
    let deadline = std::time::Instant::now() + LONG;
    while stopped.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stopped = daemon.status.stopped_partitions();
    }
    let reason = stopped
        .get(&sluice::status::TopicPartition::new("in", 0))
        .unwrap_or_else(|| panic!("partition in/0 is stopped: {stopped:?}"));
    assert!(
        reason.starts_with("offset 1: HandlerError") && reason.contains("dlq"),
        "{reason}"
    );
    let health = get(addr, "/health/event-bus").await;
    let h = health.json();
    assert_eq!(h["healthy"], false, "{}", health.body);
    assert_eq!(h["stopped_partitions"][0]["topic"], "in");
    assert_eq!(get(addr, "/health/ready").await.status, 503);
    let metrics = get(addr, "/metrics").await.body;
    assert!(
        metrics.contains("sluice_dlq_refusals_total{route=\"in\"} 1")
            && metrics.contains("sluice_stopped_partitions 1"),
        "{metrics}"
    );

    // Other routes keep flowing, and the broker breaker stays closed.
    produce_texts(&bootstrap, "fine", &[b"x1", b"x2"]).await;
    let fine = read_topic(&bootstrap, "fine.out", 1, 2, LONG, Duration::ZERO);
    assert_eq!(fine.len(), 2);
    assert_eq!(daemon.status.broker_state(), CircuitState::Closed);
    // Nothing at or after the message is committed (the message behind it,
    // `b`, may have been handled; it is delivered again).
    assert_eq!(
        wait_committed(&bootstrap, "test.refusing", "in", &[1], LONG),
        [Some(1)]
    );
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        sluice::pipeline::committed_offsets(&bootstrap, "test.refusing", "in", 1, LONG)
            .expect("offsets"),
        [Some(1)],
        "still nothing past the stopped message"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_whose_output_or_dead_letter_topic_does_not_exist_refuses_to_start() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    broker.create_topic("in", 1);
    let daemon = Daemon::start(parse(&config_text(
        &bootstrap,
        "missing",
        "dead_letter_topic = \"no-such-dlq\"",
        &route("in", "no-such-out", ""),
    )));
    let error = tokio::time::timeout(LONG, daemon.exited())
        .await
        .expect("the daemon stops on its own")
        .expect_err("it refuses to start");
    let text = format!("{error:#}");
    assert!(
        text.contains("output_topics \"no-such-out\"")
            && text.contains("dead_letter_topic \"no-such-dlq\"")
            && text.contains("create them"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_worker_that_dies_is_restarted_from_its_last_stored_offset() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    // The injected fault is global to this process, where other tests also
    // consume a topic named "in": this test's topics are its own.
    for topic in ["dies", "dies.out"] {
        broker.create_topic(topic, 1);
    }
    let first: Vec<Vec<u8>> = (0..5).map(|i| format!("a{i}").into_bytes()).collect();
    let first: Vec<&[u8]> = first.iter().map(Vec::as_slice).collect();
    produce_texts(&bootstrap, "dies", &first).await;
    let daemon = Daemon::start(parse(&config_text(
        &bootstrap,
        "restart",
        "",
        &route("dies", "dies.out", ""),
    )));
    let out = read_topic(&bootstrap, "dies.out", 1, 5, LONG, Duration::ZERO);
    assert_eq!(out.len(), 5);
    assert_eq!(
        wait_committed(&bootstrap, "test.restart", "dies", &[5], LONG),
        [Some(5)]
    );

    // The next handler thread dies with the batch it took.
    sluice::pipeline::faults::panic_next_handler_thread("dies");
    let second: Vec<Vec<u8>> = (0..5).map(|i| format!("b{i}").into_bytes()).collect();
    let second: Vec<&[u8]> = second.iter().map(Vec::as_slice).collect();
    produce_texts(&bootstrap, "dies", &second).await;
    let out = read_topic(&bootstrap, "dies.out", 1, 10, LONG, SETTLE);
    let texts: Vec<String> = out.iter().map(Record::text).collect();
    assert_eq!(
        texts,
        ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2", "b3", "b4"],
        "the messages the dead worker held are handled by its successor, in order"
    );
    assert_eq!(
        wait_committed(&bootstrap, "test.restart", "dies", &[10], LONG),
        [Some(10)]
    );
    assert_eq!(daemon.status.worker_restarts(), 1);
    assert!(daemon.status.healthy());
    daemon.stop().await;
}
