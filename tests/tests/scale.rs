//! Delivery at scale on Nisshi: every message is counted on its way out
//! (outputs plus dead letters) and none may be missing. Duplicates are
//! allowed (at-least-once) and reported, and for every key the latest
//! copies of its outputs must be in input order.
//!
//! The input is produced in multi-record batches, as producers in the field
//! send it, so a daemon that resumes from a committed offset (after a kill,
//! a broker restart or a rebalance) fetches from inside a batch, which the
//! broker answers as Kafka does (`broker_fidelity.rs`). The broker keeps its
//! data in memory, but for the scenario that restarts it (SQLite).
//!
//! Each scenario prints one line starting `scale:` with its messages,
//! duplicates, missing and time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sluice_tests::broker::{Broker, free_port};
use sluice_tests::daemon::{DaemonProcess, config_text, module_route};
use sluice_tests::kafka::{Record, Send, produce, read_until, tally, wait_committed};

const PARTITIONS: i32 = 4;
const PER_PARTITION: usize = 5_000;
const MESSAGES: usize = PER_PARTITION * PARTITIONS as usize;
/// Every this many messages of a partition one fails for good.
const FAILING_EVERY: usize = 10;
/// Every this many messages of a partition one fails its first call and
/// waits for its retry (about a second) before it and the rest of its
/// partition go on.
const RETRIED_EVERY: usize = 250;
/// Keys per partition: messages of one key are spread through it.
const KEYS: usize = 8;
/// Messages held per partition before it is paused: the backlog is 20
/// times this, so every partition is paused and resumed many times.
const PARTITION_QUEUE: usize = 250;
const LONG: Duration = Duration::from_secs(300);
/// The daemons' session timeout (see `backlog_config`).
const SESSION: Duration = Duration::from_secs(10);
/// The daemon binary: the scenarios run it as a child process, to kill it
/// or to run several.
const DAEMON: &str = env!("CARGO_BIN_EXE_sluice-test-daemon");

/// What the handler is asked to do with a message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Pass it on to `load.out`.
    Pass,
    /// Fail once (retryable), then pass it on.
    Retried,
    /// Fail for good: a dead letter in `dlq`.
    Fail,
}

fn fate(seq: usize) -> Fate {
    if seq.is_multiple_of(FAILING_EVERY) {
        Fate::Fail
    } else if seq % RETRIED_EVERY == 5 {
        Fate::Retried
    } else {
        Fate::Pass
    }
}

/// The name of message `seq` of partition `p`, which its output or dead
/// letter carries.
fn name(p: i32, seq: usize) -> String {
    format!("m-{p}-{seq}")
}

/// The input: on each partition, in order, message `seq` with key
/// `k{p}-{seq % KEYS}` and value `{instruction}\0{name}`, the instruction
/// being one of the `refusals` fixture's (anything, `retry:2`, `error:8`).
fn inputs() -> Vec<(i32, String, Vec<u8>)> {
    (0..PER_PARTITION)
        .flat_map(|seq| {
            (0..PARTITIONS).map(move |p| {
                let instruction = match fate(seq) {
                    Fate::Pass => "pass",
                    Fate::Retried => "retry:2",
                    Fate::Fail => "error:8",
                };
                let value = format!("{instruction}\0{}", name(p, seq));
                (p, format!("k{p}-{}", seq % KEYS), value.into_bytes())
            })
        })
        .collect()
}

/// The names expected in the outputs and in the dead letters.
fn expected() -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut outputs, mut letters) = (BTreeSet::new(), BTreeSet::new());
    for seq in 0..PER_PARTITION {
        for p in 0..PARTITIONS {
            match fate(seq) {
                Fate::Fail => letters.insert(name(p, seq)),
                Fate::Pass | Fate::Retried => outputs.insert(name(p, seq)),
            };
        }
    }
    (outputs, letters)
}

/// The name a value carries: what follows its NUL.
fn name_in(value: &str) -> String {
    value.split('\0').nth(1).unwrap_or(value).to_owned()
}

fn output_name(record: &Record) -> String {
    name_in(&record.text())
}

/// The name of the message a dead letter is for, from its envelope.
fn dead_letter_name(record: &Record) -> String {
    let envelope: serde_json::Value =
        serde_json::from_slice(record.value.as_deref().unwrap_or_default()).expect("an envelope");
    name_in(
        envelope["original_message"]["value"]
            .as_str()
            .unwrap_or_default(),
    )
}

