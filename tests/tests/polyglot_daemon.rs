//! The daemon against a real broker with Python and JavaScript
//! handlers: a route of each side by side, every message handled in order, a
//! value the handler refuses dead-lettered with its reason, offsets
//! committed; and new versions of a 19 MB Python component deployed under
//! traffic without losing or repeating a message.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_tests::broker::Broker;
use sluice_tests::daemon::{
    Daemon, config_text, config_text_in, deploy, module_route, parse, until_plugins,
};
use sluice_tests::kafka::{
    Record, produce_sequence, produce_values, read_topic, read_until, wait_committed,
};
use sluice_tests::{artifacts, polyglot_cache_dir, sha256_hex};

const LONG: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_route_and_a_javascript_route_run_side_by_side() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in [
        "text",
        "text.out",
        "events",
        "events.high",
        "events.default",
        "dlq",
    ] {
        broker.create_topic(topic, 1);
    }
    let per_route = 50;
    let texts: Vec<String> = (0..per_route).map(|i| format!("line-{i}")).collect();
    let mut events: Vec<String> = (0..per_route)
        .map(|i| {
            let priority = if i % 5 == 0 { "high" } else { "low" };
            format!(r#"{{"id":{i},"priority":"{priority}"}}"#)
        })
        .collect();
    events.insert(10, "not json".to_owned());
    produce_values(&bootstrap, "text", 1, &texts).await;
    produce_values(&bootstrap, "events", 1, &events).await;

    let routes = [
        module_route("python-uppercase", "text", "text.out", ""),
        r#"
[[routes]]
topic = "events"
module = "js-router"
output_topics = ["events.high", "events.default"]
[routes.config]
high_topic = "events.high"
default_topic = "events.default"
"#
        .to_owned(),
    ]
    .concat();
    let kafka = "dead_letter_topic = \"dlq\"";
    // The daemon takes both components' machine code from the cache the
    // runtime tests fill, as a restarted daemon would.
    let text = with_test_cache(&config_text(&bootstrap, "polyglot", kafka, &routes));
    let daemon = Daemon::start(parse(&text));

    let upper = read_topic(&bootstrap, "text.out", 1, per_route, LONG, SETTLE);
    let upper: Vec<String> = upper.iter().map(Record::text).collect();
    let expected: Vec<String> = texts.iter().map(|t| t.to_uppercase()).collect();
    assert_eq!(upper, expected, "every line upper-cased, in order, once");

    let high = read_topic(&bootstrap, "events.high", 1, per_route / 5, LONG, SETTLE);
    let default = read_topic(
        &bootstrap,
        "events.default",
        1,
        per_route - per_route / 5,
        LONG,
        SETTLE,
    );
    let ids = |records: &[Record]| -> Vec<u64> {
        records
            .iter()
            .map(|r| {
                let v: serde_json::Value =
                    serde_json::from_slice(r.value.as_deref().unwrap_or_default())
                        .expect("outputs are JSON");
                assert_eq!(v["routed_by"], "js-router");
                v["id"].as_u64().expect("id kept")
            })
            .collect()
    };
    assert_eq!(
        ids(&high),
        (0..per_route as u64)
            .filter(|i| i % 5 == 0)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&default),
        (0..per_route as u64)
            .filter(|i| i % 5 != 0)
            .collect::<Vec<_>>()
    );

    let dlq = read_topic(&bootstrap, "dlq", 1, 1, LONG, SETTLE);
    assert_eq!(dlq.len(), 1, "only the invalid JSON is dead-lettered");
    let letter: serde_json::Value =
        serde_json::from_slice(dlq[0].value.as_deref().unwrap_or_default()).expect("envelope");
    assert_eq!(letter["error_type"], "HandlerError");
    assert_eq!(letter["module"], "js-router");
    assert_eq!(letter["original_message"]["value"], "not json");
    assert!(
        letter["failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("message value is not a JSON object")),
        "{letter}"
    );

    for (topic, end) in [("text", per_route as i64), ("events", per_route as i64 + 1)] {
        let committed = wait_committed(&bootstrap, "test.polyglot", topic, &[end], LONG);
        assert_eq!(committed, [Some(end)], "{topic} committed to the end");
    }
    daemon.stop().await;
}

/// `config` (from `config_text`) with `plugins.cache_dir` set to the
/// compile cache the runtime tests keep, instead of the user's.
fn with_test_cache(config: &str) -> String {
    let dir = polyglot_cache_dir().display().to_string();
    config.replacen(
        "[processing]",
        &format!("cache_dir = {dir:?}\n\n[processing]"),
        1,
    )
}

/// `python-uppercase` as version `n`: the same component with a custom
/// section naming the version appended, so each version has a hash of its
/// own and is compiled anew, as a real deployment would be.
fn python_version(n: u8) -> Vec<u8> {
    let mut bytes = std::fs::read(artifacts::PYTHON_UPPERCASE).expect("the Python example");
    let name = b"sluice-test-version";
    // Section id 0 (custom), its size, then the name (length-prefixed) and
    // the payload; every length fits in one LEB128 byte.
    let size = 1 + name.len() + 1;
    bytes.extend([0, size as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.push(n);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_versions_of_a_large_python_component_under_traffic_lose_nothing() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    broker.create_topic("in", 3);
    broker.create_topic("out", 3);
    let plugins = tempfile::tempdir().expect("plugins dir");
    deploy(plugins.path(), &python_version(0));
    let config = with_test_cache(&config_text_in(
        plugins.path(),
        &bootstrap,
        "python-swaps",
        "",
        &module_route("handler", "in", "out", ""),
    ));
    let daemon = Daemon::start(parse(&config));
    until_plugins(&daemon.status, "the first version loads", |s| {
        s.plugin_loads("handler") == (1, 0)
    })
    .await;

    let total = 6_000;
    let stream = produce_sequence(&bootstrap, "in", 3, total, "m");
    let swaps = async {
        for n in 1..=2 {
            let version = python_version(n);
            deploy(plugins.path(), &version);
            let want = sha256_hex(&version);
            until_plugins(&daemon.status, "the new version serves", |s| {
                s.serving_hash("in").as_deref() == Some(want.as_str())
            })
            .await;
        }
    };
    tokio::join!(stream, swaps);
    assert_eq!(
        daemon.status.plugin_loads("handler"),
        (3, 0),
        "three versions loaded"
    );

    let outputs = read_until(&bootstrap, "out", 3, LONG, |r| r.len() >= total);
    let mut per_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for record in &outputs {
        let text = record.text();
        let seq = text
            .strip_prefix(&format!("M-{}-", &record.key_text()[1..]))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected output {text:?} for key {}", record.key_text()));
        per_key.entry(record.key_text()).or_default().push(seq);
    }
    assert_eq!(per_key.len(), 3, "one key per partition");
    for (key, seqs) in &per_key {
        let expected: Vec<usize> = (0..total / 3).collect();
        assert_eq!(seqs, &expected, "{key}: every message once, in order");
    }
    let ends = [(total / 3) as i64; 3];
    let committed = wait_committed(&bootstrap, "test.python-swaps", "in", &ends, LONG);
    assert_eq!(committed, ends.map(Some), "offsets committed to the end");
    daemon.stop().await;
}
