//! Producing test traffic and reading back what Sluice wrote.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

/// A record read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The value as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.value.as_deref().unwrap_or_default()).into_owned()
    }

    /// The key as text (lossy).
    pub fn key_text(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).into_owned()
    }

    /// The last header with that name, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// One record to produce.
pub struct Send<'a> {
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// Produces records (idempotent, acks=all) in multi-record batches, as
/// producers in the field send them, and waits for every acknowledgement.
/// A daemon that resumes from a committed offset then fetches from inside a
/// batch (`tests/tests/broker_fidelity.rs` pins that the broker answers as
/// Kafka does).
pub async fn produce<'a>(
    bootstrap: &str,
    topic: &str,
    records: impl IntoIterator<Item = Send<'a>>,
) {
    produce_via(client(bootstrap), topic, records).await;
}

/// Like [`produce`], through a client with `config`'s settings (a secure
/// broker's, for example).
pub async fn produce_via<'a>(
    mut config: ClientConfig,
    topic: &str,
    records: impl IntoIterator<Item = Send<'a>>,
) {
    config
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    let producer: FutureProducer = config.create().expect("test producer");
    let mut pending = Vec::new();
    for r in records {
        let mut headers = OwnedHeaders::new();
        for (k, v) in r.headers {
            headers = headers.insert(KafkaHeader {
                key: k,
                value: Some(*v),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(r.value)
            .headers(headers);
        if let Some(key) = r.key {
            record = record.key(key);
        }
        if let Some(p) = r.partition {
            record = record.partition(p);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((_, back)) => {
                    record = back;
                    // The local queue is full: wait for the oldest delivery.
                    if let Some(first) = pending.first_mut() {
                        let _ = first.await;
                        pending.remove(0);
                    }
                }
            }
        }
    }
    for delivery in pending {
        match delivery.await {
            Ok(Ok(_)) => {}
            other => panic!("test record not acknowledged: {other:?}"),
        }
    }
}

/// Produces `count` small text records spread over `partitions` partitions:
/// key `k{p}`, value `{prefix}-{p}-{seq}` with seq counting per partition.
pub async fn produce_sequence(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    count: usize,
    prefix: &str,
) {
    produce_sequence_part(bootstrap, topic, partitions, 0..count, prefix).await;
}

/// The messages `range` of what [`produce_sequence`] would produce for a
/// count past the range's end: a sequence produced in parts.
pub async fn produce_sequence_part(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    range: std::ops::Range<usize>,
    prefix: &str,
) {
    let items: Vec<(i32, Vec<u8>, Vec<u8>)> = range
        .map(|i| {
            let p = (i % partitions as usize) as i32;
            let seq = i / partitions as usize;
            (
                p,
                format!("k{p}").into_bytes(),
                format!("{prefix}-{p}-{seq}").into_bytes(),
            )
        })
        .collect();
    produce(
        bootstrap,
        topic,
        items.iter().map(|(p, k, v)| Send {
            partition: Some(*p),
            key: Some(k),
            value: v,
            headers: &[],
        }),
    )
    .await;
}

/// A client's settings for the plaintext broker at `bootstrap`.
pub fn client(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

fn reader(mut config: ClientConfig) -> BaseConsumer {
    config
        .set("group.id", "sluice-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("test reader")
}

/// A reader assigned to every partition of `topic` from its beginning.
fn reader_from_start(config: ClientConfig, topic: &str, partitions: i32) -> BaseConsumer {
    let consumer = reader(config);
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .expect("assignable partition");
    }
    consumer.assign(&list).expect("assign");
    consumer
}

/// Reads a topic from the beginning (without joining a group) until `at_least`
/// records arrived or `timeout` passed; then keeps reading for `settle` to
/// catch any extra (duplicate or unexpected) records.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    at_least: usize,
    timeout: Duration,
    settle: Duration,
) -> Vec<Record> {
    let consumer = reader_from_start(client(bootstrap), topic, partitions);
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut settle_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if out.len() >= at_least && settle_until.is_none() {
            settle_until = Some(now + settle);
        }
        match settle_until {
            Some(until) if now >= until => break,
            None if now >= deadline => break,
            _ => {}
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(to_record(&m));
        }
    }
    out
}

/// Reads a topic from the beginning until `done` holds for everything read
/// so far, or `timeout` passes; returns what was read either way.
pub fn read_until(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let consumer = reader_from_start(client(bootstrap), topic, partitions);
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while !done(&out) && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(to_record(&m));
        }
    }
    out
}

