//! The daemon against a real broker: every message handled in
//! partition order, failures dead-lettered with their full envelope, offsets
//! committed only after acknowledgement, restarts and crashes lose nothing,
//! and two daemons share a group.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine as _;
use sluice_tests::broker::Broker;
use sluice_tests::daemon::{
    Daemon, DaemonProcess, config_text, misbehave_route, module_route, parse,
};
use sluice_tests::kafka::{
    Record, Send, produce, produce_sequence, produce_values, read_topic, wait_committed,
};

const DAEMON: &str = env!("CARGO_BIN_EXE_sluice-test-daemon");
const LONG: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(2);

fn uppercase_route(input: &str, output: &str) -> String {
    module_route("uppercase", input, output, "")
}

/// Checks that, per key, the values `PREFIX-P-SEQ` arrive with SEQ counting
/// up from 0 without a gap; returns how many arrived more than once.
fn assert_complete_in_order(
    records: &[Record],
    prefix: &str,
    partitions: i32,
    per_partition: usize,
) -> usize {
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for r in records {
        let text = r.text();
        let seq = text
            .rsplit('-')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected output {text:?}"));
        assert!(text.starts_with(prefix), "unexpected output {text:?}");
        by_key.entry(r.key_text()).or_default().push(seq);
    }
    assert_eq!(
        by_key.len(),
        partitions as usize,
        "one key per input partition"
    );
    let mut duplicates = 0;
    let mut gaps = Vec::new();
    for (key, seqs) in &by_key {
        let distinct: BTreeSet<usize> = seqs.iter().copied().collect();
        let missing: Vec<usize> = (0..per_partition)
            .filter(|s| !distinct.contains(s))
            .collect();
        if !missing.is_empty() {
            gaps.push(format!(
                "key {key}: {} of {per_partition} outputs missing, first {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ));
        }
        assert!(
            distinct.iter().all(|s| *s < per_partition),
            "key {key}: unexpected sequence numbers"
        );
        duplicates += seqs.len() - distinct.len();
    }
    assert!(gaps.is_empty(), "every message has its output: {gaps:#?}");
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_handled_in_partition_order_and_committed() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    broker.create_topic("orders", 3);
    broker.create_topic("orders.out", 3);
    let per_partition = 1000;
    produce_sequence(&bootstrap, "orders", 3, 3 * per_partition, "order").await;

    let config = parse(&config_text(
        &bootstrap,
        "order-flow",
        "",
        &uppercase_route("orders", "orders.out"),
    ));
    let daemon = Daemon::start(config);

    let out = read_topic(&bootstrap, "orders.out", 3, 3 * per_partition, LONG, SETTLE);
    let duplicates = assert_complete_in_order(&out, "ORDER", 3, per_partition);
    assert_eq!(duplicates, 0, "a clean run handles nothing twice");
    assert_eq!(out.len(), 3 * per_partition, "no unexpected outputs");
    // Per key, outputs are in input order.
    for key in ["k0", "k1", "k2"] {
        let seqs: Vec<usize> = out
            .iter()
            .filter(|r| r.key_text() == key)
            .map(|r| {
                r.text()
                    .rsplit('-')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(usize::MAX)
            })
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{key}: outputs out of order"
        );
    }
    // Every output carries a correlation id.
    assert!(out.iter().all(|r| r.header("correlation_id").is_some()));

    let ends = [per_partition as i64; 3];
    let committed = wait_committed(&bootstrap, "test.order-flow", "orders", &ends, LONG);
    assert_eq!(
        committed,
        ends.iter().map(|e| Some(*e)).collect::<Vec<_>>(),
        "offsets committed to the end"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_dead_lettered_with_the_full_envelope() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for (topic, partitions) in [
        ("mis", 1),
        ("mis.out", 1),
        ("json", 1),
        ("json.out", 1),
        ("wild", 1),
        ("dlq", 1),
    ] {
        broker.create_topic(topic, partitions);
    }
    let routes = r#"
[[routes]]
topic = "mis"
module = "misbehave"
output_topics = ["mis.out"]
timeout_ms = 300
memory_limit_mb = 16
[routes.config]
output_topic = "mis.out"

[[routes]]
topic = "json"
module = "json_router"
output_topics = ["json.out"]
[routes.config]
high_topic = "json.out"
default_topic = "json.out"

[[routes]]
topic = "wild"
module = "misbehave"
output_topics = ["mis.out"]
[routes.config]
output_topic = "somewhere-else"
"#;
    let kafka = "dead_letter_topic = \"dlq\"\nmax_retry_attempts = 2\nretry_backoff_base = 0.1";
    let modes = [
        "ok:first",
        "permanent",
        "panic",
        "loop",
        "oom",
        "stack",
        "retry:99",
        "retry:2",
        "ok:last",
    ];
    produce(
        &bootstrap,
        "mis",
        modes.iter().map(|m| Send {
            partition: Some(0),
            key: Some(b"mis-key"),
            value: m.as_bytes(),
            headers: &[("correlation_id", b"corr-mis")],
        }),
    )
    .await;
    let not_utf8: &[u8] = &[0xff, 0xfe, 0x00, b'{'];
    produce(
        &bootstrap,
        "json",
        [Send {
            partition: Some(0),
            key: Some(&[0xc3, 0x28]),
            value: not_utf8,
            headers: &[("trace", &[0x80])],
        }],
    )
    .await;
    produce(
        &bootstrap,
        "wild",
        [Send {
            partition: Some(0),
            key: None,
            value: b"ok:escape",
            headers: &[],
        }],
    )
    .await;

    let config = parse(&config_text(&bootstrap, "dead-letters", kafka, routes));
    let daemon = Daemon::start(config);

    let dlq = read_topic(&bootstrap, "dlq", 1, 8, LONG, SETTLE);
    let outputs = read_topic(&bootstrap, "mis.out", 1, 3, LONG, SETTLE);
    let texts: Vec<String> = outputs.iter().map(Record::text).collect();
    assert_eq!(
        texts,
        ["first", "retry:2", "last"],
        "successes (retry:2 on its second attempt) in order"
    );

    let envelopes: Vec<serde_json::Value> = dlq
        .iter()
        .map(|r| {
            serde_json::from_slice(r.value.as_deref().unwrap_or_default()).expect("JSON envelope")
        })
        .collect();
    let by_value = |v: &str| {
        envelopes
            .iter()
            .zip(&dlq)
            .find(|(e, _)| e["original_message"]["value"] == v)
            .unwrap_or_else(|| panic!("no dead letter for {v}: {envelopes:#?}"))
    };
    for (mode, error_type, retries) in [
        ("permanent", "HandlerError", 0),
        ("panic", "HandlerTrap", 0),
        ("loop", "HandlerTimeout", 2),
        ("oom", "MemoryLimitExceeded", 0),
        ("stack", "HandlerTrap", 0),
        ("retry:99", "RetriesExhausted", 2),
    ] {
        let (e, record) = by_value(mode);
        assert_eq!(e["error_type"], error_type, "{mode}");
        assert_eq!(e["retry_count"], retries, "{mode}");
        assert_eq!(e["original_topic"], "mis");
        assert_eq!(e["original_message"]["key"], "mis-key");
        assert_eq!(e["original_message"]["partition"], 0);
        assert!(e["original_message"]["offset"].is_string());
        assert!(e["original_message"]["timestamp"].is_i64());
        assert_eq!(e["correlation_id"], "corr-mis");
        assert_eq!(e["module"], "misbehave");
        assert_eq!(e["module_hash"].as_str().map(str::len), Some(64));
        assert!(e["failure_reason"].as_str().is_some_and(|r| !r.is_empty()));
        assert!(
            e["failure_timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.len() == 24)
        );
        assert_eq!(
            record.key.as_deref(),
            Some(&b"mis-key"[..]),
            "the DLQ record keeps the original key"
        );
        for header in [
            "original_topic",
            "original_partition",
            "original_offset",
            "failure_reason",
            "failure_timestamp",
            "correlation_id",
            "error_type",
            "module",
            "module_hash",
        ] {
            assert!(record.header(header).is_some(), "{mode}: header {header}");
        }
        assert_eq!(record.header("error_type").as_deref(), Some(error_type));
        assert_eq!(
            record.header("original_offset"),
            e["original_message"]["offset"].as_str().map(str::to_owned)
        );
    }
    assert!(
        by_value("panic").0["failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("asked to panic"))
    );

    // Binary-safe: the non-UTF-8 value, key and header come back exactly.
    let b64 = base64::engine::general_purpose::STANDARD;
    let (e, record) = envelopes
        .iter()
        .zip(&dlq)
        .find(|(e, _)| e["original_topic"] == "json")
        .expect("the invalid JSON is dead-lettered");
    assert_eq!(e["error_type"], "HandlerError");
    assert_eq!(e["original_message"]["value_encoding"], "base64");
    assert_eq!(
        b64.decode(e["original_message"]["value"].as_str().unwrap_or_default())
            .ok()
            .as_deref(),
        Some(not_utf8)
    );
    assert_eq!(e["original_message"]["key_encoding"], "base64");
    assert_eq!(record.key.as_deref(), Some(&[0xc3, 0x28][..]));
    assert_eq!(
        e["original_message"]["headers"][0]["value_encoding"],
        "base64"
    );
    assert!(
        record.header("correlation_id").is_some(),
        "a correlation id is generated when absent"
    );

    let (e, _) = envelopes
        .iter()
        .zip(&dlq)
        .find(|(e, _)| e["original_topic"] == "wild")
        .expect("invalid output");
    assert_eq!(e["error_type"], "InvalidOutput");
    assert!(
        e["failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("somewhere-else"))
    );
    assert_eq!(dlq.len(), 8, "nothing else was dead-lettered");

    // Offsets move past dead-lettered messages only once they are in the DLQ.
    let ends = [modes.len() as i64];
    let committed = wait_committed(&bootstrap, "test.dead-letters", "mis", &ends, LONG);
    assert_eq!(committed, vec![Some(ends[0])]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_topic_the_partition_stops_on_the_failure() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    broker.create_topic("halt", 1);
    broker.create_topic("halt.out", 1);
    let routes = r#"
[[routes]]
topic = "halt"
module = "misbehave"
output_topics = ["halt.out"]
[routes.config]
output_topic = "halt.out"
"#;
    produce(
        &bootstrap,
        "halt",
        ["ok:a", "ok:b", "permanent", "ok:after"]
            .iter()
            .map(|v| Send {
                partition: Some(0),
                key: None,
                value: v.as_bytes(),
                headers: &[],
            }),
    )
    .await;
    let daemon = Daemon::start(parse(&config_text(&bootstrap, "halting", "", routes)));
    let out = read_topic(&bootstrap, "halt.out", 1, 2, LONG, SETTLE);
    assert_eq!(
        out.iter().map(Record::text).collect::<Vec<_>>(),
        ["a", "b"],
        "nothing after the failure"
    );
    let committed = wait_committed(&bootstrap, "test.halting", "halt", &[2], LONG);
    assert_eq!(
        committed,
        vec![Some(2)],
        "committed up to, not past, the failed message"
    );
    daemon.stop().await;
    let committed =
        sluice::pipeline::committed_offsets(&bootstrap, "test.halting", "halt", 1, LONG)
            .expect("offsets");
    assert_eq!(
        committed,
        vec![Some(2)],
        "shutdown commits nothing past the failed message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_committed_offsets() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    broker.create_topic("resume", 2);
    broker.create_topic("resume.out", 2);
    let text = config_text(
        &bootstrap,
        "resumer",
        "",
        &uppercase_route("resume", "resume.out"),
    );

    produce_sequence(&bootstrap, "resume", 2, 400, "first").await;
    let daemon = Daemon::start(parse(&text));
    let out = read_topic(&bootstrap, "resume.out", 2, 400, LONG, Duration::ZERO);
    assert_eq!(out.len(), 400);
    daemon.stop().await;

    produce_sequence(&bootstrap, "resume", 2, 400, "second").await;
    let daemon = Daemon::start(parse(&text));
    let out = read_topic(&bootstrap, "resume.out", 2, 800, LONG, SETTLE);
    daemon.stop().await;
    let first = out.iter().filter(|r| r.text().starts_with("FIRST")).count();
    let second = out
        .iter()
        .filter(|r| r.text().starts_with("SECOND"))
        .count();
    assert_eq!(
        (first, second),
        (400, 400),
        "nothing committed was handled again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_mid_stream_loses_nothing() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    broker.create_topic("crash", 3);
    broker.create_topic("crash.out", 3);
    let per_partition = 4000;
    produce_sequence(&bootstrap, "crash", 3, 3 * per_partition, "crash").await;
    let text = config_text(
        &bootstrap,
        "crasher",
        "",
        &uppercase_route("crash", "crash.out"),
    );

    let first = DaemonProcess::start(DAEMON, &text);
    // Kill it once it is well into the stream.
    let partial = read_topic(&bootstrap, "crash.out", 3, 2000, LONG, Duration::ZERO);
    assert!(partial.len() >= 2000);
    first.kill();

    let second = DaemonProcess::start(DAEMON, &text);
    let out = read_topic(&bootstrap, "crash.out", 3, 3 * per_partition, LONG, SETTLE);
    let duplicates = assert_complete_in_order(&out, "CRASH", 3, per_partition);
    println!(
        "kill -9 after {} outputs: {duplicates} duplicates, none missing",
        partial.len()
    );
    assert_eq!(second.terminate(), Some(0), "SIGTERM drains and exits 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_the_partitions_and_one_takes_over() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    broker.create_topic("shared", 4);
    broker.create_topic("shared.a", 4);
    broker.create_topic("shared.b", 4);
    // Each daemon writes to its own output topic, so the split is visible.
    let route = |out: &str| {
        format!(
            r#"
[[routes]]
topic = "shared"
module = "misbehave"
output_topics = ["shared.a", "shared.b"]
[routes.config]
output_topic = "{out}"
"#
        )
    };
    let a = Daemon::start(parse(&config_text(
        &bootstrap,
        "pair",
        "",
        &route("shared.a"),
    )));
    let b = Daemon::start(parse(&config_text(
        &bootstrap,
        "pair",
        "",
        &route("shared.b"),
    )));
    // Let both join before traffic starts: wait until the group has given
    // each of them partitions.
    let deadline = std::time::Instant::now() + LONG;
    let split = |a: usize, b: usize| a > 0 && b > 0 && a + b == 4;
    while !split(a.status.assigned(), b.status.assigned()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the group never split the partitions: {} and {}",
            a.status.assigned(),
            b.status.assigned()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    produce_sequence(&bootstrap, "shared", 4, 4000, "one").await;
    let a_out = read_topic(&bootstrap, "shared.a", 4, 1, LONG, SETTLE * 2);
    let b_out = read_topic(&bootstrap, "shared.b", 4, 1, LONG, SETTLE * 2);
    assert!(
        !a_out.is_empty() && !b_out.is_empty(),
        "both daemons handled messages"
    );
    a.stop().await;

    produce_sequence(&bootstrap, "shared", 4, 4000, "two").await;
    let mut all = read_topic(&bootstrap, "shared.a", 4, 0, Duration::ZERO, SETTLE);
    all.extend(read_topic(
        &bootstrap,
        "shared.b",
        4,
        8000usize.saturating_sub(all.len()),
        LONG,
        SETTLE,
    ));
    b.stop().await;
    let values: BTreeSet<String> = all.iter().map(Record::text).collect();
    for prefix in ["one", "two"] {
        for p in 0..4 {
            for seq in 0..1000 {
                let v = format!("{prefix}-{p}-{seq}");
                assert!(values.contains(&v), "{v} was handled");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_message_inside_a_batch_is_the_only_one_dead_lettered() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["batched", "batched.out", "dlq"] {
        broker.create_topic(topic, 1);
    }
    // Every message is in the topic before the daemon starts, so the worker
    // hands the handler long runs of them in single `handle-batch` calls.
    // Four of them make the call fail in four ways; only they may fail.
    let bad: BTreeMap<usize, (&str, &str)> = [
        (37, ("panic", "HandlerTrap")),
        (38, ("permanent", "HandlerError")),
        (150, ("loop", "HandlerTimeout")),
        (261, ("oom", "MemoryLimitExceeded")),
    ]
    .into();
    let values: Vec<String> = (0..300)
        .map(|i| {
            bad.get(&i)
                .map_or_else(|| format!("ok:m{i}"), |(v, _)| (*v).to_owned())
        })
        .collect();
    produce_values(&bootstrap, "batched", 1, &values).await;
    let routes = misbehave_route(
        "batched",
        "batched.out",
        "timeout_ms = 300\nmemory_limit_mb = 16\nmax_retry_attempts = 0",
    );
    let config = config_text(
        &bootstrap,
        "batched",
        "dead_letter_topic = \"dlq\"",
        &routes,
    );
    let daemon = Daemon::start(parse(&config));

    let good: Vec<String> = (0..300)
        .filter(|i| !bad.contains_key(i))
        .map(|i| format!("m{i}"))
        .collect();
    let outputs = read_topic(&bootstrap, "batched.out", 1, good.len(), LONG, SETTLE);
    let texts: Vec<String> = outputs.iter().map(Record::text).collect();
    assert_eq!(
        texts, good,
        "every good message has exactly one output, in order, whichever batch it shared with a bad one"
    );
    let letters: Vec<(String, String, String)> = read_topic(&bootstrap, "dlq", 1, 4, LONG, SETTLE)
        .iter()
        .map(|r| {
            let e: serde_json::Value =
                serde_json::from_slice(r.value.as_deref().unwrap_or_default())
                    .expect("a JSON envelope");
            let field = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (
                field(&e["original_message"]["offset"]),
                field(&e["original_message"]["value"]),
                field(&e["error_type"]),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = bad
        .iter()
        .map(|(i, (v, t))| (i.to_string(), (*v).to_owned(), (*t).to_owned()))
        .collect();
    assert_eq!(
        letters, expected,
        "exactly the bad messages are dead-lettered, each with its own offset and failure"
    );
    let committed = wait_committed(&bootstrap, "test.batched", "batched", &[300], LONG);
    assert_eq!(committed, [Some(300)]);

    let metrics = &daemon.status.route("batched").expect("the route").metrics;
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    let (calls, fallbacks) = (load(&metrics.batch_calls), load(&metrics.batch_fallbacks));
    assert!(
        (4..100).contains(&calls),
        "300 messages took {calls} batch calls: most were handled many at a time"
    );
    // The panic, the loop and the memory exhaustion each failed a whole
    // call; the permanent error is an answer, not a failure of the call.
    assert_eq!(
        fallbacks, 3,
        "batch calls handed over one message at a time"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_partitions_take_turns_when_handlers_are_slow() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    broker.create_topic("turns", 2);
    broker.create_topic("turns.out", 1);
    // 25 ms per message on two partitions, with one concurrency slot: a
    // partition keeps the slot for a turn of a few messages, not for every
    // message it has queued.
    const PER_PARTITION: usize = 16;
    let keys: Vec<(i32, String)> = (0..2)
        .flat_map(|p| (0..PER_PARTITION).map(move |i| (p, format!("p{p}-{i:02}"))))
        .collect();
    produce(
        &bootstrap,
        "turns",
        keys.iter().map(|(p, key)| Send {
            partition: Some(*p),
            key: Some(key.as_bytes()),
            value: b"slow:25",
            headers: &[],
        }),
    )
    .await;
    let config = config_text(
        &bootstrap,
        "turns",
        "",
        &misbehave_route("turns", "turns.out", ""),
    );
    let mut config = parse(&config);
    config.processing.concurrency = 1;
    let daemon = Daemon::start(config);

    let outputs = read_topic(&bootstrap, "turns.out", 1, keys.len(), LONG, SETTLE);
    let order: Vec<String> = outputs.iter().map(Record::key_text).collect();
    for p in 0..2 {
        let prefix = format!("p{p}-");
        let own: Vec<&String> = order.iter().filter(|k| k.starts_with(&prefix)).collect();
        let expected: Vec<String> = (0..PER_PARTITION)
            .map(|i| format!("{prefix}{i:02}"))
            .collect();
        assert_eq!(
            own,
            expected.iter().collect::<Vec<_>>(),
            "partition {p}: each once, in order"
        );
    }
    // The longest stretch of outputs from one partition: a turn is 50 ms,
    // two or three 25 ms messages.
    let longest = order
        .chunk_by(|a, b| a[..2] == b[..2])
        .map(<[String]>::len)
        .max()
        .unwrap_or_default();
    assert!(
        longest <= 6,
        "one partition kept the slot for {longest} messages in a row: {order:?}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_output_correlation_id_off_outputs_carry_only_the_handlers_headers() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["plain", "plain.out", "bad", "bad.out", "plain.dlq"] {
        broker.create_topic(topic, 1);
    }
    produce(
        &bootstrap,
        "plain",
        [
            Send {
                partition: Some(0),
                key: None,
                value: b"untraced",
                headers: &[],
            },
            Send {
                partition: Some(0),
                key: None,
                value: b"traced",
                headers: &[("correlation_id", b"corr-kept"), ("trace", b"t-1")],
            },
        ],
    )
    .await;
    produce_values(&bootstrap, "bad", 1, &["permanent".to_owned()]).await;

    // `uppercase` returns the input's headers as its output's.
    let routes = format!(
        "{}{}",
        uppercase_route("plain", "plain.out"),
        misbehave_route("bad", "bad.out", "")
    );
    let kafka = "dead_letter_topic = \"plain.dlq\"";
    let mut config = parse(&config_text(&bootstrap, "plain-headers", kafka, &routes));
    config.processing.output_correlation_id = false;
    let _daemon = Daemon::start(config);

    let out = read_topic(&bootstrap, "plain.out", 1, 2, LONG, SETTLE);
    let texts: Vec<String> = out.iter().map(Record::text).collect();
    assert_eq!(texts, ["UNTRACED", "TRACED"]);
    assert_eq!(
        out[0].headers,
        [],
        "no header is added to an output whose handler returned none"
    );
    assert_eq!(
        out[1].headers,
        [
            ("correlation_id".to_owned(), b"corr-kept".to_vec()),
            ("trace".to_owned(), b"t-1".to_vec())
        ],
        "the handler's headers, exactly as it returned them"
    );
    let dlq = read_topic(&bootstrap, "plain.dlq", 1, 1, LONG, SETTLE);
    assert!(
        dlq[0]
            .header("correlation_id")
            .is_some_and(|id| id.len() == 36),
        "dead letters still carry a (generated) correlation id: {:?}",
        dlq[0].headers
    );
}
