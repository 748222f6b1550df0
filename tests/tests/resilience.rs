//! Retries, the handler and broker circuit breakers, and graceful
//! degradation: against Nisshi (real restarts) and librdkafka's mock cluster
//! (injected produce failures).

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use sluice::pipeline::{CircuitState, committed_offsets};
use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text, misbehave_route, parse, until_breaker};
use sluice_tests::kafka::{
    Record, dead_letter_values, produce_values, read_topic, read_until, wait_committed,
};

const LONG: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(2);

fn envelope(record: &Record) -> serde_json::Value {
    serde_json::from_slice(record.value.as_deref().unwrap_or_default()).expect("a JSON envelope")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_succeed_within_the_cap_and_a_poison_message_only_costs_its_retries() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["in", "out", "traps", "dlq"] {
        broker.create_topic(topic, 1);
    }
    let routes = misbehave_route(
        "in",
        "out",
        "timeout_ms = 100\nmax_retry_attempts = 3\ncircuit_breaker_threshold = 2",
    ) + &misbehave_route(
        "traps",
        "out",
        "max_retry_attempts = 2\nretry_on = [\"trap\"]",
    );
    let kafka = "dead_letter_topic = \"dlq\"\nretry_backoff_base = 0.1\nretry_backoff_max = 0.2";
    let values: Vec<String> = ["ok:a", "retry:4", "loop", "ok:b", "retry:5", "ok:c"]
        .map(String::from)
        .to_vec();
    produce_values(&bootstrap, "in", 1, &values).await;
    produce_values(&bootstrap, "traps", 1, &["panic".into(), "retry:2".into()]).await;
    let daemon = Daemon::start(parse(&config_text(&bootstrap, "retries", kafka, &routes)));

    let outputs = read_topic(&bootstrap, "out", 1, 4, LONG, SETTLE);
    let texts: Vec<String> = outputs.iter().map(Record::text).collect();
    assert_eq!(
        texts,
        ["a", "retry:4", "b", "c"],
        "retry:4 succeeds on its fourth attempt (the third retry); the partition moves on past \
         the poison message, in order"
    );
    let dlq = read_topic(&bootstrap, "dlq", 1, 4, LONG, SETTLE);
    let mut letters: Vec<(String, String, u64)> = dlq
        .iter()
        .map(envelope)
        .map(|e| {
            (
                e["original_message"]["value"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                e["error_type"].as_str().unwrap_or("").to_owned(),
                e["retry_count"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    letters.sort();
    let expected = [
        ("loop", "HandlerTimeout", 3),
        // retry_on = ["trap"]: a panic is retried, a retryable error is not.
        ("panic", "HandlerTrap", 2),
        ("retry:2", "RetriesExhausted", 0),
        ("retry:5", "RetriesExhausted", 3),
    ]
    .map(|(v, t, n)| (v.to_owned(), t.to_owned(), n));
    assert_eq!(letters, expected);
    assert_eq!(
        daemon.status.route_breaker("in").map(|b| b.state()),
        Some(CircuitState::Closed),
        "two failures that are not consecutive do not open a threshold-2 breaker"
    );
    let committed = wait_committed(&bootstrap, "test.retries", "in", &[6], LONG);
    assert_eq!(committed, [Some(6)]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_always_times_out_opens_its_breaker_and_holds_its_messages() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["slow", "slow.out", "fine", "fine.out", "dlq"] {
        broker.create_topic(topic, 1);
    }
    let threshold = 3;
    let routes = misbehave_route(
        "slow",
        "slow.out",
        &format!(
            "timeout_ms = 50\nmax_retry_attempts = 1\ncircuit_breaker_threshold = {threshold}\n\
             circuit_breaker_reset_timeout = 1.0"
        ),
    ) + r#"
[[routes]]
topic = "fine"
module = "uppercase"
output_topics = ["fine.out"]
"#;
    let kafka = "dead_letter_topic = \"dlq\"\nretry_backoff_base = 0.1";
    produce_values(&bootstrap, "slow", 1, &vec!["loop".to_owned(); 12]).await;
    let daemon = Daemon::start(parse(&config_text(&bootstrap, "held", kafka, &routes)));
    let breaker = daemon
        .status
        .route_breaker("slow")
        .expect("the route has a breaker")
        .view();

    // Opened, then two probes re-ran the held message and failed.
    until_breaker(&breaker, "the breaker opened three times", |b| {
        b.transitions_to(CircuitState::Open) >= 3
    })
    .await;
    assert!(breaker.transitions_to(CircuitState::HalfOpen) >= 2);

    // Other routes keep flowing while this one is held.
    let values: Vec<String> = (0..10).map(|i| format!("x{i}")).collect();
    produce_values(&bootstrap, "fine", 1, &values).await;
    let fine = read_topic(&bootstrap, "fine.out", 1, 10, LONG, Duration::ZERO);
    assert_eq!(fine.len(), 10);
    assert_eq!(fine[9].text(), "X9");

    // The messages before the one that opened the breaker were dead-lettered;
    // that one and everything behind it are held.
    let dlq = read_topic(&bootstrap, "dlq", 1, threshold - 1, LONG, SETTLE);
    assert_eq!(
        dlq.len(),
        threshold - 1,
        "dead letters while the breaker is open"
    );
    assert!(
        dlq.iter()
            .all(|r| envelope(r)["error_type"] == "HandlerTimeout")
    );
    assert_ne!(breaker.state(), CircuitState::Closed);
    let committed = committed_offsets(&bootstrap, "test.held", "slow", 1, LONG).expect("offsets");
    assert!(
        committed[0].unwrap_or(0) <= dlq.len() as i64,
        "nothing past the held message is committed: {committed:?}"
    );
    assert_eq!(daemon.status.broker_state(), CircuitState::Closed);
    daemon.stop().await;
}

/// A mock cluster of two brokers: `in` led by broker 1 (with the group
/// coordinator), `out` by broker 2, so that broker 2 going down fails every
/// output while input stays readable and writable.
fn split_cluster(group: &str) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(2).expect("mock cluster");
    for topic in ["in", "out"] {
        mock.create_topic(topic, 1, 1).expect("mock topic");
    }
    mock.partition_leader("in", 0, Some(1)).expect("leader");
    mock.partition_leader("out", 0, Some(2)).expect("leader");
    mock.coordinator(MockCoordinator::Group(group.to_owned()), 1)
        .expect("coordinator");
    mock
}

const BREAKER_KAFKA: &str = "timeout_seconds = 1\ncircuit_breaker_threshold = 3\n\
                             circuit_breaker_reset_timeout = 1.0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_output_broker_opens_the_breaker_pauses_consumption_and_loses_nothing() {
    let mock = split_cluster("test.outage");
    let bootstrap = mock.bootstrap_servers();
    let first: Vec<String> = (0..30).map(|i| format!("a{i}")).collect();
    produce_values(&bootstrap, "in", 1, &first).await;
    mock.broker_down(2).expect("broker down");

    let routes = misbehave_route("in", "out", "");
    let daemon = Daemon::start(parse(&config_text(
        &bootstrap,
        "outage",
        BREAKER_KAFKA,
        &routes,
    )));
    let breaker = daemon.broker().await;
    until_breaker(&breaker, "the broker breaker opened", |b| {
        b.state() == CircuitState::Open
    })
    .await;
    let committed = committed_offsets(&bootstrap, "test.outage", "in", 1, LONG).expect("offsets");
    assert_eq!(
        committed,
        [None],
        "no output was acknowledged, so nothing is committed"
    );

    // While open, new input is not consumed, across a failed probe.
    let consumed = daemon.status.consumed();
    let second: Vec<String> = (0..30).map(|i| format!("b{i}")).collect();
    produce_values(&bootstrap, "in", 1, &second).await;
    let opened = breaker.transitions_to(CircuitState::Open);
    until_breaker(
        &breaker,
        "a probe failed and the breaker opened again",
        |b| b.transitions_to(CircuitState::Open) > opened,
    )
    .await;
    assert_eq!(
        daemon.status.consumed(),
        consumed,
        "consumption is paused while the circuit is open"
    );

    mock.broker_up(2).expect("broker up");
    until_breaker(&breaker, "a probe succeeded", |b| {
        b.state() == CircuitState::Closed
    })
    .await;
    let expected: BTreeSet<String> = first.iter().chain(&second).cloned().collect();
    let outputs = read_until(&bootstrap, "out", 1, LONG, |records| {
        let seen: BTreeSet<String> = records.iter().map(Record::text).collect();
        expected.is_subset(&seen)
    });
    let seen: BTreeSet<String> = outputs.iter().map(Record::text).collect();
    let missing: Vec<&String> = expected.difference(&seen).collect();
    assert!(missing.is_empty(), "missing outputs: {missing:?}");
    assert!(breaker.transitions_to(CircuitState::Closed) >= 1);
    let committed = wait_committed(&bootstrap, "test.outage", "in", &[60], LONG);
    assert_eq!(committed, [Some(60)]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_produce_errors_hold_dead_letters_and_commits_until_they_clear() {
    let mock = MockCluster::new(1).expect("mock cluster");
    for topic in ["in", "out", "dlq"] {
        mock.create_topic(topic, 1, 1).expect("mock topic");
    }
    let bootstrap = mock.bootstrap_servers();
    let values: Vec<String> = (0..20).map(|i| format!("permanent:{i}")).collect();
    produce_values(&bootstrap, "in", 1, &values).await;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 10_000],
    );

    let routes = misbehave_route("in", "out", "");
    let kafka = format!("{BREAKER_KAFKA}\ndead_letter_topic = \"dlq\"");
    let daemon = Daemon::start(parse(&config_text(&bootstrap, "refused", &kafka, &routes)));
    let breaker = daemon.broker().await;
    until_breaker(&breaker, "the broker breaker opened", |b| {
        b.state() == CircuitState::Open
    })
    .await;
    let committed = committed_offsets(&bootstrap, "test.refused", "in", 1, LONG).expect("offsets");
    assert_eq!(
        committed,
        [None],
        "a message whose dead letter was refused is not committed"
    );

    mock.clear_request_errors(RDKafkaApiKey::Produce);
    until_breaker(&breaker, "a probe succeeded", |b| {
        b.state() == CircuitState::Closed
    })
    .await;
    let dlq = read_until(&bootstrap, "dlq", 1, LONG, |records| {
        dead_letter_values(records).len() >= values.len()
    });
    assert_eq!(dead_letter_values(&dlq), values.iter().cloned().collect());
    let committed = wait_committed(&bootstrap, "test.refused", "in", &[20], LONG);
    assert_eq!(committed, [Some(20)]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing() {
    let mut broker = Broker::start_persistent();
    let bootstrap = broker.bootstrap();
    for (topic, partitions) in [("in", 2), ("out", 2), ("dlq", 1)] {
        broker.create_topic(topic, partitions);
    }
    let value = |i: usize| {
        if i % 10 == 3 {
            format!("permanent:{i}")
        } else {
            format!("ok:v{i}")
        }
    };
    let routes = misbehave_route("in", "out", "");
    let kafka = "dead_letter_topic = \"dlq\"\ntimeout_seconds = 5\n\
                 circuit_breaker_reset_timeout = 1.0";
    let first: Vec<String> = (0..200).map(value).collect();
    produce_values(&bootstrap, "in", 2, &first).await;
    let daemon = Daemon::start(parse(&config_text(&bootstrap, "restart", kafka, &routes)));
    let started = read_until(&bootstrap, "out", 2, LONG, |r| r.len() >= 20);
    assert!(
        started.len() >= 20,
        "the stream is flowing before the restart"
    );

    broker.restart();
    let second: Vec<String> = (200..400).map(value).collect();
    produce_values(&bootstrap, "in", 2, &second).await;

    let want_out: BTreeSet<String> = (0..400)
        .filter(|i| i % 10 != 3)
        .map(|i| format!("v{i}"))
        .collect();
    let want_dlq: BTreeSet<String> = (0..400)
        .filter(|i| i % 10 == 3)
        .map(|i| format!("permanent:{i}"))
        .collect();
    let out = read_until(&bootstrap, "out", 2, LONG, |records| {
        want_out.is_subset(&records.iter().map(Record::text).collect())
    });
    let dlq = read_until(&bootstrap, "dlq", 1, LONG, |records| {
        want_dlq.is_subset(&dead_letter_values(records))
    });
    let seen_out: BTreeSet<String> = out.iter().map(Record::text).collect();
    let missing: Vec<&String> = want_out.difference(&seen_out).collect();
    assert!(
        missing.is_empty(),
        "outputs missing after the restart: {missing:?}"
    );
    let seen_dlq = dead_letter_values(&dlq);
    let missing: Vec<&String> = want_dlq.difference(&seen_dlq).collect();
    assert!(
        missing.is_empty(),
        "dead letters missing after the restart: {missing:?}"
    );
    let committed = wait_committed(&bootstrap, "test.restart", "in", &[200, 200], LONG);
    assert_eq!(committed, [Some(200), Some(200)]);
    assert!(!daemon.has_exited());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_before_the_broker_consumes_once_it_appears() {
    let mut broker = Broker::start_persistent();
    let bootstrap = broker.bootstrap();
    broker.create_topic("in", 1);
    broker.create_topic("in.out", 1);
    broker.stop();

    let routes = r#"
[[routes]]
topic = "in"
module = "uppercase"
output_topics = ["in.out"]
"#;
    let daemon = Daemon::start(parse(&config_text(&bootstrap, "early", "", routes)));
    let mut reachable = daemon.status.broker_reachable();
    tokio::time::timeout(LONG, reachable.wait_for(|r| *r == Some(false)))
        .await
        .expect("the daemon reports that no broker is reachable")
        .expect("status lives");
    assert!(!daemon.has_exited(), "the daemon stays up without a broker");

    broker.start_again();
    let values: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    produce_values(&bootstrap, "in", 1, &values).await;
    let out = read_topic(&bootstrap, "in.out", 1, 20, LONG, Duration::ZERO);
    let texts: Vec<String> = out.iter().map(Record::text).collect();
    let want: Vec<String> = values.iter().map(|v| v.to_uppercase()).collect();
    assert_eq!(texts, want);
    assert_eq!(*reachable.borrow_and_update(), Some(true));
    daemon.stop().await;
}