fn to_record(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    Record {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers: m
            .headers()
            .map(|hs| {
                sluice::kafka::headers::read(hs)
                    .into_iter()
                    .map(|h| (h.key_text().0, h.value.unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Counts the records of a topic from the beginning, reading until `timeout`
/// has passed with no new record (or `at_least` were counted and the topic
/// went quiet). Counting by consuming works on any broker, whatever its
/// offsets look like.
pub struct Counter {
    consumer: BaseConsumer,
    /// Records counted so far.
    pub count: usize,
}

impl Counter {
    /// Starts counting `topic` from the beginning of every partition.
    pub fn new(bootstrap: &str, topic: &str, partitions: i32) -> Counter {
        Self::via(client(bootstrap), topic, partitions)
    }

    /// Like [`Counter::new`], through a client with `config`'s settings.
    pub fn via(config: ClientConfig, topic: &str, partitions: i32) -> Counter {
        Counter {
            consumer: reader_from_start(config, topic, partitions),
            count: 0,
        }
    }

    /// Counts what arrives within `wait`; returns when the first and the
    /// last of those records arrived, if any did.
    pub fn poll(&mut self, wait: Duration) -> Option<(Instant, Instant)> {
        let mut seen: Option<(Instant, Instant)> = None;
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.consumer.poll(left) {
                Some(Ok(_)) => {
                    self.count += 1;
                    let now = Instant::now();
                    seen = Some((seen.map_or(now, |(first, _)| first), now));
                }
                Some(Err(_)) => {}
                None => break,
            }
        }
        seen
    }
}

/// Waits until the group's committed offsets equal `expected` for every
/// partition, or `timeout` passes; returns the last committed offsets seen.
pub fn wait_committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    expected: &[i64],
    timeout: Duration,
) -> Vec<Option<i64>> {
    let deadline = Instant::now() + timeout;
    let partitions = expected.len() as i32;
    loop {
        let committed = sluice::pipeline::committed_offsets(
            bootstrap,
            group,
            topic,
            partitions,
            Duration::from_secs(5),
        )
        .unwrap_or_else(|_| vec![None; expected.len()]);
        let done = committed
            .iter()
            .zip(expected)
            .all(|(c, e)| *c == Some(*e) || (*e == 0 && c.is_none()));
        if done || Instant::now() >= deadline {
            return committed;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Counts how often each value occurs.
pub fn tally<'a>(values: impl IntoIterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut counts = HashMap::new();
    for v in values {
        *counts.entry(v).or_insert(0) += 1;
    }
    counts
}

/// Produces text values spread round-robin over `partitions` partitions,
/// without keys.
pub async fn produce_values(bootstrap: &str, topic: &str, partitions: i32, values: &[String]) {
    produce(
        bootstrap,
        topic,
        values.iter().enumerate().map(|(i, v)| Send {
            partition: Some(i as i32 % partitions),
            key: None,
            value: v.as_bytes(),
            headers: &[],
        }),
    )
    .await;
}

/// The original values of dead-letter records (their JSON envelopes'
/// `original_message.value`).
pub fn dead_letter_values(records: &[Record]) -> std::collections::BTreeSet<String> {
    records
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(r.value.as_deref()?).ok())
        .filter_map(|e| e["original_message"]["value"].as_str().map(str::to_owned))
        .collect()
}

/// Asserts that `topic` (one partition) stays empty for a second.
pub fn assert_empty(bootstrap: &str, topic: &str, why: &str) {
    let records = read_topic(
        bootstrap,
        topic,
        1,
        0,
        Duration::ZERO,
        Duration::from_secs(1),
    );
    assert!(records.is_empty(), "{why}: {records:?}");
}

/// The librdkafka properties `SLUICE_BENCH_LIBRDKAFKA` gives the throughput
/// bench's contenders: `key=value` pairs separated by `;`.
pub fn bench_properties() -> Vec<(String, String)> {
    std::env::var("SLUICE_BENCH_LIBRDKAFKA")
        .unwrap_or_default()
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// Produces one record to `partition` whose headers
/// are raw bytes, as a client other than rdkafka may write them: keys that
/// are not UTF-8 included, which rdkafka's own header type cannot express.
/// Returns the record's offset.
pub async fn produce_raw_headers(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    value: &[u8],
    headers: &[(&[u8], &[u8])],
) -> i64 {
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (key, value) in headers {
        sluice::kafka::headers::add(&mut owned, key, Some(value));
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        .create()
        .expect("test producer");
    let record = FutureRecord::<[u8], [u8]>::to(topic)
        .partition(partition)
        .payload(value)
        .headers(owned);
    match producer.send(record, Duration::from_secs(30)).await {
        Ok(delivery) => delivery.offset,
        Err((e, _)) => panic!("test record not acknowledged: {e}"),
    }
}
