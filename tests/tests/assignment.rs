//! Health tells the truth about assignment: of two daemons in one group on
//! a topic of one partition, the one the group leaves without a partition
//! says so in `/health/event-bus` and in a metric once its session timeout
//! has passed, and the other says it holds one.

use std::time::{Duration, Instant};

use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text, module_route, parse};
use sluice_tests::http;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_left_without_a_partition_says_so_after_the_session_timeout() {
    let broker = Broker::start();
    for topic in ["orders", "orders.out"] {
        broker.create_topic(topic, 1);
    }
    let text = config_text(
        &broker.bootstrap(),
        "crowded",
        "",
        &module_route("uppercase", "orders", "orders.out", ""),
    );
    let daemons = [Daemon::start(parse(&text)), Daemon::start(parse(&text))];
    // The test config's session timeout is 6 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (holder, idle) = loop {
        let now = Instant::now();
        let held: Vec<usize> = daemons.iter().map(|d| d.status.assigned()).collect();
        let idle = daemons
            .iter()
            .position(|d| d.status.unassigned_for(now).is_some());
        if let (Some(idle), [a, b]) = (idle, held.as_slice())
            && a + b == 1
        {
            break (1 - idle, idle);
        }
        assert!(now < deadline, "assignments {held:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let idle_http = daemons[idle].http_addr().await;
    let health = http::get(idle_http, "/health/event-bus").await.json();
    assert_eq!(health["assigned_partitions"], 0, "{health}");
    assert!(
        health["unassigned_for_seconds"].as_u64() >= Some(6),
        "{health}"
    );
    let metrics = http::get(idle_http, "/metrics").await.body;
    assert!(
        metrics.contains("\nsluice_assigned_partitions 0\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("\nsluice_unassigned_seconds 0\n"),
        "{metrics}"
    );

    let holder_http = daemons[holder].http_addr().await;
    let health = http::get(holder_http, "/health/event-bus").await.json();
    assert_eq!(health["assigned_partitions"], 1, "{health}");
    assert_eq!(health["unassigned_for_seconds"], serde_json::Value::Null);
    for daemon in daemons {
        daemon.stop().await;
    }
}
