//! Static membership (`kafka.group_instance_id`) with the cooperative-sticky
//! strategy: one of two daemons restarted within the session timeout gets
//! its partitions back without a rebalance, the other keeps consuming its
//! own throughout, and nothing is lost.
//!
//! The broker honours `group.instance.id` in JoinGroup as Kafka does: a
//! member that comes back under its id within the session timeout is given
//! its old assignment and the group is not rebalanced (without the id, the
//! same restart rebalances the other member twice).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::broker::Broker;
use sluice_tests::daemon::{DaemonProcess, config_text, module_route};
use sluice_tests::kafka::{produce_sequence, read_topic, tally, wait_committed};

const PROGRAM: &str = env!("CARGO_BIN_EXE_sluice-test-daemon");
const LONG: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(2);
const PARTITIONS: i32 = 4;

/// The config of daemon `instance`: static member `orders-{instance}` of
/// group `test.static`, cooperative-sticky, with a 30 s session timeout so
/// that a restart fits in it, logging JSON lines.
fn config(bootstrap: &str, instance: &str) -> String {
    let kafka = format!(
        "group_instance_id = \"orders-{instance}\"\n\
         partition_assignment_strategy = \"cooperative-sticky\""
    );
    let rest = format!(
        "[logging]\nformat = \"json\"\n{}",
        module_route("uppercase", "orders", "orders.out", "")
    );
    let text = config_text(bootstrap, "static", &kafka, &rest);
    let session = "\"session.timeout.ms\" = 6000";
    assert!(
        text.contains(session),
        "the test config sets a session timeout"
    );
    text.replace(session, "\"session.timeout.ms\" = 30000")
}

/// The rebalance events in a daemon's JSON log, in order: each
/// `("partitions assigned" | "partitions revoked", count)`.
fn rebalances(log: &Path) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|l| {
            let message = l["fields"]["message"].as_str()?;
            let count = l["fields"]["partitions"].as_u64()?;
            message
                .starts_with("partitions ")
                .then(|| (message.to_owned(), count))
        })
        .collect()
}

/// Waits until the log at `log` shows partitions assigned to its daemon.
fn until_assigned(log: &Path, who: &str) {
    let deadline = Instant::now() + LONG;
    while !rebalances(log)
        .iter()
        .any(|(m, n)| m == "partitions assigned" && *n > 0)
    {
        assert!(
            Instant::now() < deadline,
            "{who} was never assigned a partition; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restarted_under_its_instance_id_gets_its_partitions_back_without_a_rebalance() {
    let broker = Broker::start_persistent();
    let bootstrap = broker.bootstrap();
    broker.create_topic("orders", PARTITIONS);
    broker.create_topic("orders.out", PARTITIONS);
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_log, b_log, b2_log) = (
        dir.path().join("a.log"),
        dir.path().join("b.log"),
        dir.path().join("b2.log"),
    );

    let a = DaemonProcess::start_logging_to(PROGRAM, &config(&bootstrap, "a"), Some(&a_log));
    let b = DaemonProcess::start_logging_to(PROGRAM, &config(&bootstrap, "b"), Some(&b_log));
    until_assigned(&a_log, "daemon a");
    until_assigned(&b_log, "daemon b");
    // The orders come once both hold partitions: a message handled by the
    // first to join and given to the other before it was committed would
    // be handled twice, as at-least-once allows, but this test counts
    // what stops and restarts do.
    produce_sequence(&bootstrap, "orders", PARTITIONS, 40, "before").await;
    let every = vec![10; PARTITIONS as usize];
    assert_eq!(
        wait_committed(&bootstrap, "test.static", "orders", &every, LONG),
        vec![Some(10); PARTITIONS as usize],
        "the two daemons handle the first orders"
    );
    let a_before = rebalances(&a_log);

    // b stops cleanly (a static member does not leave the group), orders
    // keep coming, and b comes back under its id within the session timeout.
    assert_eq!(b.terminate(), Some(0), "daemon b stops cleanly");
    produce_sequence(&bootstrap, "orders", PARTITIONS, 20, "during").await;
    let b = DaemonProcess::start_logging_to(PROGRAM, &config(&bootstrap, "b"), Some(&b2_log));
    until_assigned(&b2_log, "daemon b, restarted");
    let every = vec![15; PARTITIONS as usize];
    assert_eq!(
        wait_committed(&bootstrap, "test.static", "orders", &every, LONG),
        vec![Some(15); PARTITIONS as usize],
        "every order is handled once b is back"
    );
    // Read before they stop: stopping revokes each one's own partitions.
    let (a_after, b_again) = (rebalances(&a_log), rebalances(&b2_log));
    assert_eq!(a.terminate(), Some(0));
    assert_eq!(b.terminate(), Some(0));

    assert_eq!(
        a_after, a_before,
        "daemon a kept its partitions: no rebalance while b restarted"
    );
    // What b held when it stopped: every partition assigned to it less
    // every one revoked (cooperative rebalances move some at a time), the
    // revocation of its own stop aside.
    let mut b_first = rebalances(&b_log);
    assert_eq!(
        b_first.pop().map(|(m, _)| m).as_deref(),
        Some("partitions revoked"),
        "b's stop revoked its partitions"
    );
    let b_first = b_first.iter().fold(0, |held, (m, n)| match m.as_str() {
        "partitions assigned" => held + n,
        _ => held - n,
    });
    assert_eq!(
        b_again,
        [("partitions assigned".to_owned(), b_first)],
        "daemon b got back exactly what it had, in one assignment"
    );

    let out = read_topic(&bootstrap, "orders.out", PARTITIONS, 60, LONG, SETTLE);
    let counts = tally(
        out.iter()
            .map(|r| std::str::from_utf8(r.value.as_deref().unwrap_or_default()).expect("text")),
    );
    assert_eq!(counts.len(), 60, "no order is lost: {counts:?}");
    assert!(
        counts.values().all(|&n| n == 1),
        "and none is handled twice after clean stops: {counts:?}"
    );
}
