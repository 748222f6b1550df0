//! Rebalances while partitions are paused for a full queue: a partition the
//! daemon paused, lost to another member and was given back is fetched
//! again, to its end. And a rebalance while a partition waits to retry a
//! message: every message is handled, the retried one before those after
//! it.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text, misbehave_route, module_route, parse};
use sluice_tests::kafka::{Counter, Send, produce, produce_values, read_topic, wait_committed};

const PER_PARTITION: usize = 150;

/// Each test here runs a broker, a daemon and a second member: one at a
/// time, or two would share the cores and miss their session timeouts.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
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
    let _alone = ONE_AT_A_TIME.lock().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_while_a_message_waits_for_its_retry_loses_and_reorders_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let broker = Broker::start_persistent();
    let bootstrap = broker.bootstrap();
    broker.create_topic("held", 2);
    broker.create_topic("held.out", 2);
    // On each partition: a message, one that fails its first three calls
    // (each retry waits 2 s, then 4 s), and three after it; the key names
    // the partition, and the outputs keep it.
    const NAMES: [&str; 5] = ["a", "retry:4", "b", "c", "d"];
    let value = |name: &str, p: i32| {
        if name.starts_with("retry") {
            name.to_owned()
        } else {
            format!("ok:{name}{p}")
        }
    };
    let inputs: Vec<(i32, String, String)> = NAMES
        .iter()
        .flat_map(|n| (0..2).map(move |p| (p, format!("p{p}"), value(n, p))))
        .collect();
    produce(
        &bootstrap,
        "held",
        inputs.iter().map(|(p, key, v)| Send {
            partition: Some(*p),
            key: Some(key.as_bytes()),
            value: v.as_bytes(),
            headers: &[],
        }),
    )
    .await;
    let daemon = Daemon::start(parse(&config_text(
        &bootstrap,
        "held",
        "retry_backoff_base = 2.0\nretry_backoff_max = 4.0",
        &misbehave_route("held", "held.out", "max_retry_attempts = 5"),
    )));
    let route = daemon.status.routes()[0].clone();
    let deadline = Instant::now() + LONG;
    while route
        .metrics
        .retries
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(Instant::now() < deadline, "a message waits for its retry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || join_and_leave(&bootstrap, "test.held", "held")
    })
    .await
    .expect("the second member came and went");

    assert_eq!(
        wait_committed(&bootstrap, "test.held", "held", &[5, 5], LONG),
        [Some(5); 2],
        "both partitions are handled to their end"
    );
    daemon.stop().await;
    let out = read_topic(&bootstrap, "held.out", 2, 10, LONG, Duration::from_secs(1));
    // At least once: a message whose offset the rebalance did not let
    // commit is handled again. With its repeats taken out, every partition's
    // outputs are its inputs in order, the retried one before those behind it.
    let mut duplicates = 0;
    for p in 0..2 {
        let mut firsts: Vec<String> = Vec::new();
        for text in out
            .iter()
            .filter(|r| r.key_text() == format!("p{p}"))
            .map(|r| r.text())
        {
            if firsts.contains(&text) {
                duplicates += 1;
            } else {
                firsts.push(text);
            }
        }
        let expected: Vec<String> = NAMES
            .iter()
            .map(|n| value(n, p).trim_start_matches("ok:").to_owned())
            .collect();
        assert_eq!(
            firsts, expected,
            "partition {p}: every message, the retried one before those after it"
        );
    }
    eprintln!("rebalance while a retry waits: 10 messages, {duplicates} duplicates, none missing");
}