/// The position of message `name` in its partition.
fn seq_of(name: &str) -> usize {
    name.rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a message name: {name}"))
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

/// The outputs of each key whose latest copy comes before the latest copy
/// of an earlier message of the same key: `(key, earlier, later)` pairs.
/// Outputs keep their input's key, and a key's outputs share a partition,
/// so a partition's offsets order them.
fn out_of_order(outputs: &[Record]) -> Vec<(String, String, String)> {
    let mut sorted: Vec<&Record> = outputs.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    // Per key, each name at the position of its latest copy.
    let mut latest: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (at, r) in sorted.iter().enumerate() {
        latest
            .entry(r.key_text())
            .or_default()
            .insert(output_name(r), at);
    }
    let mut wrong = Vec::new();
    for (key, names) in latest {
        let mut by_position: Vec<(usize, String)> =
            names.into_iter().map(|(name, at)| (at, name)).collect();
        by_position.sort();
        for pair in by_position.windows(2) {
            if seq_of(&pair[0].1) > seq_of(&pair[1].1) {
                wrong.push((key.clone(), pair[1].1.clone(), pair[0].1.clone()));
            }
        }
    }
    wrong
}

/// The scenarios of this file each start a broker and daemons working
/// through 20,000 messages: run one at a time, or two of them would share
/// the machine's cores and time out their brokers' sessions.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A broker holding the input `load` (and empty `load.out` and `dlq`), and
/// how long producing the input took; with `persistent`, on SQLite storage.
async fn loaded_broker(persistent: bool) -> (Broker, Duration) {
    let broker = if persistent {
        Broker::start_persistent()
    } else {
        Broker::start()
    };
    let bootstrap = broker.bootstrap();
    for topic in ["load", "load.out", "dlq"] {
        broker.create_topic(topic, PARTITIONS);
    }
    let started = Instant::now();
    let inputs = inputs();
    produce(
        &bootstrap,
        "load",
        inputs.iter().map(|(p, key, value)| Send {
            partition: Some(*p),
            key: Some(key.as_bytes()),
            value,
            headers: &[],
        }),
    )
    .await;
    (broker, started.elapsed())
}

/// The daemon's config: the `refusals` fixture handles `load`, failing every
/// tenth message for good into `dlq` and every 250th once before a retry a
/// second later, with a partition queue a twentieth of each partition's
/// backlog, serving HTTP on `http`.
fn backlog_config(bootstrap: &str, group: &str, kafka_extra: &str, http: SocketAddr) -> String {
    // A session timeout of 10 s (Kafka's default is 45 s): room for a
    // heartbeat held up on a loaded machine, and a short wait for the
    // killed member in the scenario that replaces it with a new one.
    let kafka = format!(
        "dead_letter_topic = \"dlq\"\nretry_backoff_base = 1.0\nretry_backoff_max = 1.0\n\
         {kafka_extra}"
    );
    let rest = format!(
        "[http]\nlisten = \"{http}\"\n{}",
        module_route("refusals", "load", "load.out", "max_retry_attempts = 2")
    );
    config_text(bootstrap, group, &kafka, &rest)
        .replace(
            "\"session.timeout.ms\" = 6000",
            &format!("\"session.timeout.ms\" = {}", SESSION.as_millis()),
        )
        .replace(
            "[processing]\n",
            &format!("[processing]\npartition_queue = {PARTITION_QUEUE}\n"),
        )
}

/// A daemon process and the address of its HTTP endpoint.
struct Member {
    /// Taken when it is stopped or killed.
    process: Option<DaemonProcess>,
    http: SocketAddr,
    /// Holds its log (every dead letter and retry at info level), shown
    /// when a test fails.
    log: tempfile::TempDir,
}

impl Drop for Member {
    /// A failing test keeps the log and shows its end.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.log.path().join("sluice.log")).unwrap_or_default();
            let kept = std::env::temp_dir().join(format!("sluice-scale-{}.log", self.http.port()));
            let _ = std::fs::write(&kept, &log);
            eprintln!(
                "the end of the log of the daemon on {} (all of it in {}):\n{}",
                self.http,
                kept.display(),
                sluice_tests::logs::tail(&log, 30)
            );
        }
    }
}

impl Member {
    /// Starts a daemon of `group` with `kafka_extra` in its `[kafka]` table.
    fn start(bootstrap: &str, group: &str, kafka_extra: &str) -> Member {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let text = backlog_config(bootstrap, group, kafka_extra, http);
        let log = tempfile::tempdir().expect("a log directory");
        Member {
            process: Some(DaemonProcess::start_logging_to(
                DAEMON,
                &text,
                Some(&log.path().join("sluice.log")),
            )),
            http,
            log,
        }
    }

