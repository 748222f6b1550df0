//! The baseline Sluice is measured against: a bare rdkafka
//! consume-transform-produce loop upper-casing each value natively, with the
//! same delivery guarantee (an offset is stored only after its output is
//! acknowledged; stored offsets are committed on librdkafka's timer).
//!
//! `sluice-bare-loop BOOTSTRAP INPUT OUTPUT [--correlation-id]` runs until
//! SIGTERM or SIGINT. With `--correlation-id` every output carries a
//! `correlation_id` header with a fresh UUID, as sluice's outputs do for
//! inputs without one, so that the two produce the same records.
//! `SLUICE_BENCH_LIBRDKAFKA` adds librdkafka properties to both clients.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (bootstrap, input, output, correlation) = match args.as_slice() {
        [b, i, o] => (b, i, o, false),
        [b, i, o, flag] if flag == "--correlation-id" => (b, i, o, true),
        _ => {
            eprintln!("usage: sluice-bare-loop BOOTSTRAP INPUT OUTPUT [--correlation-id]");
            std::process::exit(2);
        }
    };
    let extra = sluice_tests::kafka::bench_properties();
    let consumer: Arc<StreamConsumer> = Arc::new(
        tuned(
            &extra,
            ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                // One group per output topic, so that every run reads the input
                // from its start.
                .set("group.id", format!("bare-{output}"))
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.offset.store", "false"),
        )
        .create()
        .expect("bare consumer"),
    );
    let producer: FutureProducer = tuned(
        &extra,
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5"),
    )
    .create()
    .expect("bare producer");
    consumer.subscribe(&[input]).expect("subscribe");
    // Acknowledgements are awaited in consumption order; each offset is
    // stored once its output is acknowledged.
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel::<(i32, i64, DeliveryFuture)>(100_000);
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
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    loop {
        let message = tokio::select! {
            m = consumer.recv() => m,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Ok(m) = message else { continue };
        let value = m.payload().map(<[u8]>::to_ascii_uppercase);
        let mut record = FutureRecord::<[u8], Vec<u8>>::to(output);
        if correlation {
            let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
                .into_uuid()
                .to_string();
            record = record.headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                key: "correlation_id",
                value: Some(&id),
            }));
        }
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

/// `config` with the extra librdkafka properties the throughput bench gives
/// both clients, as it gives sluice's `[kafka.librdkafka]`.
fn tuned<'a>(extra: &[(String, String)], config: &'a mut ClientConfig) -> &'a mut ClientConfig {
    for (key, value) in extra {
        config.set(key, value);
    }
    config
}
