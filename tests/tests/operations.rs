//! The operator's surface: health and readiness, Prometheus metrics, the
//! plugins list and the admin API, over real HTTP.

use std::collections::HashMap;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use rdkafka::mocking::{MockCluster, MockCoordinator};
use sluice::pipeline::CircuitState;
use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text, misbehave_route, parse, until_breaker};
use sluice_tests::http::{get, request};
use sluice_tests::kafka::{Record, Send, produce, produce_values, read_topic, wait_committed};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_follow_the_broker_breaker() {
    // `in` on broker 1 with the group coordinator, `out` on broker 2: taking
    // broker 2 down fails every output.
    let mock = MockCluster::new(2).expect("mock cluster");
    for topic in ["in", "out"] {
        mock.create_topic(topic, 1, 1).expect("topic");
    }
    mock.partition_leader("in", 0, Some(1)).expect("leader");
    mock.partition_leader("out", 0, Some(2)).expect("leader");
    mock.coordinator(MockCoordinator::Group("test.health".into()), 1)
        .expect("coordinator");
    let bootstrap = mock.bootstrap_servers();
    let kafka =
        "timeout_seconds = 1\ncircuit_breaker_threshold = 2\ncircuit_breaker_reset_timeout = 1.0";
    let daemon = Daemon::start(parse(&config_text(
        &bootstrap,
        "health",
        kafka,
        &misbehave_route("in", "out", ""),
    )));
    let addr = daemon.http_addr().await;

    assert_eq!(get(addr, "/health/live").await.status, 200);
    let first: Vec<String> = (0..5).map(|i| format!("a{i}")).collect();
    produce_values(&bootstrap, "in", 1, &first).await;
    let out = read_topic(&bootstrap, "out", 1, 5, LONG, Duration::ZERO);
    assert_eq!(out.len(), 5);

    let health = get(addr, "/health/event-bus").await;
    assert_eq!(health.status, 200, "{}", health.body);
    let h = health.json();
    assert_eq!(h["healthy"], true);
    assert_eq!(h["started"], true);
    assert_eq!(h["environment"], "test");
    assert_eq!(h["group"], "health");
    assert_eq!(h["bootstrap_servers"], bootstrap);
    assert_eq!(h["circuit_state"], "closed");
    assert_eq!(h["subscriber_count"], 1);
    assert_eq!(h["topic_count"], 1);
    assert_eq!(h["consumer_count"], 1);
    assert_eq!(h["routes"][0]["topic"], "in");
    assert_eq!(h["routes"][0]["module"], "misbehave");
    assert_eq!(
        h["routes"][0]["module_hash"].as_str().map(str::len),
        Some(64)
    );
    assert_eq!(h["routes"][0]["circuit_state"], "closed");
    assert_eq!(get(addr, "/health/ready").await.status, 200);

    mock.broker_down(2).expect("broker down");
    produce_values(&bootstrap, "in", 1, &["b0".to_owned(), "b1".to_owned()]).await;
    let breaker = daemon.broker().await;
    until_breaker(&breaker, "the broker breaker opened", |b| {
        b.state() == CircuitState::Open
    })
    .await;
    let health = get(addr, "/health/event-bus").await;
    assert_eq!(health.status, 503, "{}", health.body);
    let h = health.json();
    assert_eq!(h["healthy"], false);
    assert_ne!(h["circuit_state"], "closed");
    assert_eq!(get(addr, "/health/ready").await.status, 503);
    assert_eq!(
        get(addr, "/health/live").await.status,
        200,
        "alive while unhealthy"
    );
    let metrics = scrape(&get(addr, "/metrics").await.body);
    assert!(metrics.value("kafka_event_bus_circuit_state", &[("group", "health")]) >= 1.0);

    mock.broker_up(2).expect("broker up");
    until_breaker(&breaker, "a probe closed the breaker", |b| {
        b.state() == CircuitState::Closed
    })
    .await;
    let health = get(addr, "/health/event-bus").await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["circuit_state"], "closed");
    assert_eq!(get(addr, "/health/ready").await.status, 200);
    let metrics = scrape(&get(addr, "/metrics").await.body);
    assert_eq!(
        metrics.value("kafka_event_bus_circuit_state", &[("group", "health")]),
        0.0
    );
    assert!(metrics.value("sluice_circuit_transitions_total", &[("to", "open")]) >= 1.0);
    assert!(metrics.value("sluice_circuit_transitions_total", &[("to", "closed")]) >= 1.0);

    // Without an admin token, loopback clients may reset breakers.
    let reset = request(addr, "POST", "/admin/breaker/reset", &[]).await;
    assert_eq!(reset.status, 200, "{}", reset.body);
    daemon.stop().await;
}

/// A parsed scrape, looked up by name and labels.
struct Metrics(Scrape);

fn scrape(text: &str) -> Metrics {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    Metrics(Scrape::parse(lines).expect("valid Prometheus text format"))
}

