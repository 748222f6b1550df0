//! Rebalances while partitions are paused for a full queue: a partition the
//! daemon paused, lost to another member and was given back is fetched
//! again, to its end.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text, module_route, parse};
use sluice_tests::kafka::{Counter, produce_values, wait_committed};

const PER_PARTITION: usize = 150;
const LONG: Duration = Duration::from_secs(120);

/// Joins the daemon's group as a second member until the group gives it a
/// partition, then leaves: two rebalances, the second handing every
/// partition back to the daemon.
fn join_and_leave(bootstrap: &str, group: &str, topic: &str) {
    let member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("second member");
    member.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + LONG;
    while member.assignment().map_or(0, |a| a.count()) == 0 {
        assert!(
            Instant::now() < deadline,
            "the second member gets a partition"
        );
        // Polling serves the group protocol; the records it may fetch are not
        // committed, so the daemon handles them again.
        let _ = member.poll(Duration::from_millis(100));
    }
    member.unsubscribe();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_paused_for_a_full_queue_is_fetched_again_after_a_rebalance() {
    let broker = Broker::start_persistent();
    let bootstrap = broker.bootstrap();
    broker.create_topic("slow", 2);
    broker.create_topic("slow.out", 2);
    // Each message takes 20 ms, and a partition holds 5 before it is
    // paused: both partitions are paused most of the time.
    let values = vec!["sleep:20".to_owned(); 2 * PER_PARTITION];
    produce_values(&bootstrap, "slow", 2, &values).await;
    let mut config = parse(&config_text(
        &bootstrap,
        "rebalance",
        "",
        &module_route("hostile", "slow", "slow.out", ""),
    ));
    config.processing.partition_queue = 5;
    let daemon = Daemon::start(config);
    // The rebalances come once the daemon is under way.
    let mut out = Counter::new(&bootstrap, "slow.out", 2);
    let deadline = Instant::now() + LONG;
    while out.count < 20 {
        assert!(Instant::now() < deadline, "the daemon handles messages");
        out.poll(Duration::from_millis(100));
    }

    tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || join_and_leave(&bootstrap, "test.rebalance", "slow")
    })
    .await
    .expect("the second member came and went");

    let every = vec![PER_PARTITION as i64; 2];
    assert_eq!(
        wait_committed(&bootstrap, "test.rebalance", "slow", &every, LONG),
        [Some(PER_PARTITION as i64); 2],
        "both partitions are handled to their end after the rebalances"
    );
    daemon.stop().await;
}