    /// Stops it with SIGTERM, asserting that it drained and exited 0.
    fn stop(mut self, who: &str) {
        assert_eq!(
            self.process.take().and_then(DaemonProcess::terminate),
            Some(0),
            "{who}: SIGTERM drains and exits 0"
        );
    }

    /// Kills it with SIGKILL: no drain, no commit.
    fn kill(mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }

    /// The retries it has scheduled, from its metrics (0 before it
    /// answers).
    async fn retries(&self) -> u64 {
        let Ok(response) = tokio::time::timeout(
            Duration::from_secs(5),
            sluice_tests::http::get(self.http, "/metrics"),
        )
        .await
        else {
            return 0;
        };
        response
            .body
            .lines()
            .filter(|l| l.starts_with("sluice_retries_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Waits up to `within` for it to schedule a retry, after which one of
    /// its partitions holds a message for about a second; whether it did.
    /// (A member may hold no partition for a while after a rebalance.)
    async fn until_holding_a_retry(&self, within: Duration) -> bool {
        let before = self.retries().await;
        let deadline = Instant::now() + within;
        while self.retries().await == before {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// The sum of `group`'s committed offsets of `load`, if the broker
/// answers within 5 s.
fn committed_sum(bootstrap: &str, group: &str) -> Option<i64> {
    sluice::pipeline::committed_offsets(
        bootstrap,
        &format!("test.{group}"),
        "load",
        PARTITIONS,
        Duration::from_secs(5),
    )
    .ok()
    .map(|offsets| offsets.iter().flatten().sum())
}

/// Waits until `group` has committed at least `at_least` messages in all,
/// and returns how many it had then.
fn until_committed(bootstrap: &str, group: &str, at_least: i64) -> i64 {
    let deadline = Instant::now() + LONG;
    loop {
        let sum = committed_sum(bootstrap, group);
        if let Some(sum) = sum
            && sum >= at_least
        {
            return sum;
        }
        assert!(
            Instant::now() < deadline,
            "{at_least} messages are committed for {group} (last seen {sum:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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

/// Reads every output and dead letter and asserts that each message is
/// there (none missing, none made up) and that every key's outputs are in
/// order; prints the scenario's line.
fn delivered_whole(bootstrap: &str, scenario: &str, took: Duration) {
    let (expected_out, expected_dlq) = expected();
    let outputs = read_names(bootstrap, "load.out", expected_out.len(), output_name);
    let letters = read_names(bootstrap, "dlq", expected_dlq.len(), dead_letter_name);
    let disorder = out_of_order(&outputs);
    let output_names: Vec<String> = outputs.iter().map(output_name).collect();
    let letter_names: Vec<String> = letters.iter().map(dead_letter_name).collect();
    let outputs = tally(output_names.iter().map(String::as_str));
    let letters = tally(letter_names.iter().map(String::as_str));
    let missing_out: Vec<&String> = expected_out
        .iter()
        .filter(|n| !outputs.contains_key(n.as_str()))
        .collect();
    let missing_dlq: Vec<&String> = expected_dlq
        .iter()
        .filter(|n| !letters.contains_key(n.as_str()))
        .collect();
    let duplicates: usize = outputs
        .values()
        .chain(letters.values())
        .map(|n| n - 1)
        .sum();
    eprintln!(
        "scale: {scenario}: {MESSAGES} messages over {PARTITIONS} partitions ({} outputs, {} \
         dead letters), {duplicates} duplicates, {} missing, {} keys out of order, all \
         committed in {took:.1?}",
        outputs.len(),
        letters.len(),
        missing_out.len() + missing_dlq.len(),
        disorder.len(),
    );
    assert!(
        missing_out.is_empty() && missing_dlq.is_empty(),
        "missing outputs {:?}…, missing dead letters {:?}…",
        &missing_out[..missing_out.len().min(10)],
        &missing_dlq[..missing_dlq.len().min(10)]
    );
    assert_eq!(
        outputs.len(),
        expected_out.len(),
        "no output that was not asked for"
    );
    assert_eq!(
        letters.len(),
        expected_dlq.len(),
        "no dead letter that was not asked for"
    );
    assert!(
        disorder.is_empty(),
        "per key, the latest copies of the outputs are in input order; (key, earlier, later) \
         out of order: {:?}",
        &disorder[..disorder.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_many_times_the_partition_queue_is_delivered_whole() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (broker, produced_in) = loaded_broker(false).await;
    let bootstrap = broker.bootstrap();
    eprintln!("scale: produced {MESSAGES} messages in batches in {produced_in:.1?}");
    let started = Instant::now();
    let daemon = Member::start(&bootstrap, "backlog", "");
    all_committed(&bootstrap, "backlog");
    let took = started.elapsed();
    daemon.stop("the daemon");
    delivered_whole(&bootstrap, "backlog", took);
}

/// A daemon killed with SIGKILL once a quarter of the messages are
/// committed, and one started in its place with `kafka_extra`: as the same
/// static member it takes the killed one's place at once, as a new member
/// once the killed one's session has timed out.
async fn killed_mid_backlog(group: &str, first_extra: &str, second_extra: &str, who: &str) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (broker, _) = loaded_broker(false).await;
    let bootstrap = broker.bootstrap();
    let started = Instant::now();
    let first = Member::start(&bootstrap, group, first_extra);
    // Its offsets sit inside the input's record batches, where the next
    // daemon resumes.
    let at_kill = until_committed(&bootstrap, group, (MESSAGES / 4) as i64);
    first.kill();
    let second = Member::start(&bootstrap, group, second_extra);
    all_committed(&bootstrap, group);
    let took = started.elapsed();
    second.stop("the daemon started again");
    delivered_whole(
        &bootstrap,
        &format!("kill -9 at {at_kill} committed, started again as {who}"),
        took,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_backlog_and_started_again_as_the_same_static_member_loses_nothing() {
    let member = "group_instance_id = \"killed-0\"";
    killed_mid_backlog("killed-static", member, member, "the same static member").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_backlog_and_replaced_by_a_new_member_loses_nothing() {
    killed_mid_backlog("killed-new", "", "", "a new member").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_mid_backlog_loses_nothing_and_the_daemon_runs_through_it() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (mut broker, _) = loaded_broker(true).await;
    let bootstrap = broker.bootstrap();
    let started = Instant::now();
    let daemon = Member::start(&bootstrap, "outage", "");
    let at_restart = until_committed(&bootstrap, "outage", (MESSAGES / 4) as i64);
    // SIGKILL, then the same port and SQLite file: whatever the broker had
    // acknowledged is there when it is back, and nothing else.
    broker.restart();
    all_committed(&bootstrap, "outage");
    let took = started.elapsed();
    daemon.stop("the daemon that ran through the restart");
    delivered_whole(
        &bootstrap,
        &format!("broker killed and restarted at {at_restart} committed"),
        took,
    );
}

/// Three daemons in one group, each stopped (SIGTERM) and started again in
/// turn while the backlog is worked through, with `kafka_extra` choosing
/// the assignor. Each is stopped while one of its partitions holds a
/// message waiting for its retry, so every stop rebalances the group with
/// a retried message in flight.
async fn rolling_restarts(group: &str, kafka_extra: &str) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (broker, _) = loaded_broker(false).await;
    let bootstrap = broker.bootstrap();
    let started = Instant::now();
    let mut members: Vec<Member> = (0..3)
        .map(|_| Member::start(&bootstrap, group, kafka_extra))
        .collect();
    // Each daemon is stopped once the group has gone another sixteenth of
    // the way: every restart comes while most of the backlog is left.
    let step = (MESSAGES / 16) as i64;
    let mut at = until_committed(&bootstrap, group, step);
    let mut stops = Vec::new();
    for i in 0..members.len() {
        let held = members[i]
            .until_holding_a_retry(Duration::from_secs(15))
            .await;
        let committed = committed_sum(&bootstrap, group).unwrap_or(at);
        eprintln!(
            "scale: {group}: stopping daemon {i} at {committed} committed, {}",
            if held {
                "a retry waiting"
            } else {
                "no retry seen in 15 s"
            }
        );
        stops.push((committed, held));
        members.remove(i).stop(&format!("daemon {i}"));
        members.insert(i, Member::start(&bootstrap, group, kafka_extra));
        at = until_committed(
            &bootstrap,
            group,
            (at.max(committed) + step).min(MESSAGES as i64),
        );
    }
    assert!(
        stops.iter().any(|(_, held)| *held),
        "at least one daemon is stopped while a retry waits: {stops:?}"
    );
    all_committed(&bootstrap, group);
    let took = started.elapsed();
    for (i, member) in members.into_iter().enumerate() {
        member.stop(&format!("daemon {i}"));
    }
    delivered_whole(
        &bootstrap,
        &format!(
            "three daemons ({group}), each restarted in turn (committed, retry waiting): {stops:?}"
        ),
        took,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restarts_of_three_daemons_with_cooperative_sticky_lose_and_reorder_nothing() {
    rolling_restarts(
        "rolling-cooperative",
        "partition_assignment_strategy = \"cooperative-sticky\"",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restarts_of_three_daemons_with_the_default_assignor_lose_and_reorder_nothing() {
    rolling_restarts("rolling-default", "").await;
}
