//! Deploying handlers by copying files into the plugins directory while
//! messages flow: version swaps, bad files, deleted modules.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sluice_tests::artifacts;
use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text_in, deploy, module_route, parse, until_plugins};
use sluice_tests::kafka::{
    Record, assert_empty, produce_sequence, produce_sequence_part, read_topic, read_until,
    wait_committed,
};

const LONG: Duration = Duration::from_secs(120);
const TAG: &[u8] = b"sluice-tag-00000";

/// Version `n` of the tagged handler: its outputs start with
/// `sluice-tag-NNNNN|`.
fn tagged(n: u32) -> Vec<u8> {
    let mut bytes = std::fs::read(artifacts::TAGGED).expect("the tagged guest");
    let at: Vec<usize> = bytes
        .windows(TAG.len())
        .enumerate()
        .filter(|(_, w)| *w == TAG)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the tag appears once in the component");
    let tag = format!("sluice-tag-{n:05}");
    bytes[at[0]..at[0] + TAG.len()].copy_from_slice(tag.as_bytes());
    bytes
}

/// The version number and input value of a tagged output.
fn version_of(record: &Record) -> (u32, String) {
    let text = record.text();
    let (tag, value) = text.split_once('|').expect("a tagged output");
    let n = tag
        .strip_prefix("sluice-tag-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a version tag: {tag}"));
    (n, value.to_owned())
}

