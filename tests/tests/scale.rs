//! Delivery at scale on a broker that answers fetches as Kafka does (Tansu
//! with SQLite storage, see `broker_fidelity.rs`): every message is counted
//! on its way out (outputs plus dead letters) and none may be missing.
//! Duplicates are allowed (at-least-once) and reported.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, DaemonProcess, config_text, module_route, parse};
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

/// The scenarios of this file each start a broker and a daemon working
/// through 20,000 messages: run one at a time, or two of them would share
/// the machine's cores and time out their brokers' sessions.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A broker holding the input `load` (and empty `load.out` and `dlq`), and
/// how long producing the input took.
async fn loaded_broker() -> (Broker, Duration) {
    let broker = Broker::start_persistent();
    let bootstrap = broker.bootstrap();
    for topic in ["load", "load.out", "dlq"] {
        broker.create_topic(topic, PARTITIONS);
    }
    let started = Instant::now();
    let inputs = inputs();
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
    (broker, started.elapsed())
}

/// The daemon's config: the `refusals` fixture handles `load`, failing every
/// tenth message for good into `dlq`, with a partition queue a twentieth of
/// each partition's backlog.
fn backlog_config(bootstrap: &str, group: &str) -> String {
    // Tansu's group coordinator, on SQLite storage under this load, can take
    // longer than the tests' usual 6 s session timeout to answer a heartbeat.
    // The client then rejoins under a new member id, and Tansu 0.6.0 was seen
    // to keep naming the old, gone member as the group's leader in every
    // later generation, so the group never assigned a partition again.
    // Kafka's default of 45 s here.
    config_text(
        bootstrap,
        group,
        "dead_letter_topic = \"dlq\"",
        &module_route("refusals", "load", "load.out", "max_retry_attempts = 0"),
    )
    .replace(
        "\"session.timeout.ms\" = 6000",
        "\"session.timeout.ms\" = 45000",
    )
    .replace(
        "[processing]\n",
        &format!("[processing]\npartition_queue = {PARTITION_QUEUE}\n"),
    )
}

/// Waits until every message of `load` is committed for `group`.
fn all_committed(bootstrap: &str, group: &str) {
    let every = vec![PER_PARTITION as i64; PARTITIONS as usize];
    assert_eq!(
        wait_committed(bootstrap, &format!("test.{group}"), "load", &every, LONG),
        every.iter().map(|n| Some(*n)).collect::<Vec<_>>(),
        "every message of every partition is committed"
    );
}

/// Reads every output and dead letter, asserts that each message is there
/// (none missing, none made up) and returns the duplicates.
fn delivered_whole(bootstrap: &str) -> usize {
    let inputs = inputs();
    let failing = inputs.len() / FAILING_EVERY;
    let passing = inputs.len() - failing;
    let outputs = read_names(bootstrap, "load.out", passing, Record::text);
    let letters = read_names(bootstrap, "dlq", failing, dead_letter_name);
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
        "{} outputs, {} dead letters, {duplicates} duplicates, {} missing",
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
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_many_times_the_partition_queue_is_delivered_whole() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (broker, produced_in) = loaded_broker().await;
    let bootstrap = broker.bootstrap();
    let started = Instant::now();
    let daemon = Daemon::start(parse(&backlog_config(&bootstrap, "backlog")));
    all_committed(&bootstrap, "backlog");
    let handled_in = started.elapsed();
    daemon.stop().await;
    eprintln!(
        "backlog: {} messages over {PARTITIONS} partitions, partition queue {PARTITION_QUEUE}: \
         produced in {produced_in:?}, handled in {handled_in:?}",
        inputs().len()
    );
    delivered_whole(&bootstrap);
}

/// The daemon binary, for a test that kills it.
const DAEMON: &str = env!("CARGO_BIN_EXE_sluice-test-daemon");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_backlog_and_started_again_loses_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (broker, _) = loaded_broker().await;
    let bootstrap = broker.bootstrap();
    // A static member: the daemon started again takes the killed one's
    // place at once. A new member would wait out the killed one's session
    // (45 s here), and Tansu 0.6.0 then keeps the gone member as the
    // group's leader and assigns nothing (see `backlog_config`).
    let text = backlog_config(&bootstrap, "killed").replace(
        "dead_letter_topic = \"dlq\"",
        "dead_letter_topic = \"dlq\"\ngroup_instance_id = \"killed-0\"",
    );
    let started = Instant::now();
    let first = DaemonProcess::start(DAEMON, &text);
    // Killed once a quarter of the messages are committed: its offsets sit
    // inside the input's record batches, where the next daemon resumes.
    let quarter = (PER_PARTITION * PARTITIONS as usize / 4) as i64;
    let committed_at_kill = loop {
        let committed = sluice::pipeline::committed_offsets(
            &bootstrap,
            "test.killed",
            "load",
            PARTITIONS,
            Duration::from_secs(5),
        )
        .unwrap_or_default();
        let sum: i64 = committed.iter().flatten().sum();
        if sum >= quarter {
            break committed;
        }
        assert!(
            started.elapsed() < LONG,
            "a quarter of the messages is handled"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    first.kill();
    let second = DaemonProcess::start(DAEMON, &text);
    all_committed(&bootstrap, "killed");
    eprintln!(
        "kill -9 with offsets {committed_at_kill:?} committed, started again: all committed \
         after {:?}",
        started.elapsed()
    );
    assert_eq!(second.terminate(), Some(0), "SIGTERM drains and exits 0");
    delivered_whole(&bootstrap);
}
