//! A shutdown always ends: SIGTERM ends the process within
//! `processing.drain_timeout_seconds` plus the documented margin (15 s),
//! whatever holds it. A guest in a loop does not keep the process alive
//! (its message is not committed, so it is delivered again); with the broker
//! gone and an output waiting for it, the process says what it was waiting
//! for and exits non-zero; a rebalance that never completes does not hold
//! it either, and the log never says offsets were committed when the commit
//! failed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use sluice_tests::broker::{Broker, free_port};
use sluice_tests::daemon::{DaemonProcess, config_text, misbehave_route, module_route};
use sluice_tests::http;
use sluice_tests::kafka::{Send, produce, produce_sequence_part, wait_committed};

const PROGRAM: &str = env!("CARGO_BIN_EXE_sluice-test-daemon");
/// The test config's `drain_timeout_seconds` plus the margin.
const BOUND: Duration = Duration::from_secs(5 + 15);
/// Time for the process to start exiting once the bound is over, on a
/// loaded machine.
const SLACK: Duration = Duration::from_secs(5);

/// Waits until the daemon at `http` answers and `done` holds for its health.
async fn until_health(http: SocketAddr, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(http).await.is_ok()
            && done(&http::get(http, "/health/event-bus").await.json())
        {
            return;
        }
        assert!(Instant::now() < deadline, "the daemon never got there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends SIGTERM and checks that the process ended within the bound.
/// Returns its exit code and its log.
fn terminate_within_bound(daemon: DaemonProcess, log: &std::path::Path) -> (Option<i32>, String) {
    let signalled = Instant::now();
    let code = daemon.terminate();
    let took = signalled.elapsed();
    let log = std::fs::read_to_string(log).expect("the log");
    assert!(
        took < BOUND + SLACK,
        "exited after {took:?} (None: not within a minute):\n{log}"
    );
    (code, log)
}

/// A daemon with a `misbehave` route that allows `timeout_ms` per call,
/// in the middle of a call for the message `value`; its log goes to a file.
struct InCall {
    broker: Broker,
    bootstrap: String,
    http: SocketAddr,
    daemon: DaemonProcess,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn in_call(group: &str, value: &[u8], timeout_ms: u64) -> InCall {
    let broker = Broker::start();
    for topic in ["orders", "orders.out"] {
        broker.create_topic(topic, 1);
    }
    let bootstrap = broker.bootstrap();
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = config_text(
        &bootstrap,
        group,
        "",
        &format!(
            "[http]\nlisten = \"{http}\"\n{}",
            misbehave_route(
                "orders",
                "orders.out",
                &format!("timeout_ms = {timeout_ms}")
            )
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("sluice.log");
    let daemon = DaemonProcess::start_logging_to(PROGRAM, &text, Some(&log));
    produce(
        &bootstrap,
        "orders",
        [Send {
            partition: Some(0),
            key: None,
            value,
            headers: &[],
        }],
    )
    .await;
    until_health(http, |h| h["in_flight_messages"].as_u64() == Some(1)).await;
    InCall {
        broker,
        bootstrap,
        http,
        daemon,
        log,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_in_a_loop_does_not_hold_the_exit_and_its_message_is_not_committed() {
    // The call may run for five minutes: only the drain timeout bounds it.
    let InCall {
        broker: _broker,
        bootstrap,
        http: _,
        daemon,
        log,
        _dir,
    } = in_call("looping", b"loop", 300_000).await;

    let (code, log) = terminate_within_bound(daemon, &log);
    // The call is left behind on its thread; the rest went well.
    assert_eq!(code, Some(0), "{log}");
    // Not committed: the message is delivered again to the next daemon.
    assert_eq!(
        wait_committed(
            &bootstrap,
            "test.looping",
            "orders",
            &[0],
            Duration::from_secs(5)
        ),
        vec![None],
        "the message in the loop was not committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_gone_the_exit_is_bounded_and_names_what_it_waited_for() {
    // A message the handler takes two seconds over (within its timeout):
    // the broker goes while it is in the call, so its output can never be
    // acknowledged.
    let InCall {
        mut broker,
        bootstrap: _,
        http,
        daemon,
        log,
        _dir,
    } = in_call("orphaned", b"slow:2000", 10_000).await;
    broker.stop();
    // The call ends and its output waits in the producer for a broker.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http::get(http, "/metrics")
        .await
        .body
        .contains("sluice_handler_duration_seconds_count{route=\"orders\"} 1\n")
    {
        assert!(Instant::now() < deadline, "the call never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (code, log) = terminate_within_bound(daemon, &log);
    assert_eq!(code, Some(1), "a shutdown cut short exits non-zero:\n{log}");
    assert!(
        log.contains("shutdown did not finish within 20 s of the signal")
            && log.contains("still flushing the producer"),
        "it says what it waited for:\n{log}"
    );
    assert!(
        !log.contains("stored offsets committed"),
        "nothing was stored, so nothing is said to be committed:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_that_never_completes_does_not_hold_the_exit() {
    // librdkafka's mock cluster, whose coordinator can be told what to
    // answer: Nisshi's cannot.
    let mock: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(1).expect("mock cluster");
    for topic in ["orders", "orders.out"] {
        mock.create_topic(topic, 1, 1).expect("mock topic");
    }
    let bootstrap = mock.bootstrap_servers();
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = config_text(
        &bootstrap,
        "rebalancing",
        "",
        &format!(
            "[http]\nlisten = \"{http}\"\n{}",
            module_route("uppercase", "orders", "orders.out", "")
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("sluice.log");
    let daemon = DaemonProcess::start_logging_to(PROGRAM, &text, Some(&log));
    produce_sequence_part(&bootstrap, "orders", 1, 0..5, "order").await;
    assert_eq!(
        wait_committed(
            &bootstrap,
            "test.rebalancing",
            "orders",
            &[5],
            Duration::from_secs(60)
        ),
        vec![Some(5)],
        "the daemon is consuming"
    );

    // From here the coordinator answers every heartbeat and commit with
    // "rebalance in progress", and every attempt to join again with "still
    // loading": the daemon gives its partition up and never gets it back.
    let many = |error| vec![error; 10_000];
    mock.request_errors(
        RDKafkaApiKey::Heartbeat,
        &many(RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS),
    );
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &many(RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS),
    );
    mock.request_errors(
        RDKafkaApiKey::JoinGroup,
        &many(RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS),
    );
    produce_sequence_part(&bootstrap, "orders", 1, 5..8, "order").await;
    until_health(http, |h| h["assigned_partitions"].as_u64() == Some(0)).await;

    let (code, log) = terminate_within_bound(daemon, &log);
    match code {
        Some(0) => {}
        Some(1) => assert!(
            log.contains("shutdown did not finish within 20 s of the signal")
                && log.contains("still "),
            "a shutdown cut short says what it waited for:\n{log}"
        ),
        other => panic!("exit status {other:?}:\n{log}"),
    }
    if let Some(failed) = log.rfind("offset commit failed") {
        assert!(
            !log[failed..].contains("stored offsets committed"),
            "a failed commit is never reported as done:\n{log}"
        );
    }
}