fn route(extra: &str) -> String {
    module_route("handler", "in", "out", extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_swaps_under_a_stream_lose_nothing_and_only_move_forward() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    broker.create_topic("in", 3);
    broker.create_topic("out", 3);
    let plugins = tempfile::tempdir().expect("plugins dir");
    deploy(plugins.path(), &tagged(0));
    let config = config_text_in(plugins.path(), &bootstrap, "swaps", "", &route(""));
    let daemon = Daemon::start(parse(&config));
    // The swaps start once the first version is loaded and watched.
    until_plugins(&daemon.status, "the first version loads", |s| {
        s.plugin_loads("handler") == (1, 0)
    })
    .await;

    // The stream comes in 21 parts, each produced once the version before
    // it serves (the input is batched, and would otherwise all be there
    // before the second swap), so that every swap happens under traffic.
    let total: usize = 24_000;
    let (swapped, mut serving) = tokio::sync::watch::channel(0usize);
    let stream = async {
        let part = total.div_ceil(21);
        for n in 0..21 {
            let _ = serving.wait_for(|v| *v >= n).await;
            let range = (n * part).min(total)..((n + 1) * part).min(total);
            produce_sequence_part(&bootstrap, "in", 3, range, "m").await;
        }
    };
    let swaps = async {
        for n in 1..=20 {
            let version = tagged(n);
            deploy(plugins.path(), &version);
            // Each swap is loaded before the next file arrives.
            let want = sluice_tests::sha256_hex(&version);
            until_plugins(&daemon.status, "the new version serves", |s| {
                s.serving_hash("in").as_deref() == Some(want.as_str())
            })
            .await;
            let _ = swapped.send(n as usize);
        }
    };
    tokio::join!(stream, swaps);
    assert_eq!(
        daemon.status.plugin_loads("handler"),
        (21, 0),
        "the first version and twenty more"
    );

    let outputs = read_until(&bootstrap, "out", 3, LONG, |r| r.len() >= total);
    let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for record in &outputs {
        let (version, value) = version_of(record);
        seen.entry(value).or_default().push(version);
    }
    let missing = total - seen.len();
    assert_eq!(missing, 0, "{missing} inputs have no output");
    let twice: Vec<(&String, &Vec<u32>)> = seen.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    // Values are m-<partition>-<seq>: per partition, in input order, the
    // version never goes back.
    let mut per_partition: BTreeMap<u32, Vec<(u64, u32)>> = BTreeMap::new();
    for (value, versions) in &seen {
        let mut parts = value.split('-').skip(1);
        let p: u32 = parts
            .next()
            .and_then(|p| p.parse().ok())
            .expect("partition");
        let seq: u64 = parts.next().and_then(|s| s.parse().ok()).expect("sequence");
        per_partition.entry(p).or_default().push((seq, versions[0]));
    }
    let mut used = BTreeSet::new();
    for (p, mut handled) in per_partition {
        handled.sort_unstable();
        for pair in handled.windows(2) {
            assert!(
                pair[0].1 <= pair[1].1,
                "partition {p}: message {} handled by version {} after message {} by version {}",
                pair[1].0,
                pair[1].1,
                pair[0].0,
                pair[0].1
            );
        }
        used.extend(handled.iter().map(|(_, v)| *v));
    }
    assert!(
        used.len() >= 3,
        "the stream spanned several versions: {used:?}"
    );
    let ends = [(total / 3) as i64; 3];
    assert_eq!(
        wait_committed(&bootstrap, "test.swaps", "in", &ends, LONG),
        ends.map(Some)
    );
    daemon.stop().await;
}

/// A broker with topics `in`, `out` and `dlq`, a plugins directory with
/// version 0 of the tagged handler as module `handler`, and the daemon
/// routing `in` to it with `dlq` as dead-letter topic.
fn start_with_dead_letters(group: &str) -> (Broker, tempfile::TempDir, Daemon) {
    let broker = Broker::start();
    for topic in ["in", "out", "dlq"] {
        broker.create_topic(topic, 1);
    }
    let plugins = tempfile::tempdir().expect("plugins dir");
    deploy(plugins.path(), &tagged(0));
    let config = config_text_in(
        plugins.path(),
        &broker.bootstrap(),
        group,
        "dead_letter_topic = \"dlq\"",
        &route(""),
    );
    // Room for modules larger than a route's limit (64 MiB by default).
    let config = config.replace("[processing]\n", "[processing]\nmax_memory_mb = 512\n");
    let daemon = Daemon::start(parse(&config));
    (broker, plugins, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_leave_the_serving_version_until_fixed() {
    let (broker, plugins, daemon) = start_with_dead_letters("bad-files");
    let bootstrap = broker.bootstrap();
    let v0 = sluice_tests::sha256_hex(&tagged(0));
    produce_sequence(&bootstrap, "in", 1, 200, "a").await;

    // Copied in place without a rename, and cut short.
    let v1 = tagged(1);
    std::fs::write(plugins.path().join("handler.wasm"), &v1[..v1.len() / 2]).expect("write");
    until_plugins(&daemon.status, "the truncated file is refused", |s| {
        s.plugin_loads("handler") == (1, 1)
    })
    .await;
    assert_eq!(daemon.status.serving_hash("in"), Some(v0.clone()));
    produce_sequence(&bootstrap, "in", 1, 200, "b").await;

    // Complete files the route cannot use: a component for another world,
    // and a valid module that fits in the instance pool's memory slots but
    // whose initial memory (320 MiB) is more than the route's limit, so
    // that every message would fail.
    for (refused, (guest, what, prefix)) in (2..).zip([
        (artifacts::WRONG_WORLD, "the wrong world is refused", "c"),
        (artifacts::OVERSIZED, "the oversized module is refused", "e"),
    ]) {
        deploy(plugins.path(), &std::fs::read(guest).expect("guest built"));
        until_plugins(&daemon.status, what, |s| {
            s.plugin_loads("handler") == (1, refused)
        })
        .await;
        assert_eq!(daemon.status.serving_hash("in"), Some(v0.clone()));
        produce_sequence(&bootstrap, "in", 1, 200, prefix).await;
    }

    // Fixed: the complete file loads.
    deploy(plugins.path(), &v1);
    until_plugins(&daemon.status, "the fixed file loads", |s| {
        s.plugin_loads("handler") == (2, 3)
    })
    .await;
    assert_eq!(
        daemon.status.serving_hash("in"),
        Some(sluice_tests::sha256_hex(&v1))
    );
    produce_sequence(&bootstrap, "in", 1, 200, "d").await;

    let outputs = read_until(&bootstrap, "out", 1, LONG, |r| r.len() >= 1000);
    let handled: Vec<(u32, String)> = outputs.iter().map(version_of).collect();
    assert_eq!(handled.len(), 1000, "every message handled once, none lost");
    let versions: BTreeSet<u32> = handled.iter().map(|(v, _)| *v).collect();
    assert!(versions.is_subset(&BTreeSet::from([0, 1])));
    assert!(
        handled
            .iter()
            .filter(|(_, value)| value.starts_with("d-"))
            .all(|(v, _)| *v == 1),
        "messages produced after the fix use it"
    );
    assert_empty(&bootstrap, "dlq", "bad files never dead-letter messages");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_module_holds_its_messages_until_it_returns() {
    let (broker, plugins, daemon) = start_with_dead_letters("deleted");
    let bootstrap = broker.bootstrap();
    produce_sequence(&bootstrap, "in", 1, 50, "before").await;
    assert_eq!(
        wait_committed(&bootstrap, "test.deleted", "in", &[50], LONG),
        [Some(50)]
    );

    std::fs::remove_file(plugins.path().join("handler.wasm")).expect("delete");
    until_plugins(&daemon.status, "the route pauses", |s| {
        s.serving_hash("in").is_none()
    })
    .await;
    produce_sequence(&bootstrap, "in", 1, 50, "held").await;
    // The held messages are received and wait: nothing is committed.
    let deadline = tokio::time::Instant::now() + LONG;
    while daemon.status.in_flight() < 50 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the messages arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let committed = sluice::pipeline::committed_offsets(&bootstrap, "test.deleted", "in", 1, LONG)
        .expect("offsets");
    assert_eq!(committed, [Some(50)], "held messages are not committed");

    deploy(plugins.path(), &tagged(1));
    assert_eq!(
        wait_committed(&bootstrap, "test.deleted", "in", &[100], LONG),
        [Some(100)]
    );
    let outputs = read_until(&bootstrap, "out", 1, LONG, |r| r.len() >= 100);
    let held: Vec<u32> = outputs
        .iter()
        .map(version_of)
        .filter(|(_, value)| value.starts_with("held-"))
        .map(|(v, _)| v)
        .collect();
    assert_eq!(
        held,
        vec![1; 50],
        "held messages are handled by the restored module"
    );
    assert_empty(&bootstrap, "dlq", "nothing was dead-lettered");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_stopped_on_a_failure_retries_it_on_a_new_version() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    broker.create_topic("in", 1);
    broker.create_topic("out", 1);
    let plugins = tempfile::tempdir().expect("plugins dir");
    let misbehave = std::fs::read(artifacts::MISBEHAVE).expect("misbehave guest");
    deploy(plugins.path(), &misbehave);
    // No dead-letter topic: the permanent failure stops the partition.
    let config = config_text_in(plugins.path(), &bootstrap, "stopped", "", &route(""));
    let daemon = Daemon::start(parse(&config));
    sluice_tests::kafka::produce(
        &bootstrap,
        "in",
        ["ok:first", "permanent", "ok:last"].map(|v| sluice_tests::kafka::Send {
            partition: Some(0),
            key: None,
            value: v.as_bytes(),
            headers: &[],
        }),
    )
    .await;
    let first = read_until(&bootstrap, "out", 1, LONG, |r| !r.is_empty());
    assert_eq!(first[0].text(), "first");
    let deadline = tokio::time::Instant::now() + LONG;
    while daemon.status.stopped_partitions().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the partition stops"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    deploy(plugins.path(), &tagged(7));
    let outputs = read_until(&bootstrap, "out", 1, LONG, |r| r.len() >= 3);
    let texts: Vec<String> = outputs.iter().map(Record::text).collect();
    assert_eq!(
        texts,
        [
            "first",
            "sluice-tag-00007|permanent",
            "sluice-tag-00007|ok:last"
        ]
    );
    assert_eq!(
        wait_committed(&bootstrap, "test.stopped", "in", &[3], LONG),
        [Some(3)]
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_edits_of_the_config_file() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["a", "a.out", "a.alt", "b", "b.out"] {
        broker.create_topic(topic, 1);
    }
    // The routes of the pool-size step below, whose topics must exist for
    // a reload to add them.
    for i in 1..=9 {
        broker.create_topic(&format!("r{i}"), 1);
        broker.create_topic(&format!("r{i}.out"), 1);
    }
    let route_a = |output: &str| {
        format!(
            "[[routes]]\ntopic = \"a\"\nmodule = \"uppercase\"\noutput_topics = [\"a.out\", \"a.alt\"]\n\
             [routes.config]\noutput_topic = \"{output}\"\n"
        )
    };
    let route_b = |timeout_ms: u64| {
        format!(
            "[[routes]]\ntopic = \"b\"\nmodule = \"uppercase\"\noutput_topics = [\"b.out\"]\n\
             timeout_ms = {timeout_ms}\n"
        )
    };
    let dir = tempfile::tempdir().expect("config dir");
    let path = dir.path().join("sluice.toml");
    let write = |routes: &str| {
        let text = sluice_tests::daemon::config_text(&bootstrap, "edits", "", routes);
        let tmp = dir.path().join("sluice.toml.partial");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &path).expect("rename config");
    };
    let send = |topic: &'static str, value: &'static str| {
        let bootstrap = bootstrap.clone();
        async move {
            sluice_tests::kafka::produce(
                &bootstrap,
                topic,
                [sluice_tests::kafka::Send {
                    partition: Some(0),
                    key: None,
                    value: value.as_bytes(),
                    headers: &[],
                }],
            )
            .await;
        }
    };
    let texts = |topic: &str, at_least: usize| -> Vec<String> {
        read_until(&bootstrap, topic, 1, LONG, |r| r.len() >= at_least)
            .iter()
            .map(Record::text)
            .collect()
    };

    write(&route_a("a.out"));
    let config = sluice::config::Config::load_with(&path, &|_| None).expect("valid config");
    let daemon = Daemon::start(config);
    let mut reloads = daemon.status.config_reloads();
    let mut until_reloads = async |want: (u64, u64)| {
        tokio::time::timeout(LONG, reloads.wait_for(|r| *r == want))
            .await
            .unwrap_or_else(|_| panic!("no config reload {want:?}"))
            .expect("status lives");
    };
    send("a", "x1").await;
    assert_eq!(texts("a.out", 1), ["X1"]);

    // Route b added, route a's output changed.
    write(&(route_a("a.alt") + &route_b(1000)));
    until_reloads((1, 0)).await;
    send("a", "x2").await;
    send("b", "y1").await;
    assert_eq!(texts("a.alt", 1), ["X2"]);
    assert_eq!(texts("b.out", 1), ["Y1"]);

    // An invalid edit keeps the running routes.
    write(&(route_a("a.out") + &route_b(0)));
    until_reloads((1, 1)).await;
    send("a", "x3").await;
    assert_eq!(texts("a.alt", 2), ["X2", "X3"]);

    // An edit that gives route b less memory than its module starts with
    // (1 MiB: a Rust guest's stack alone is that) would fail every message
    // of the route: refused, route b keeps serving as it was.
    write(&(route_a("a.alt") + &route_b(1000) + "memory_limit_mb = 1\n"));
    until_reloads((1, 2)).await;
    send("b", "y2").await;
    assert_eq!(texts("b.out", 2), ["Y1", "Y2"]);

    // A route whose output topic the brokers do not have would fail every
    // message it handles: refused, naming the topic.
    write(
        &(route_a("a.alt")
            + &route_b(1000)
            + "[[routes]]\ntopic = \"c\"\nmodule = \"uppercase\"\noutput_topics = [\"nowhere\"]\n"),
    );
    until_reloads((1, 3)).await;
    assert!(daemon.status.route("c").is_none(), "route c was not added");

    // Route b removed.
    write(&route_a("a.alt"));
    until_reloads((2, 3)).await;
    assert!(daemon.status.route("b").is_none());
    send("b", "y3").await;
    send("a", "x4").await;
    assert_eq!(texts("a.alt", 3), ["X2", "X3", "X4"]);
    let b_out = read_topic(&bootstrap, "b.out", 1, 2, LONG, Duration::from_secs(2));
    assert_eq!(b_out.len(), 2, "a removed route handles nothing more");
    assert_eq!(
        wait_committed(&bootstrap, "test.edits", "a", &[4], LONG),
        [Some(4)]
    );

    // The instance pool was sized for 8 routes more than the one at start:
    // an edit to 10 routes is refused (their messages would find no
    // instance), one to 9 routes gets instances and flows.
    let more = |n: usize| -> String {
        (1..=n)
            .map(|i| {
                format!(
                    "[[routes]]\ntopic = \"r{i}\"\nmodule = \"uppercase\"\n\
                     output_topics = [\"r{i}.out\"]\n"
                )
            })
            .collect()
    };
    write(&(more(9) + &route_a("a.alt")));
    until_reloads((2, 4)).await;
    assert!(
        daemon.status.route("r1").is_none(),
        "refused: the pool is full"
    );
    write(&(more(8) + &route_a("a.alt")));
    until_reloads((3, 4)).await;
    send("r1", "z1").await;
    assert_eq!(texts("r1.out", 1), ["Z1"]);
    daemon.stop().await;
}
