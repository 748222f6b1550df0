//! `sluice dlq` against a real broker: dead letters listed, counted
//! and filtered; replayed to their original topic once the module is fixed,
//! with the replay headers and the original bytes; the replay limit holds;
//! a dry run produces nothing; unreadable records are reported, not fatal,
//! and so are header keys that are not UTF-8. Where, how much and how often
//! a replay writes is `dlq_replay.rs`.

mod dlq_cli;

use std::path::Path;
use std::time::Duration;

use dlq_cli::{dlq_json, hand_envelope, replay_config, sluice, write_config};
use serde_json::Value;
use sluice_tests::artifacts::{MISBEHAVE, UPPERCASE};
use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text, parse, plugins_dir};
use sluice_tests::kafka::{Record, Send, produce, produce_raw_headers, read_topic, wait_committed};

const LONG: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(2);

/// `sluice dlq COMMAND --config FILE ARGS...`, which must fail; returns its
/// stderr.
async fn dlq_fails(command: &str, config: &Path, args: &[&str]) -> String {
    let mut all = vec![
        "dlq".to_owned(),
        command.to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let out = sluice(all.clone()).await;
    assert!(
        !out.status.success(),
        "`sluice {}` should fail; it printed {}",
        all.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn envelope(record: &Record) -> Value {
    serde_json::from_slice(record.value.as_deref().unwrap_or_default()).expect("a JSON envelope")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_dead_letters_reach_the_output_once_the_module_is_fixed() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["in", "out", "dlq"] {
        broker.create_topic(topic, 1);
    }
    // Module `handler` starts broken: the misbehave guest.
    let plugins = tempfile::tempdir().expect("tempdir");
    let handler = plugins.path().join("handler.wasm");
    std::fs::copy(MISBEHAVE, &handler).expect("copy the broken module");
    let route = r#"
[[routes]]
topic = "in"
module = "handler"
output_topics = ["out"]
[routes.config]
output_topic = "out"
"#;
    let artifacts_dir = format!("dir = {:?}", plugins_dir().display().to_string());
    let text = config_text(&bootstrap, "replay", "dead_letter_topic = \"dlq\"", route);
    assert!(text.contains(&artifacts_dir));
    let text = text.replace(
        &artifacts_dir,
        &format!("dir = {:?}", plugins.path().display().to_string()),
    );
    let config = write_config(plugins.path(), &text);

    let binary_key: &'static [u8] = &[0xff, 0x01];
    let binary_header: &'static [u8] = &[0x80, 0x00];
    let send = |key: &'static [u8], value: &'static str, headers| Send {
        partition: Some(0),
        key: Some(key),
        value: value.as_bytes(),
        headers,
    };
    produce(
        &bootstrap,
        "in",
        [
            send(b"k0", "ok:first", &[]),
            send(b"k1", "permanent:1", &[("trace", b"t1")]),
            send(binary_key, "permanent:2", &[("bin", binary_header)]),
            send(b"k3", "permanent:3", &[]),
        ],
    )
    .await;
    let daemon = Daemon::start(parse(&text));
    let dead = read_topic(&bootstrap, "dlq", 1, 3, LONG, SETTLE);
    assert_eq!(dead.len(), 3, "three permanent failures dead-lettered");
    assert_eq!(read_topic(&bootstrap, "out", 1, 1, LONG, SETTLE).len(), 1);

    // A dry run lists what would be replayed and produces nothing.
    let dry = dlq_json("replay", &config, &["--dry-run"]).await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["summary"]["would_replay"], 3, "{dry:#}");
    let listed: Vec<i64> = dry["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            assert_eq!(r["outcome"], "would_replay");
            r["dlq_offset"].as_i64().expect("a DLQ offset")
        })
        .collect();
    assert_eq!(listed, dead.iter().map(|r| r.offset).collect::<Vec<_>>());
    let input = read_topic(&bootstrap, "in", 1, 4, LONG, SETTLE);
    assert_eq!(input.len(), 4, "the dry run produced nothing");

    // Replayed while the module is still broken, a message is dead-lettered
    // again, now carrying x-replay-count = 1.
    let first = envelope(&dead[0]);
    let correlation = first["correlation_id"].as_str().expect("a correlation id");
    let once = dlq_json("replay", &config, &["--correlation-id", correlation]).await;
    assert_eq!(once["summary"]["replayed"], 1, "{once:#}");
    let dead = read_topic(&bootstrap, "dlq", 1, 4, LONG, SETTLE);
    assert_eq!(dead.len(), 4, "the replay failed again");
    let again = envelope(&dead[3]);
    assert_eq!(again["original_message"]["value"], "permanent:1");
    assert_eq!(again["correlation_id"], correlation, "the replay keeps it");
    let original_headers = &again["original_message"]["headers"];
    let header = |name: &str| {
        original_headers
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| h["key"] == name)
            .map(|h| h["value"].clone())
    };
    assert_eq!(header("x-replay-count"), Some("1".into()));
    assert_eq!(header("trace"), Some("t1".into()));
    assert_eq!(
        header("x-original-dlq-offset"),
        Some(dead[0].offset.to_string().into())
    );
    wait_committed(&bootstrap, "test.replay", "in", &[5], LONG);
    daemon.stop().await;

    // The fixed module: the upper-case guest under the same name.
    std::fs::copy(UPPERCASE, &handler).expect("copy the fixed module");
    let daemon = Daemon::start(parse(&text));
    // The first dead letter was replayed once already (its replay failed
    // and is the fourth): a plain replay skips it.
    let plain = dlq_json("replay", &config, &["--dry-run", "--max-replay-count", "1"]).await;
    assert_eq!(plain["results"][0]["outcome"], "skipped_already_replayed");
    assert_eq!(plain["summary"]["would_replay"], 2, "{plain:#}");
    // Starting over replays it again, and the fourth stays over the limit.
    let fixed = dlq_json(
        "replay",
        &config,
        &["--max-replay-count", "1", "--from-beginning"],
    )
    .await;
    let summary = &fixed["summary"];
    assert_eq!(summary["replayed"], 3, "{fixed:#}");
    assert_eq!(summary["skipped_over_limit"], 1, "{fixed:#}");
    assert_eq!(summary["failed"], 0, "{fixed:#}");
    let results = fixed["results"].as_array().expect("results");
    let skipped = results
        .iter()
        .find(|r| r["outcome"] == "skipped_over_limit")
        .expect("the over-limit dead letter is reported");
    assert_eq!(skipped["dlq_offset"], dead[3].offset);
    assert_eq!(skipped["previous_replay_count"], 1);
    let why = skipped["detail"].as_str().unwrap_or_default();
    assert!(why.contains("--max-replay-count 1"), "{why}");

    let out = read_topic(&bootstrap, "out", 1, 4, LONG, SETTLE);
    assert_eq!(out.len(), 4, "one earlier output and three replays");
    for letter in &dead[..3] {
        let e = envelope(letter);
        let replayed = out
            .iter()
            .find(|r| r.header("x-original-dlq-offset") == Some(letter.offset.to_string()))
            .unwrap_or_else(|| panic!("no output for dead letter {}: {out:#?}", letter.offset));
        let value = e["original_message"]["value"].as_str().expect("a value");
        assert_eq!(replayed.text(), value.to_ascii_uppercase());
        assert_eq!(replayed.key, letter.key, "the original key, byte for byte");
        assert_eq!(replayed.header("x-replay-count").as_deref(), Some("1"));
        assert_eq!(
            replayed.header("x-original-dlq-partition").as_deref(),
            Some("0")
        );
        let at = replayed.header("x-replayed-at").expect("x-replayed-at");
        assert!(sluice::replay::parse_rfc3339(&at).is_some(), "{at}");
    }
    let binary = out
        .iter()
        .find(|r| r.key.as_deref() == Some(binary_key))
        .expect("the binary-keyed message was replayed");
    assert!(
        binary
            .headers
            .contains(&("bin".to_owned(), binary_header.to_vec())),
        "non-UTF-8 header bytes restored: {binary:?}"
    );

    // Nothing was replayed for the over-limit dead letter: the input topic
    // holds the 5 earlier records and the 3 replays, none counted twice.
    let input = read_topic(&bootstrap, "in", 1, 8, LONG, SETTLE);
    assert_eq!(input.len(), 8);
    assert!(
        input
            .iter()
            .all(|r| r.header("x-replay-count").as_deref() != Some("2")),
        "a message at the limit was replayed"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_stats_count_filter_and_survive_unreadable_records() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["a", "b", "dlq"] {
        broker.create_topic(topic, 1);
    }
    let routes = r#"
[[routes]]
topic = "a"
module = "misbehave"

[[routes]]
topic = "b"
module = "misbehave"
"#;
    let text = config_text(&bootstrap, "stats", "dead_letter_topic = \"dlq\"", routes);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &text);
    let send = |value: &'static str| Send {
        partition: Some(0),
        key: None,
        value: value.as_bytes(),
        headers: &[],
    };
    produce(
        &bootstrap,
        "a",
        ["permanent", "panic", "permanent"].map(send),
    )
    .await;
    produce(&bootstrap, "b", [send("panic")]).await;
    produce(&bootstrap, "dlq", [send("not an envelope")]).await;
    let daemon = Daemon::start(parse(&text));
    assert_eq!(read_topic(&bootstrap, "dlq", 1, 5, LONG, SETTLE).len(), 5);
    daemon.stop().await;

    // The end of the topic is found from the broker's answer, not by
    // waiting: a long idle timeout is never reached.
    let started = std::time::Instant::now();
    let stats = dlq_json("stats", &config, &["--idle-timeout", "60s"]).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "reading stopped on the idle timeout, not at the partition's end"
    );
    assert_eq!(stats["total"], 5, "{stats:#}");
    assert_eq!(stats["unreadable"], 1);
    assert_eq!(stats["by_topic"], serde_json::json!({"a": 3, "b": 1}));
    assert_eq!(
        stats["by_error_type"],
        serde_json::json!({"HandlerError": 2, "HandlerTrap": 2})
    );
    let (oldest, newest) = (
        stats["oldest_failure"].as_str().expect("oldest"),
        stats["newest_failure"].as_str().expect("newest"),
    );
    assert!(oldest <= newest, "{oldest} {newest}");

    let list = dlq_json("list", &config, &[]).await;
    let letters = list["dead_letters"].as_array().expect("dead letters");
    assert_eq!(letters.len(), 5);
    let unreadable: Vec<&Value> = letters.iter().filter(|l| l["readable"] == false).collect();
    assert_eq!(unreadable.len(), 1, "{list:#}");
    let why = unreadable[0]["unreadable_reason"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("not JSON"), "{why}");

    let traps = dlq_json("list", &config, &["--error-type", "HandlerTrap"]).await;
    let mut topics: Vec<&str> = traps["dead_letters"]
        .as_array()
        .expect("dead letters")
        .iter()
        .map(|l| {
            assert_eq!(l["error_type"], "HandlerTrap");
            l["original_topic"].as_str().expect("a topic")
        })
        .collect();
    topics.sort_unstable();
    assert_eq!(topics, ["a", "b"]);
    assert_eq!(traps["filtered_out"], 3);

    let on_b = dlq_json("list", &config, &["--topic", "b"]).await;
    assert_eq!(on_b["matched"], 1);
    assert_eq!(on_b["dead_letters"][0]["error_type"], "HandlerTrap");
    let both = dlq_json(
        "stats",
        &config,
        &["--topic", "a", "--error-type", "HandlerError"],
    )
    .await;
    assert_eq!(both["total"], 2);
    let limited = dlq_json("list", &config, &["--limit", "2"]).await;
    assert_eq!(
        (limited["shown"].clone(), limited["matched"].clone()),
        (2.into(), 5.into())
    );
    let recent = dlq_json("stats", &config, &["--since", "1h"]).await;
    assert_eq!(
        recent["total"], 4,
        "the undated unreadable record is not recent"
    );
    let ancient = dlq_json("stats", &config, &["--until", "2000-01-01T00:00:00Z"]).await;
    assert_eq!(ancient["total"], 0);

    // A dry run skips the unreadable record with a reason.
    let dry = dlq_json("replay", &config, &["--dry-run"]).await;
    assert_eq!(dry["summary"]["would_replay"], 4, "{dry:#}");
    assert_eq!(dry["summary"]["skipped_unreadable"], 1);

    // The table is printed too.
    let table = sluice(vec![
        "dlq".into(),
        "list".into(),
        "--config".into(),
        config.display().to_string(),
    ])
    .await;
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("unreadable") && table.contains("HandlerTrap"),
        "{table}"
    );

    // Bad arguments are refused, naming what is allowed.
    let error = dlq_fails("list", &config, &["--error-type", "Oops"]).await;
    for name in [
        "Oops",
        "HandlerError",
        "RetriesExhausted",
        "HandlerTimeout",
        "HandlerTrap",
        "MemoryLimitExceeded",
        "InvalidOutput",
    ] {
        assert!(error.contains(name), "{name} missing from: {error}");
    }
    let error = dlq_fails("list", &config, &["--since", "yesterday"]).await;
    assert!(error.contains("RFC 3339"), "{error}");
    let error = dlq_fails("stats", &config, &["--dlq-topic", "nowhere"]).await;
    assert!(error.contains("\"nowhere\" does not exist"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_and_a_config_without_dead_letter_topic_are_refused() {
    let route = "[[routes]]\ntopic = \"a\"\nmodule = \"misbehave\"\n";
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded = write_config(
        dir.path(),
        &config_text("embedded", "g", "dead_letter_topic = \"dlq\"", route),
    );
    let error = dlq_fails("list", &embedded, &[]).await;
    assert!(error.contains("embedded broker"), "{error}");

    let no_dlq = write_config(dir.path(), &config_text("127.0.0.1:1", "g", "", route));
    let error = dlq_fails("stats", &no_dlq, &[]).await;
    assert!(error.contains("--dlq-topic"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_keys_that_are_not_utf8_do_not_stop_the_tool() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["in", "dlq"] {
        broker.create_topic(topic, 1);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = replay_config(dir.path(), &bootstrap, "rawkeys", "in");
    // Another client's records in the dead-letter topic: a valid dead letter
    // and an unreadable one, both with a header key that is not UTF-8.
    let letter = hand_envelope("in", 0, 0, "k", "v").to_string();
    let bad_key: &[u8] = b"\xff\xfe";
    produce_raw_headers(
        &bootstrap,
        "dlq",
        0,
        letter.as_bytes(),
        &[(bad_key, b"x"), (b"error_type", b"HandlerError")],
    )
    .await;
    produce_raw_headers(
        &bootstrap,
        "dlq",
        0,
        b"not an envelope",
        &[(bad_key, b"y"), (b"original_topic", b"in")],
    )
    .await;

    let list = dlq_json("list", &config, &[]).await;
    assert_eq!(list["matched"], 2, "{list:#}");
    assert_eq!(list["dead_letters"][0]["readable"], true, "{list:#}");
    assert_eq!(list["dead_letters"][1]["readable"], false, "{list:#}");
    let on_in = dlq_json("stats", &config, &["--topic", "in"]).await;
    assert_eq!(
        (on_in["total"].clone(), on_in["unreadable"].clone()),
        (2.into(), 1.into()),
        "the unreadable record is judged on its readable headers: {on_in:#}"
    );
    let replay = dlq_json("replay", &config, &[]).await;
    assert_eq!(replay["summary"]["replayed"], 1, "{replay:#}");
    assert_eq!(replay["summary"]["skipped_unreadable"], 1, "{replay:#}");
    let input = read_topic(&bootstrap, "in", 1, 1, LONG, SETTLE);
    assert_eq!(input.len(), 1, "{input:?}");
    assert_eq!(
        (input[0].key_text(), input[0].text()),
        ("k".into(), "v".into())
    );
}
