//! `sluice dlq replay` against a real broker: it writes only to
//! topics a route consumes (or `--allow-topic` names), at most `--limit`
//! dead letters, and each dead letter once, keeping its position as a
//! consumer group's committed offsets without ever skipping a letter that
//! no run replayed; a dead letter cut to fit is replayed from its original
//! record, or refused when that is gone.

mod dlq_cli;

use std::time::Duration;

use dlq_cli::{dlq_json, hand_envelope, replay_config};
use rdkafka::mocking::MockCluster;
use serde_json::Value;
use sluice_tests::broker::Broker;
use sluice_tests::kafka::{Record, Send, produce, read_topic};

const LONG: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(2);

/// Produces hand-written dead letters to `dlq`, partition 0, one record
/// batch each.
async fn put_letters(bootstrap: &str, letters: &[Value]) {
    let values: Vec<String> = letters.iter().map(Value::to_string).collect();
    produce(
        bootstrap,
        "dlq",
        values.iter().map(|v| Send {
            partition: Some(0),
            key: None,
            value: v.as_bytes(),
            headers: &[],
        }),
    )
    .await;
}

/// The outcome names of a replay's results, in order.
fn outcomes(run: &Value) -> Vec<String> {
    run["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["outcome"].as_str().expect("an outcome").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_writes_only_to_routed_topics_and_at_most_the_limit() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["in", "other", "dlq"] {
        broker.create_topic(topic, 1);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = replay_config(dir.path(), &bootstrap, "routed", "in");
    put_letters(
        &bootstrap,
        &[
            hand_envelope("in", 0, 10, "k0", "first"),
            hand_envelope("other", 0, 11, "k1", "elsewhere"),
            hand_envelope("in", 0, 12, "k2", "second"),
            hand_envelope("in", 0, 13, "k3", "third"),
        ],
    )
    .await;

    let limited = dlq_json("replay", &config, &["--limit", "1"]).await;
    assert_eq!(
        outcomes(&limited),
        ["replayed", "refused_topic"],
        "{limited:#}"
    );
    assert_eq!(limited["summary"]["beyond_limit"], 2, "{limited:#}");
    let why = limited["results"][1]["detail"].as_str().unwrap_or_default();
    assert!(
        why.contains("\"other\"") && why.contains("--allow-topic other"),
        "{why}"
    );
    // The refused letter stops the position: it was never replayed.
    assert_eq!(
        limited["position"]["committed"],
        serde_json::json!([{"topic": "dlq", "partition": 0, "offset": 1, "recorded_beyond": 0}])
    );

    let allowed = dlq_json(
        "replay",
        &config,
        &["--allow-topic", "other", "--limit", "2"],
    )
    .await;
    assert_eq!(
        outcomes(&allowed),
        ["skipped_already_replayed", "replayed", "replayed"],
        "{allowed:#}"
    );
    assert_eq!(allowed["summary"]["beyond_limit"], 1);
    let input = read_topic(&bootstrap, "in", 1, 2, LONG, SETTLE);
    let values: Vec<String> = input.iter().map(Record::text).collect();
    assert_eq!(values, ["first", "second"], "at most the limit, in order");
    let other = read_topic(&bootstrap, "other", 1, 1, LONG, SETTLE);
    assert_eq!(other.len(), 1, "written only once it was allowed");
    assert_eq!(other[0].text(), "elsewhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_run_twice_replays_each_dead_letter_once() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["in", "dlq"] {
        broker.create_topic(topic, 1);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = replay_config(dir.path(), &bootstrap, "once", "in");
    let letters = [
        hand_envelope("in", 0, 0, "k0", "zero"),
        hand_envelope("in", 0, 1, "k1", "one"),
        hand_envelope("in", 0, 2, "k2", "two"),
    ];
    put_letters(&bootstrap, &letters).await;
    let corr = |i: usize| {
        letters[i]["correlation_id"]
            .as_str()
            .expect("an id")
            .to_owned()
    };

    let first = dlq_json("replay", &config, &[]).await;
    assert_eq!(first["summary"]["replayed"], 3, "{first:#}");
    assert_eq!(
        first["position"]["group"], "test.once.sluice-dlq-replay",
        "{first:#}"
    );
    let again = dlq_json("replay", &config, &[]).await;
    assert_eq!(
        outcomes(&again),
        ["skipped_already_replayed"; 3],
        "{again:#}"
    );
    let input = read_topic(&bootstrap, "in", 1, 3, LONG, SETTLE);
    assert_eq!(input.len(), 3, "each dead letter replayed once: {input:?}");

    // Starting over replays them all again; the position stays where it was.
    let over = dlq_json("replay", &config, &["--from-beginning"]).await;
    assert_eq!(over["summary"]["replayed"], 3, "{over:#}");
    assert_eq!(over["position"]["committed"], serde_json::json!([]));
    assert_eq!(read_topic(&bootstrap, "in", 1, 6, LONG, SETTLE).len(), 6);

    // Three new letters, replayed with filters: the position never skips
    // one that no run replayed.
    put_letters(&bootstrap, &letters).await;
    let only = dlq_json("replay", &config, &["--correlation-id", &corr(0)]).await;
    assert_eq!(outcomes(&only), ["skipped_already_replayed", "replayed"]);
    let last = dlq_json("replay", &config, &["--correlation-id", &corr(2)]).await;
    assert_eq!(outcomes(&last), ["skipped_already_replayed", "replayed"]);
    // The letter replayed past the one this run did not select is recorded
    // in the commit's metadata. Nisshi drops commit metadata (pinned in
    // broker_fidelity.rs), and the tool reads the record back and says so;
    // on Kafka (and the mock cluster, below) it is kept.
    assert_eq!(last["position"]["error"], Value::Null);
    let said = last["position"]["warning"].as_str().unwrap_or_default();
    assert!(
        said.contains("the broker did not keep the record of the 1 letters replayed past"),
        "{last:#}"
    );
    let rest = dlq_json("replay", &config, &[]).await;
    let rest_outcomes = outcomes(&rest);
    assert_eq!(
        rest_outcomes[..4],
        ["skipped_already_replayed"; 4],
        "{rest:#}"
    );
    assert_eq!(
        rest["results"][4]["correlation_id"],
        corr(1),
        "the letter neither filtered run selected is replayed, not skipped: {rest:#}"
    );
    assert_eq!(rest_outcomes[4], "replayed");
    // The record of the letter the second filtered run replayed past the
    // one it did not select was lost with Nisshi's metadata: it is replayed
    // again, as the earlier run warned.
    assert_eq!(rest_outcomes[5], "replayed");
    assert_eq!(
        rest["position"]["committed"],
        serde_json::json!([{"topic": "dlq", "partition": 0, "offset": 6, "recorded_beyond": 0}])
    );
    let input = read_topic(&bootstrap, "in", 1, 10, LONG, SETTLE);
    assert_eq!(input.len(), 10, "{input:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_run_three_times_writes_each_letter_once_and_keeps_refusing_the_refused() {
    // librdkafka's mock cluster keeps commit metadata as Kafka does (Nisshi
    // drops it); the test counts a handful of records, well inside the tail
    // the mock keeps.
    let mock = MockCluster::new(1).expect("mock cluster");
    for topic in ["in", "other", "dlq"] {
        mock.create_topic(topic, 1, 1).expect("mock topic");
    }
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = replay_config(dir.path(), &bootstrap, "thrice", "in");
    // One original for a cut letter to be replayed from.
    let big = "y".repeat(3000);
    produce(
        &bootstrap,
        "in",
        [Send {
            partition: Some(0),
            key: Some(b"big-key"),
            value: big.as_bytes(),
            headers: &[],
        }],
    )
    .await;
    let cut = |offset: i64| {
        let mut letter = hand_envelope("in", 0, offset, "big-key", &big[..100]);
        letter["original_message"]["value_truncated"] = true.into();
        letter["original_message"]["original_value_size"] = 3000.into();
        letter
    };
    // Routable, refused (a topic no route consumes), routable, cut with its
    // original, refused, cut with its original gone, routable.
    put_letters(
        &bootstrap,
        &[
            hand_envelope("in", 0, 10, "k0", "a"),
            hand_envelope("other", 0, 11, "k1", "refused-1"),
            hand_envelope("in", 0, 12, "k2", "b"),
            cut(0),
            hand_envelope("other", 0, 13, "k3", "refused-2"),
            // Offset 1 of `in` is not written until the replay produces.
            cut(1),
            hand_envelope("in", 0, 14, "k4", "c"),
        ],
    )
    .await;

    let expected_first = [
        "replayed",
        "refused_topic",
        "replayed",
        "replayed",
        "refused_topic",
        "refused_original_gone",
        "replayed",
    ];
    let first = dlq_json("replay", &config, &[]).await;
    assert_eq!(outcomes(&first), expected_first, "{first:#}");
    // The first refused letter holds the position at 1; the four letters
    // dealt with past it are recorded.
    assert_eq!(
        first["position"]["committed"],
        serde_json::json!([{"topic": "dlq", "partition": 0, "offset": 1, "recorded_beyond": 4}]),
        "{first:#}"
    );
    for run in 2..=3 {
        let again = dlq_json("replay", &config, &[]).await;
        let names = outcomes(&again);
        assert_eq!(
            names,
            [
                "skipped_already_replayed",
                "refused_topic",
                "skipped_already_replayed",
                "skipped_already_replayed",
                "refused_topic",
                "skipped_already_replayed",
                "skipped_already_replayed",
            ],
            "run {run}: the refused letters stay refused and visible, nothing else is \
             written again: {again:#}"
        );
        let why = again["results"][2]["detail"].as_str().unwrap_or_default();
        assert!(why.contains("recorded past the replay position 1"), "{why}");
    }
    // Each routable letter once, and the found original once: three plain
    // letters, one cut, beside the original itself.
    let input = read_topic(&bootstrap, "in", 1, 5, LONG, SETTLE);
    let mut values: Vec<String> = input.iter().map(Record::text).collect();
    values.sort();
    assert_eq!(values, ["a", "b", "c", big.as_str(), big.as_str()]);
    sluice_tests::kafka::assert_empty(&bootstrap, "other", "no refused letter is written");

    // Allowing the refused topic: both are replayed, the position moves
    // over everything and the record empties.
    let allowed = dlq_json("replay", &config, &["--allow-topic", "other"]).await;
    assert_eq!(allowed["summary"]["replayed"], 2, "{allowed:#}");
    assert_eq!(
        allowed["position"]["committed"],
        serde_json::json!([{"topic": "dlq", "partition": 0, "offset": 7, "recorded_beyond": 0}]),
        "{allowed:#}"
    );
    assert_eq!(read_topic(&bootstrap, "other", 1, 2, LONG, SETTLE).len(), 2);
    assert_eq!(read_topic(&bootstrap, "in", 1, 5, LONG, SETTLE).len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_dead_letter_is_replayed_from_its_original_record_or_refused() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["in", "dlq"] {
        broker.create_topic(topic, 1);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = replay_config(dir.path(), &bootstrap, "cut", "in");
    // The originals, sharing a record batch: the replay fetches each one
    // from inside it.
    let big = "x".repeat(3000);
    let binary_header: &[u8] = &[0x80, 0x00];
    produce(
        &bootstrap,
        "in",
        [
            Send {
                partition: Some(0),
                key: Some(b"big-key"),
                value: big.as_bytes(),
                headers: &[
                    ("trace", b"t"),
                    ("bin", binary_header),
                    ("x-replay-count", b"1"),
                ],
            },
            Send {
                partition: Some(0),
                key: Some(b"small"),
                value: b"small",
                headers: &[],
            },
        ],
    )
    .await;
    // Cut letters as the daemon writes them when a message does not fit:
    // a value prefix and no headers. The first points at the big record;
    // the second at offset 1, where another message is; the third past
    // the partition's end.
    let cut = |offset: i64| {
        let mut letter = hand_envelope("in", 0, offset, "big-key", &big[..100]);
        let original = &mut letter["original_message"];
        original["value_truncated"] = true.into();
        original["original_value_size"] = 3000.into();
        original["headers_truncated"] = true.into();
        original["original_header_count"] = 3.into();
        letter
    };
    put_letters(&bootstrap, &[cut(0), cut(1), cut(2)]).await;

    let list = dlq_json("list", &config, &[]).await;
    let first = &list["dead_letters"][0];
    assert_eq!(first["message_complete"], false, "{list:#}");
    assert_eq!(
        first["truncation"]["value"],
        serde_json::json!({"truncated": true, "original_value_size": 3000})
    );
    assert_eq!(first["truncation"]["headers"]["original_header_count"], 3);

    let run = dlq_json("replay", &config, &[]).await;
    assert_eq!(
        outcomes(&run),
        ["replayed", "refused_original_gone", "refused_original_gone"],
        "{run:#}"
    );
    for (i, offset) in [(1, 1), (2, 2)] {
        let why = run["results"][i]["detail"].as_str().unwrap_or_default();
        assert!(
            why.contains(&format!(
                "original record in/0@{offset} is no longer in the topic"
            )) && why.contains("the dead letter holds only its first 100 of 3000 value bytes"),
            "{why}"
        );
    }
    // A letter whose original is gone can never be replayed: the position
    // moves past it.
    assert_eq!(
        run["position"]["committed"],
        serde_json::json!([{"topic": "dlq", "partition": 0, "offset": 3, "recorded_beyond": 0}])
    );
    let input = read_topic(&bootstrap, "in", 1, 3, LONG, SETTLE);
    assert_eq!(input.len(), 3, "only the found original was replayed");
    let replayed = &input[2];
    assert_eq!(replayed.text(), big, "the whole value, not the prefix");
    assert_eq!(replayed.key.as_deref(), Some(&b"big-key"[..]));
    assert_eq!(replayed.header("trace").as_deref(), Some("t"));
    assert!(
        replayed
            .headers
            .contains(&("bin".to_owned(), binary_header.to_vec())),
        "the original's headers, byte for byte: {replayed:?}"
    );
    assert_eq!(
        replayed.header("x-original-dlq-offset").as_deref(),
        Some("0")
    );
    // The letter lost its headers; the replay count is the original's.
    assert_eq!(run["results"][0]["previous_replay_count"], 1, "{run:#}");
    assert_eq!(replayed.header("x-replay-count").as_deref(), Some("2"));
}