impl Metrics {
    /// The value of the one sample of `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<f64> = self
            .0
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
                Value::Summary(_) => f64::NAN,
            })
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "one sample of {name} with {labels:?}, found {matching:?}"
        );
        matching[0]
    }

    fn names(&self) -> Vec<&str> {
        self.0.samples.iter().map(|s| s.metric.as_str()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_plugins_report_what_was_handled() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["in", "out", "dlq"] {
        broker.create_topic(topic, 1);
    }
    let mut values: Vec<String> = (0..7).map(|i| format!("ok:{i}")).collect();
    values.extend((0..3).map(|i| format!("permanent:{i}")));
    values.extend(["retry:2".to_owned(), "retry:2".to_owned()]);
    produce_values(&bootstrap, "in", 1, &values).await;
    let kafka = "dead_letter_topic = \"dlq\"\nretry_backoff_base = 0.1";
    let daemon = Daemon::start(parse(&config_text(
        &bootstrap,
        "metrics",
        kafka,
        &misbehave_route("in", "out", ""),
    )));
    let addr = daemon.http_addr().await;
    let committed = wait_committed(&bootstrap, "test.metrics", "in", &[12], LONG);
    assert_eq!(committed, [Some(12)]);
    let outputs: Vec<Record> = read_topic(&bootstrap, "out", 1, 9, LONG, Duration::ZERO);
    assert_eq!(outputs.len(), 9);

    // Lag comes from librdkafka's statistics: wait for the report that sees
    // everything committed.
    let deadline = tokio::time::Instant::now() + LONG;
    let metrics = loop {
        let body = get(addr, "/metrics").await.body;
        let m = scrape(&body);
        let lag_zero = m.0.samples.iter().any(|s| {
            s.metric == "sluice_consumer_lag"
                && s.labels.get("topic") == Some("in")
                && matches!(s.value, Value::Gauge(v) if v == 0.0)
        });
        if lag_zero {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no zero consumer lag reported:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let route = [("route", "in")];
    let by = |outcome| [("route", "in"), ("outcome", outcome)];
    assert_eq!(metrics.value("sluice_messages_total", &by("ok")), 9.0);
    assert_eq!(
        metrics.value("sluice_messages_total", &by("dead_lettered")),
        3.0
    );
    assert_eq!(metrics.value("sluice_messages_total", &by("stopped")), 0.0);
    assert_eq!(
        metrics.value(
            "sluice_dead_letters_total",
            &[("route", "in"), ("error_type", "HandlerError")]
        ),
        3.0
    );
    assert_eq!(metrics.value("sluice_retries_total", &route), 2.0);
    assert_eq!(
        metrics.value("sluice_handler_duration_seconds", &route),
        14.0,
        "twelve messages and two retries"
    );
    assert_eq!(metrics.value("sluice_dlq_published_total", &route), 3.0);
    assert_eq!(
        metrics.value("sluice_dlq_publish_failures_total", &route),
        0.0
    );
    assert!(metrics.value("sluice_messages_consumed_total", &[]) >= 12.0);
    assert_eq!(metrics.value("sluice_in_flight_messages", &[]), 0.0);
    assert_eq!(
        metrics.value(
            "kafka_event_bus_circuit_state",
            &[("environment", "test"), ("group", "metrics")]
        ),
        0.0
    );
    assert_eq!(metrics.value("sluice_route_circuit_state", &route), 0.0);
    assert_eq!(
        metrics.value("sluice_plugin_loads_total", &[("module", "misbehave")]),
        1.0
    );
    assert_eq!(metrics.value("sluice_started", &[]), 1.0);
    let names = metrics.names();
    for (family, kind, _) in sluice::metrics::FAMILIES {
        let present = names
            .iter()
            .any(|n| *n == *family || (*kind == "histogram" && n.starts_with(family)));
        assert!(present, "documented metric {family} is exposed");
    }

    let plugins = get(addr, "/plugins").await;
    assert_eq!(plugins.status, 200);
    let p = plugins.json();
    let list = p["plugins"].as_array().expect("a list of plugins");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["module"], "misbehave");
    assert_eq!(list[0]["hash"].as_str().map(str::len), Some(64));
    assert!(list[0]["size"].as_u64().is_some_and(|s| s > 1000));
    assert_eq!(list[0]["routes"], serde_json::json!(["in"]));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_reset_requires_the_configured_token() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["in", "out", "dlq"] {
        broker.create_topic(topic, 1);
    }
    let token = "0123456789abcdef-ops";
    let rest = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{token}\"\n{}",
        misbehave_route(
            "in",
            "out",
            "timeout_ms = 50\nmax_retry_attempts = 0\ncircuit_breaker_threshold = 1\n\
             circuit_breaker_reset_timeout = 3600.0"
        )
    );
    produce_values(&bootstrap, "in", 1, &["loop".to_owned(), "ok:x".to_owned()]).await;
    let daemon = Daemon::start(parse(&config_text(
        &bootstrap,
        "admin",
        "dead_letter_topic = \"dlq\"",
        &rest,
    )));
    let addr = daemon.http_addr().await;
    let breaker = daemon.status.route_breaker("in").expect("route").view();
    until_breaker(&breaker, "the handler breaker opened", |b| {
        b.state() == CircuitState::Open
    })
    .await;

    let path = "/admin/breaker/reset?route=in";
    let missing = request(addr, "POST", path, &[]).await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert!(missing.body.contains("missing bearer token"));
    let wrong = request(
        addr,
        "POST",
        path,
        &[("Authorization", "Bearer 0123456789abcdef-opz")],
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(
        breaker.state(),
        CircuitState::Open,
        "refused requests change nothing"
    );
    assert_eq!(breaker.transitions_to(CircuitState::Closed), 0);

    let bearer = format!("Bearer {token}");
    let unknown = request(
        addr,
        "POST",
        "/admin/breaker/reset?route=nope",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let ok = request(addr, "POST", path, &[("Authorization", &bearer)]).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["reset"], serde_json::json!(["route in"]));
    // The reset closed the breaker; the held message ran again (and, still
    // looping, may have opened it again).
    assert_eq!(breaker.transitions_to(CircuitState::Closed), 1);
    let health = get(addr, "/health/event-bus").await.json();
    let routes: HashMap<String, String> = health["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["topic"].as_str().unwrap_or_default().to_owned(),
                r["circuit_state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(routes.contains_key("in"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_message_span_and_a_chatty_module_is_rate_limited() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    broker.create_topic("noisy", 1);
    let routes =
        "[logging]\nformat = \"json\"\n\n[[routes]]\ntopic = \"noisy\"\nmodule = \"chatty\"\n";
    produce(
        &bootstrap,
        "noisy",
        (0..5).map(|_| Send {
            partition: Some(0),
            key: None,
            value: b"hello",
            headers: &[("correlation_id", b"corr-noisy")],
        }),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("sluice.log");
    let daemon = sluice_tests::daemon::DaemonProcess::start_logging_to(
        env!("CARGO_BIN_EXE_sluice-test-daemon"),
        &config_text(&bootstrap, "logs", "", routes),
        Some(&log),
    );
    let committed = wait_committed(&bootstrap, "test.logs", "noisy", &[5], LONG);
    assert_eq!(committed, [Some(5)]);
    assert_eq!(daemon.terminate(), Some(0));

    let text = std::fs::read_to_string(&log).expect("the log file");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let guest: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "sluice::guest" && l["fields"]["module"] == "chatty")
        .collect();
    let said: Vec<&serde_json::Value> = guest
        .iter()
        .copied()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("chatty "))
        })
        .collect();
    // The module tried to log 5000 lines: the per-module budget lets a burst
    // of 200 through, then about 100 a second, and says how many it dropped.
    assert!(!said.is_empty(), "guest lines are logged");
    assert!(said.len() < 1000, "{} guest lines got through", said.len());
    assert!(
        guest
            .iter()
            .any(|l| l["fields"]["suppressed"].as_u64().is_some_and(|n| n > 0)),
        "the suppression is reported"
    );
    let span = &said[0]["span"];
    assert_eq!(span["name"], "message");
    assert_eq!(span["topic"], "noisy");
    assert_eq!(span["partition"], 0);
    assert_eq!(span["offset"], 0);
    assert_eq!(span["module"], "chatty");
    assert_eq!(span["correlation_id"], "corr-noisy");
    assert_eq!(span["module_hash"].as_str().map(str::len), Some(12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_takes_its_module_from_the_compile_cache() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    broker.create_topic("cached", 1);
    broker.create_topic("cached.out", 1);
    let cache = tempfile::tempdir().expect("temporary directory");
    let start = || {
        let mut config = parse(&config_text(
            &bootstrap,
            "cached",
            "",
            &misbehave_route("cached", "cached.out", ""),
        ));
        config.plugins.cache_dir = Some(cache.path().join("modules"));
        Daemon::start(config)
    };
    for (cached, why) in [
        (false, "the first start compiles"),
        (true, "a restart takes the machine code from the cache"),
    ] {
        let daemon = start();
        assert_eq!(from_cache(&daemon).await, Some(cached), "{why}");
        daemon.stop().await;
    }
}

/// What `/plugins` says of the module's machine code, once it is loaded
/// (the HTTP endpoint is up before the modules are).
async fn from_cache(daemon: &Daemon) -> Option<bool> {
    let addr = daemon.http_addr().await;
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let plugins = get(addr, "/plugins").await.json();
        let loaded = &plugins["plugins"][0];
        if !loaded.is_null() || tokio::time::Instant::now() > deadline {
            return loaded["from_compile_cache"].as_bool();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
