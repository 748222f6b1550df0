//! Delivery at scale on a broker that answers fetches as Kafka does (Tansu
//! with SQLite storage, see `broker_fidelity.rs`): every message is counted
//! on its way out (outputs plus dead letters) and none may be missing.
//! Duplicates are allowed (at-least-once) and reported.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text, module_route, parse};
use sluice_tests::kafka::{Record, Send, produce, read_until, wait_committed};

const PARTITIONS: i32 = 4;
const PER_PARTITION: usize = 5_000;
/// Every this many messages of a partition one fails for good.
const FAILING_EVERY: usize = 10;
/// Messages held per partition before it is paused: the backlog is 20
/// times this, so every partition is paused and resumed many times.
const PARTITION_QUEUE: usize = 250;
const LONG: Duration = Duration::from_secs(300);

/// The input: `pass-{p}-{seq}`, or for every tenth message an instruction to
/// the `refusals` fixture to fail for good, followed by its own name after a
/// NUL (`error:8\0fail-{p}-{seq}`), so each message can be told apart.
fn inputs() -> Vec<(i32, Vec<u8>)> {
    (0..PER_PARTITION)
        .flat_map(|seq| {
            (0..PARTITIONS).map(move |p| {
                let value = if seq % FAILING_EVERY == 0 {
                    format!("error:8\0fail-{p}-{seq}")
                } else {
                    format!("pass-{p}-{seq}")
                };
                (p, value.into_bytes())
            })
        })
        .collect()
}

/// How many times each name was seen.
fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for name in names {
        *seen.entry(name).or_insert(0) += 1;
    }
    seen
}

/// The name of the message a dead letter is for: its original value after
/// the NUL.
fn dead_letter_name(record: &Record) -> String {
    let envelope: serde_json::Value =
        serde_json::from_slice(record.value.as_deref().unwrap_or_default()).expect("an envelope");
    let value = envelope["original_message"]["value"]
        .as_str()
        .unwrap_or_default();
    value.split('\0').nth(1).unwrap_or(value).to_owned()
}

/// Reads `topic` from its start until `wanted` different names (by
/// `name`) were read, or the time is up. A duplicate (at-least-once) does
/// not count towards `wanted`: stopping at a number of records would leave
/// one record unread for each duplicate, reported as missing.
fn read_names(
    bootstrap: &str,
    topic: &str,
    wanted: usize,
    name: impl Fn(&Record) -> String,
) -> Vec<Record> {
    // Names of the records looked at so far, and how many those are.
    let seen = std::cell::RefCell::new((BTreeSet::new(), 0));
    read_until(bootstrap, topic, PARTITIONS, LONG, |records| {
        let mut seen = seen.borrow_mut();
        let (names, looked_at) = &mut *seen;
        for r in &records[*looked_at..] {
            names.insert(name(r));
        }
        *looked_at = records.len();
        names.len() >= wanted
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_many_times_the_partition_queue_is_delivered_whole() {
    let broker = Broker::start_persistent();
    let bootstrap = broker.bootstrap();
    for topic in ["load", "load.out", "dlq"] {
        broker.create_topic(topic, PARTITIONS);
    }
    let inputs = inputs();
    let started = Instant::now();
    produce(
        &bootstrap,
        "load",
        inputs.iter().map(|(p, v)| Send {
            partition: Some(*p),
            key: None,
            value: v,
            headers: &[],
        }),
    )
    .await;
    let produced_in = started.elapsed();

    // Tansu's group coordinator, on SQLite storage under this load, can take
    // longer than the tests' usual 6 s session timeout to answer a heartbeat.
    // The client then rejoins under a new member id, and Tansu 0.6.0 was seen
    // to keep naming the old, gone member as the group's leader in every
    // later generation, so the group never assigned a partition again.
    // Kafka's default of 45 s here.
    let text = config_text(
        &bootstrap,
        "backlog",
        "dead_letter_topic = \"dlq\"",
        &module_route("refusals", "load", "load.out", "max_retry_attempts = 0"),
    )
    .replace(
        "\"session.timeout.ms\" = 6000",
        "\"session.timeout.ms\" = 45000",
    );
    let mut config = parse(&text);
    config.processing.partition_queue = PARTITION_QUEUE;
    let started = Instant::now();
    let daemon = Daemon::start(config);
    let every = vec![PER_PARTITION as i64; PARTITIONS as usize];
    assert_eq!(
        wait_committed(&bootstrap, "test.backlog", "load", &every, LONG),
        every.iter().map(|n| Some(*n)).collect::<Vec<_>>(),
        "every message of every partition is committed"
    );
    let handled_in = started.elapsed();
    daemon.stop().await;

    let failing = inputs.len() / FAILING_EVERY;
    let passing = inputs.len() - failing;
    let outputs = read_names(&bootstrap, "load.out", passing, Record::text);
    let letters = read_names(&bootstrap, "dlq", failing, dead_letter_name);
    let outputs = tally(outputs.iter().map(Record::text));
    let letters = tally(letters.iter().map(dead_letter_name));

    let expected_out: BTreeSet<String> = (0..PER_PARTITION)
        .filter(|seq| seq % FAILING_EVERY != 0)
        .flat_map(|seq| (0..PARTITIONS).map(move |p| format!("pass-{p}-{seq}")))
        .collect();
    let expected_dlq: BTreeSet<String> = (0..PER_PARTITION)
        .step_by(FAILING_EVERY)
        .flat_map(|seq| (0..PARTITIONS).map(move |p| format!("fail-{p}-{seq}")))
        .collect();
    let missing_out: Vec<&String> = expected_out
        .iter()
        .filter(|n| !outputs.contains_key(*n))
        .collect();
    let missing_dlq: Vec<&String> = expected_dlq
        .iter()
        .filter(|n| !letters.contains_key(*n))
        .collect();
    let duplicates: usize = outputs
        .values()
        .chain(letters.values())
        .map(|n| n - 1)
        .sum();
    eprintln!(
        "backlog: {} messages over {PARTITIONS} partitions, partition queue {PARTITION_QUEUE}: \
         produced in {produced_in:?}, handled in {handled_in:?}; {} outputs, {} dead letters, \
         {duplicates} duplicates, {} missing",
        inputs.len(),
        outputs.len(),
        letters.len(),
        missing_out.len() + missing_dlq.len()
    );
    assert!(
        missing_out.is_empty() && missing_dlq.is_empty(),
        "missing outputs {:?}…, missing dead letters {:?}…",
        &missing_out[..missing_out.len().min(10)],
        &missing_dlq[..missing_dlq.len().min(10)]
    );
    assert_eq!(outputs.len(), passing, "no output that was not asked for");
    assert_eq!(
        letters.len(),
        failing,
        "no dead letter that was not asked for"
    );
}
