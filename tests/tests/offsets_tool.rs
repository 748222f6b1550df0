//! `sluice offsets show|reset` against a real broker: a reset is
//! refused while a daemon is in the group; once it stops, the group is
//! rewound to the start, or shifted back, and the next daemon reprocesses
//! exactly the records between the new offset and the end; a dry run moves
//! nothing; a time is turned into the first offset at or after it; bad
//! arguments are refused before any broker is asked.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text, module_route, parse};
use sluice_tests::kafka::{produce_sequence, read_topic, tally, wait_committed};

const CLI: &str = env!("CARGO_BIN_EXE_sluice-test-daemon");
const LONG: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(2);
const GROUP: &str = "test.rewind";

/// Runs `sluice offsets ARGS... --config FILE` off the async threads.
async fn offsets(config: &Path, args: &[&str]) -> Output {
    let mut all: Vec<String> = vec!["offsets".into()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all.extend(["--config".to_owned(), config.display().to_string()]);
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(CLI)
            .args(&all)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run the sluice binary")
    })
    .await
    .expect("the CLI runner does not panic")
}

/// `sluice offsets ARGS... --format json`, which must succeed; its output.
async fn offsets_json(config: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let out = offsets(config, &all).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "`sluice offsets {}` failed: {}\n{stdout}",
        all.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// `sluice offsets ARGS...`, which must fail; its stderr.
async fn offsets_fail(config: &Path, args: &[&str]) -> String {
    let out = offsets(config, args).await;
    assert!(
        !out.status.success(),
        "`sluice offsets {}` should fail; it printed {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes the config text into `dir` as `sluice.toml`.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).expect("write the config file");
    path
}

/// The group's committed offsets of `orders`' two partitions.
fn committed(bootstrap: &str) -> Vec<Option<i64>> {
    sluice::pipeline::committed_offsets(bootstrap, GROUP, "orders", 2, Duration::from_secs(5))
        .expect("committed offsets")
}

/// The `to` offsets of a reset's JSON, by partition.
fn planned(reset: &Value) -> Vec<i64> {
    reset["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["to"].as_i64().expect("a `to` offset"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_group_is_rewound_and_the_next_daemon_reprocesses_from_there() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    broker.create_topic("orders", 2);
    broker.create_topic("orders.out", 2);
    produce_sequence(&bootstrap, "orders", 2, 10, "order").await;
    let text = config_text(
        &bootstrap,
        "rewind",
        "",
        &module_route("uppercase", "orders", "orders.out", ""),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &text);

    let daemon = Daemon::start(parse(&text));
    assert_eq!(
        wait_committed(&bootstrap, GROUP, "orders", &[5, 5], LONG),
        [Some(5), Some(5)],
        "the daemon handles every order"
    );
    let shown = offsets_json(&config, &["show"]).await;
    assert_eq!(shown["group"], GROUP);
    assert_eq!(shown["members"]["live"].as_array().map(Vec::len), Some(1));
    for p in shown["partitions"].as_array().expect("partitions") {
        assert_eq!(
            (&p["committed"], &p["earliest"], &p["latest"], &p["lag"]),
            (&5.into(), &0.into(), &5.into(), &0.into()),
            "{shown:#}"
        );
    }

    // While the daemon is in the group, a reset moves nothing.
    let refused = offsets_fail(&config, &["reset", "--to-earliest"]).await;
    assert!(
        refused.contains(&format!("consumer group \"{GROUP}\" has 1 live member"))
            && refused.contains("stop every daemon"),
        "{refused}"
    );
    assert_eq!(committed(&bootstrap), [Some(5), Some(5)]);
    daemon.stop().await;

    // A dry run says where each partition would go and commits nothing.
    let dry = offsets_json(&config, &["reset", "--to-earliest", "--dry-run"]).await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(planned(&dry), [0, 0]);
    assert_eq!(committed(&bootstrap), [Some(5), Some(5)]);

    let reset = offsets_json(&config, &["reset", "--to-earliest"]).await;
    assert_eq!(reset["dry_run"], false);
    assert_eq!(planned(&reset), [0, 0]);
    assert_eq!(committed(&bootstrap), [Some(0), Some(0)]);

    // The next daemon handles every order again: each output twice.
    let daemon = Daemon::start(parse(&text));
    assert_eq!(
        wait_committed(&bootstrap, GROUP, "orders", &[5, 5], LONG),
        [Some(5), Some(5)],
        "the rewound daemon handles the orders to the end again"
    );
    daemon.stop().await;
    let out = read_topic(&bootstrap, "orders.out", 2, 20, LONG, SETTLE);
    let counts = tally(
        out.iter()
            .map(|r| r.value.as_deref().unwrap_or_default())
            .map(|v| std::str::from_utf8(v).expect("text")),
    );
    assert_eq!(counts.len(), 10, "{counts:?}");
    assert!(counts.values().all(|&n| n == 2), "{counts:?}");

    // Shifted back by two on one topic: the last two orders of each
    // partition are handled a third time, and nothing else is.
    let shifted = offsets_json(&config, &["reset", "--topic", "orders", "--shift-by", "-2"]).await;
    assert_eq!(planned(&shifted), [3, 3]);
    assert_eq!(committed(&bootstrap), [Some(3), Some(3)]);
    let daemon = Daemon::start(parse(&text));
    assert_eq!(
        wait_committed(&bootstrap, GROUP, "orders", &[5, 5], LONG),
        [Some(5), Some(5)]
    );
    daemon.stop().await;
    let out = read_topic(&bootstrap, "orders.out", 2, 24, LONG, SETTLE);
    let mut thrice: Vec<String> = tally(
        out.iter()
            .map(|r| r.value.as_deref().unwrap_or_default())
            .map(|v| std::str::from_utf8(v).expect("text")),
    )
    .into_iter()
    .filter(|&(_, n)| n == 3)
    .map(|(v, _)| v.to_owned())
    .collect();
    thrice.sort();
    assert_eq!(
        thrice,
        ["ORDER-0-3", "ORDER-0-4", "ORDER-1-3", "ORDER-1-4"],
        "{} outputs",
        out.len()
    );

    // An offset past the end is brought to the end, and the output says so.
    let past = offsets_json(&config, &["reset", "--to-offset", "900"]).await;
    assert_eq!(planned(&past), [5, 5]);
    assert_eq!(past["partitions"][0]["adjusted"], "lowered_to_latest");
}

/// Produces one record per entry of `timestamps` (ms since the epoch) to
/// partition 0 of `topic`, each with that create time, in one record batch.
async fn produce_at(bootstrap: &str, topic: &str, timestamps: &[i64]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "100")
        .create()
        .expect("test producer");
    let mut deliveries = Vec::new();
    for (i, &ts) in timestamps.iter().enumerate() {
        let value = format!("at-{i}");
        let record = FutureRecord::<(), str>::to(topic)
            .partition(0)
            .payload(&value)
            .timestamp(ts);
        deliveries.push(
            producer
                .send_result(record)
                .unwrap_or_else(|(e, _)| panic!("test record not queued: {e}")),
        );
    }
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            other => panic!("test record not acknowledged: {other:?}"),
        }
    }
}

