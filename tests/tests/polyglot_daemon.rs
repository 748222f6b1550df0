//! The daemon against a real broker (Tansu) with a Python route and a
//! JavaScript route side by side: every message handled in order, a value
//! the handler refuses dead-lettered with its reason, offsets committed.

use std::time::Duration;

use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text, module_route, parse};
use sluice_tests::kafka::{Record, produce_values, read_topic, wait_committed};
use sluice_tests::polyglot_cache_dir;

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
    let text = config_text(&bootstrap, "polyglot", kafka, &routes).replacen(
        "[processing]",
        &format!(
            "cache_dir = {:?}\n\n[processing]",
            polyglot_cache_dir().display().to_string()
        ),
        1,
    );
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
