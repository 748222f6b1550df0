//! Every compression codec in, a codec out: inputs produced in batches of
//! 1,000 records with gzip, snappy, lz4 and zstd are all handled, and the
//! outputs, compressed with the configured `kafka.compression`, are read
//! back whole.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text, module_route, parse};
use sluice_tests::kafka::{read_topic, wait_committed};

const CODECS: [&str; 4] = ["gzip", "snappy", "lz4", "zstd"];
const PER_CODEC: usize = 1_000;
const LONG: Duration = Duration::from_secs(120);

/// Produces `PER_CODEC` records to partition `partition` of `topic`, all in
/// one batch compressed with `codec`.
async fn produce_compressed(bootstrap: &str, topic: &str, partition: i32, codec: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", codec)
        .set("linger.ms", "1000")
        .set("batch.num.messages", PER_CODEC.to_string())
        .set("batch.size", "10000000")
        .create()
        .expect("producer");
    let mut deliveries = Vec::new();
    for i in 0..PER_CODEC {
        let value = format!("{codec}-{i}");
        let record = FutureRecord::<(), str>::to(topic)
            .partition(partition)
            .payload(&value);
        deliveries.push(producer.send_result(record).expect("queued"));
    }
    for delivery in deliveries {
        assert!(
            matches!(delivery.await, Ok(Ok(_))),
            "a {codec} record is acknowledged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_in_every_codec_are_handled_and_zstd_outputs_read_back_whole() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let partitions = CODECS.len() as i32;
    broker.create_topic("packed", partitions);
    broker.create_topic("packed.out", partitions);
    for (p, codec) in CODECS.iter().enumerate() {
        produce_compressed(&bootstrap, "packed", p as i32, codec).await;
    }
    let text = config_text(
        &bootstrap,
        "codecs",
        "compression = \"zstd\"",
        &module_route("uppercase", "packed", "packed.out", ""),
    );
    let daemon = Daemon::start(parse(&text));
    let every = vec![PER_CODEC as i64; CODECS.len()];
    assert_eq!(
        wait_committed(&bootstrap, "test.codecs", "packed", &every, LONG),
        every.iter().map(|n| Some(*n)).collect::<Vec<_>>(),
        "every record of every codec is handled"
    );
    daemon.stop().await;
    let total = PER_CODEC * CODECS.len();
    let out = read_topic(
        &bootstrap,
        "packed.out",
        partitions,
        total,
        LONG,
        Duration::from_secs(1),
    );
    let mut values: Vec<String> = out.iter().map(|r| r.text()).collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), total, "every output, once");
    for codec in CODECS {
        assert!(
            values.contains(&format!("{}-999", codec.to_uppercase())),
            "the last {codec} record's output"
        );
    }
}