/// A group that a daemon has joined and left, rewound by time: a time
/// between two records gives the later one, a time after the newest record
/// the end, and the next daemon starts where the reset put it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_is_turned_into_the_first_offset_at_or_after_it() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    broker.create_topic("events", 1);
    broker.create_topic("events.out", 1);
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    // Five records a minute apart, the last one ten minutes ago, in one
    // record batch.
    let t0 = now_ms - 14 * 60_000;
    let times: Vec<i64> = (0..5).map(|i| t0 + i * 60_000).collect();
    produce_at(&bootstrap, "events", &times).await;
    let text = config_text(
        &bootstrap,
        "rewind",
        "",
        &module_route("uppercase", "events", "events.out", ""),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &text);
    let events = |offsets: &[i64]| -> Vec<Option<i64>> {
        sluice::pipeline::committed_offsets(&bootstrap, GROUP, "events", 1, LONG)
            .unwrap_or_else(|e| panic!("committed offsets: {e}; wanted {offsets:?}"))
    };
    let daemon = Daemon::start(parse(&text));
    assert_eq!(
        wait_committed(&bootstrap, GROUP, "events", &[5], LONG),
        [Some(5)],
        "the daemon handles every event"
    );
    daemon.stop().await;

    // 2.5 minutes after the first record: the fourth record (offset 3).
    let between = sluice::pipeline::dlq::iso8601_millis(
        SystemTime::UNIX_EPOCH + Duration::from_millis((t0 + 150_000) as u64),
    );
    let dry = offsets_json(&config, &["reset", "--to-datetime", &between, "--dry-run"]).await;
    assert_eq!(planned(&dry), [3], "{dry:#}");
    // The same instant as a duration ago: 11.5 minutes before now is
    // between the third and fourth records too (give or take the seconds
    // this test takes).
    let ago = offsets_json(&config, &["reset", "--to-datetime", "690s", "--dry-run"]).await;
    assert_eq!(planned(&ago), [3], "{ago:#}");
    // A minute ago, after the newest record: the end of the partition.
    let after = offsets_json(&config, &["reset", "--to-datetime", "60s", "--dry-run"]).await;
    assert_eq!(planned(&after), [5], "{after:#}");
    assert_eq!(events(&[5]), [Some(5)], "a dry run moves nothing");

    let reset = offsets_json(&config, &["reset", "--to-datetime", &between]).await;
    assert_eq!(planned(&reset), [3]);
    assert_eq!(
        events(&[3]),
        [Some(3)],
        "the group starts at the fourth record"
    );

    // The next daemon handles the fourth and fifth records again.
    let daemon = Daemon::start(parse(&text));
    assert_eq!(
        wait_committed(&bootstrap, GROUP, "events", &[5], LONG),
        [Some(5)]
    );
    daemon.stop().await;
    let out = read_topic(&bootstrap, "events.out", 1, 7, LONG, SETTLE);
    let texts: Vec<String> = out.iter().map(|r| r.text()).collect();
    let values = tally(texts.iter().map(String::as_str));
    let again: Vec<&str> = values
        .iter()
        .filter(|(_, n)| **n == 2)
        .map(|(v, _)| *v)
        .collect();
    assert_eq!(out.len(), 7, "five outputs, then two again: {values:?}");
    assert_eq!(again.len(), 2, "the fourth and fifth again: {values:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_refused_before_any_broker_is_asked() {
    // Nothing listens on this address: each refusal comes first.
    let text = config_text(
        "127.0.0.1:9",
        "rewind",
        "",
        &module_route("uppercase", "orders", "orders.out", ""),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &text);
    let cases: [(&[&str], &str); 5] = [
        (
            &["reset", "--topic", "payments", "--to-earliest"],
            "--topic \"payments\" is not consumed by any route of the config, so the group \
             \"test.rewind\" has no offsets there; routed topics: orders",
        ),
        (
            &["reset", "--to-offset", "-3"],
            "--to-offset -3 is not allowed: an offset is 0 or more",
        ),
        (
            &["reset", "--to-datetime", "last tuesday"],
            "invalid --to-datetime: \"last tuesday\" is not a time: expected RFC 3339",
        ),
        (
            &["reset"],
            "the following required arguments were not provided",
        ),
        (
            &["reset", "--to-earliest", "--to-latest"],
            "cannot be used with",
        ),
    ];
    for (args, wanted) in cases {
        let error = offsets_fail(&config, args).await;
        assert!(error.contains(wanted), "{args:?}: {error}");
    }

    // The embedded development broker lives inside a daemon's process.
    let embedded = write_config(dir.path(), &text.replace("127.0.0.1:9", "embedded"));
    let error = offsets_fail(&embedded, &["show"]).await;
    assert!(
        error.contains("kafka.bootstrap_servers is \"embedded\": the embedded broker lives inside"),
        "{error}"
    );
}
