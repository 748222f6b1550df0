//! End-to-end throughput: `sluice` with the `uppercase` example against a
//! bare rdkafka consume-transform-produce loop doing the same upper-casing
//! natively, with the same delivery guarantee (offsets stored only after the
//! outputs are acknowledged), on the same Tansu broker, in the same run.
//!
//! Run with `cargo bench -p sluice-tests --bench throughput` (Tansu must be
//! installed; `scripts/test` installs it). `SLUICE_BENCH_MESSAGES` sets the
//! messages per run (default 100000). Both contenders are timed the same way:
//! from their start (group join included) to the last output record appearing
//! on the output topic. The input is produced one record per batch, so that
//! a partition paused and resumed mid-stream can be fetched again from any
//! offset (Tansu 0.6 serves fetches only from batch boundaries).

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _};
use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text, parse};
use sluice_tests::kafka::{Counter, Send, produce_with};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 3;

/// Waits until `topic` holds `count` records; returns the time the first
/// record appeared and the time the last one did.
fn watch(bootstrap: &str, topic: &str, count: usize) -> (Instant, Instant) {
    let mut counter = Counter::new(bootstrap, topic, PARTITIONS);
    let mut span: Option<(Instant, Instant)> = None;
    while counter.count < count {
        let before = counter.count;
        if let Some((first, last)) = counter.poll(Duration::from_millis(100)) {
            if before / 10_000 != counter.count / 10_000 {
                eprintln!("  {topic}: {} records", counter.count);
            }
            span = Some((span.map_or(first, |(f, _)| f), last));
        }
    }
    span.unwrap_or_else(|| (Instant::now(), Instant::now()))
}

/// [`watch`] on a blocking thread.
async fn watch_async(bootstrap: &str, topic: &str, count: usize) -> (Instant, Instant) {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || watch(&bootstrap, &topic, count))
        .await
        .expect("watcher")
}

/// The baseline: consume, upper-case, produce, store the offset after the
/// output's acknowledgement, commit on librdkafka's timer.
async fn bare_loop(bootstrap: String, input: String, output: String, stop: CancellationToken) {
    let consumer: std::sync::Arc<StreamConsumer> = std::sync::Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", format!("bare-{input}"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.offset.store", "false")
            .create()
            .expect("bare consumer"),
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("bare producer");
    consumer.subscribe(&[&input]).expect("subscribe");
    // Acknowledgements are awaited in consumption order; each offset is
    // stored once its output is acknowledged.
    let (ack_tx, mut ack_rx) =
        tokio::sync::mpsc::channel::<(i32, i64, rdkafka::producer::DeliveryFuture)>(100_000);
    let acks = tokio::spawn({
        let consumer = consumer.clone();
        let input = input.clone();
        async move {
            while let Some((partition, offset, delivery)) = ack_rx.recv().await {
                if matches!(delivery.await, Ok(Ok(_))) {
                    let _ = consumer.store_offset(&input, partition, offset);
                }
            }
        }
    });
    loop {
        let message = tokio::select! {
            m = consumer.recv() => m,
            () = stop.cancelled() => break,
        };
        let Ok(m) = message else { continue };
        let value = m.payload().map(<[u8]>::to_ascii_uppercase);
        let mut record = FutureRecord::<[u8], Vec<u8>>::to(&output);
        if let Some(key) = m.key() {
            record = record.key(key);
        }
        if let Some(value) = &value {
            record = record.payload(value);
        }
        let delivery = loop {
            match producer.send_result(record) {
                Ok(d) => break d,
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        let (partition, offset) = (m.partition(), m.offset());
        drop(m);
        let _ = ack_tx.send((partition, offset, delivery)).await;
    }
    drop(ack_tx);
    let _ = acks.await;
}

async fn run(broker: &Broker, size: usize, count: usize) -> (f64, f64) {
    let bootstrap = broker.bootstrap();
    let tag = format!("{size}b");
    let input = format!("bench-in-{tag}");
    for t in [
        &input,
        &format!("bench-bare-{tag}"),
        &format!("bench-sluice-{tag}"),
    ] {
        broker.create_topic(t, PARTITIONS);
    }
    let value: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let keys: Vec<Vec<u8>> = (0..64).map(|i| format!("key-{i}").into_bytes()).collect();
    produce_with(
        &bootstrap,
        &input,
        (0..count).map(|i| Send {
            partition: None,
            key: Some(&keys[i % keys.len()]),
            value: &value,
            headers: &[],
        }),
        false,
    )
    .await;

    eprintln!("{count} messages of {size} B produced to {input}");
    // Bare loop.
    let out = format!("bench-bare-{tag}");
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(bare_loop(
        bootstrap.clone(),
        input.clone(),
        out.clone(),
        stop.clone(),
    ));
    let (_, last) = watch_async(&bootstrap, &out, count).await;
    stop.cancel();
    let _ = task.await;
    let bare = count as f64 / last.duration_since(started).as_secs_f64();
    eprintln!("bare loop: {bare:.0} msg/s");

    // Sluice.
    let out = format!("bench-sluice-{tag}");
    let routes = format!(
        "[[routes]]\ntopic = \"{input}\"\nmodule = \"uppercase\"\noutput_topics = [\"{out}\"]\n[routes.config]\noutput_topic = \"{out}\"\n"
    );
    let started = Instant::now();
    let mut text = config_text(&bootstrap, &format!("sluice-{tag}"), "", &routes);
    if let Ok(queue) = std::env::var("SLUICE_BENCH_PARTITION_QUEUE") {
        text = text.replace(
            "[processing]\n",
            &format!("[processing]\npartition_queue = {queue}\n"),
        );
    }
    let daemon = Daemon::start(parse(&text));
    let (_, last) = watch_async(&bootstrap, &out, count).await;
    daemon.stop().await;
    let sluice = count as f64 / last.duration_since(started).as_secs_f64();
    (bare, sluice)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` asks for a listing: there is nothing to list.
        return;
    }
    let count: usize = std::env::var("SLUICE_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let broker = Broker::start();
    println!(
        "end-to-end throughput, {count} messages, {PARTITIONS} partitions, Tansu (memory storage)"
    );
    println!(
        "{:>8} {:>14} {:>14} {:>8}",
        "value", "bare msg/s", "sluice msg/s", "ratio"
    );
    for size in [100, 1024] {
        let (bare, sluice) = rt.block_on(run(&broker, size, count));
        println!(
            "{:>7}B {bare:>14.0} {sluice:>14.0} {:>8.2}",
            size,
            sluice / bare
        );
    }
}
