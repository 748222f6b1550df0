//! What the test broker answers to a fetch that starts inside a record
//! batch, pinned for each storage engine the suite uses.
//!
//! Kafka answers such a fetch with the batch that holds the offset, and the
//! client skips the records before it. Tansu 0.6.0 with `memory://` storage
//! answers with the next batch instead, silently skipping the rest of the
//! batch asked for; with `sqlite://` it answers as Kafka does. That is why the
//! suite's producers put every input record in a batch of its own (every
//! offset is then a batch boundary, see `sluice_tests::kafka::produce`), and
//! why the tests that resume mid-stream after a restart use SQLite storage.
//! If a new broker version changes either answer, this test fails and the
//! arrangement should be looked at again.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseRecord, Producer as _, ThreadedProducer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use sluice_tests::broker::Broker;

/// Records in each of the two batches.
const BATCH: i64 = 100;
/// An offset inside the first batch.
const INSIDE: i64 = 37;
const WAIT: Duration = Duration::from_secs(20);

/// Produces two batches of `BATCH` records each: a long linger holds the
/// records of one flush together, and the flush sends them as one batch.
fn produce_two_batches(bootstrap: &str, topic: &str) {
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "10000")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for batch in 0..2 {
        for i in 0..BATCH {
            let value = format!("{batch}-{i}");
            producer
                .send(
                    BaseRecord::<(), str>::to(topic)
                        .partition(0)
                        .payload(&value),
                )
                .expect("queued");
        }
        producer.flush(WAIT).expect("the batch is acknowledged");
    }
}

/// The offsets a consumer assigned at `from` receives, until it has
/// `want` of them or `WAIT` passes.
fn offsets_from(bootstrap: &str, topic: &str, from: i64, want: usize) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "fidelity")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(from))
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + WAIT;
    let mut offsets = Vec::new();
    while offsets.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            offsets.push(m.offset());
        }
    }
    offsets
}

/// The first offset a fetch from inside the first batch receives, after
/// checking that a read from the start sees every record.
fn first_offset_inside_a_batch(broker: &Broker) -> Option<i64> {
    let bootstrap = broker.bootstrap();
    broker.create_topic("batches", 1);
    produce_two_batches(&bootstrap, "batches");
    let all = offsets_from(&bootstrap, "batches", 0, 2 * BATCH as usize);
    assert_eq!(
        all,
        (0..2 * BATCH).collect::<Vec<_>>(),
        "a read from the start sees every record"
    );
    offsets_from(&bootstrap, "batches", INSIDE, 1)
        .first()
        .copied()
}

#[test]
fn memory_storage_answers_a_fetch_inside_a_batch_with_the_next_batch() {
    let first = first_offset_inside_a_batch(&Broker::start());
    assert_eq!(
        first,
        Some(BATCH),
        "memory:// storage skipped from {INSIDE} to the next batch, at {BATCH}, when this \
         test was written; it now answers {first:?}"
    );
}

#[test]
fn sqlite_storage_answers_a_fetch_inside_a_batch_as_kafka_does() {
    let first = first_offset_inside_a_batch(&Broker::start_persistent());
    assert_eq!(first, Some(INSIDE));
}
