//! What the test broker can take: produce and fetch rates of Nisshi with
//! each storage engine the suite uses, beside Tansu 0.6.0 (the broker the
//! suite ran on before) when it is installed too, in one run, for input in
//! librdkafka's batches (`linger.ms` 5, as the tests produce it).
//!
//! Each run starts a broker, produces `SLUICE_BENCH_MESSAGES` (default
//! 20,000) small keyed records over 4 partitions with an idempotent
//! producer waiting for every acknowledgement (as the tests' producers do),
//! then reads the topic from its start with one consumer until every record
//! arrived, counting records rather than trusting the broker's offsets.
//!
//! ```sh
//! cargo bench -p sluice-tests --bench broker
//! cargo install tansu --locked --version 0.6.0 --features libsql,dynostore  # to compare
//! ```

use std::time::{Duration, Instant};

use sluice_tests::broker::{Broker, Program, Storage};
use sluice_tests::kafka::{Counter, Send, produce};

const PARTITIONS: i32 = 4;

/// Produces `messages` records and reads them back; returns both rates in
/// messages per second.
async fn rates(broker: &Broker, messages: usize) -> (f64, f64) {
    let bootstrap = broker.bootstrap();
    broker.create_topic("rate", PARTITIONS);
    let records: Vec<(i32, String, String)> = (0..messages)
        .map(|i| {
            let p = (i % PARTITIONS as usize) as i32;
            (p, format!("k{p}-{}", i % 8), format!("pass\0m-{p}-{i}"))
        })
        .collect();
    let started = Instant::now();
    produce(
        &bootstrap,
        "rate",
        records.iter().map(|(p, key, value)| Send {
            partition: Some(*p),
            key: Some(key.as_bytes()),
            value: value.as_bytes(),
            headers: &[],
        }),
    )
    .await;
    let produced = started.elapsed();

    let started = Instant::now();
    let mut counter = Counter::new(&bootstrap, "rate", PARTITIONS);
    let deadline = started + Duration::from_secs(600);
    while counter.count < messages {
        assert!(
            Instant::now() < deadline,
            "read {} of {messages} records back within 10 minutes",
            counter.count
        );
        counter.poll(Duration::from_millis(200));
    }
    let fetched = started.elapsed();
    assert_eq!(counter.count, messages, "every record is read back once");
    let rate = |d: Duration| messages as f64 / d.as_secs_f64();
    (rate(produced), rate(fetched))
}

fn main() {
    let messages: usize = std::env::var("SLUICE_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let installed = |program: &str| {
        std::process::Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    };
    let mut programs = vec![(Program::Nisshi, sluice_tests::broker::VERSION)];
    if installed("tansu") {
        programs.push((Program::Tansu, "0.6.0"));
    } else {
        println!("tansu is not installed: Nisshi alone");
    }
    println!("{messages} records of about 30 bytes over {PARTITIONS} partitions, linger.ms 5");
    println!("| broker | storage | produce (msg/s) | fetch from start (msg/s) |");
    println!("|---|---|---|---|");
    for (program, version) in programs {
        for storage in [Storage::Sqlite, Storage::Memory] {
            let broker = Broker::start_program(program, storage);
            let (produce, fetch) = runtime.block_on(rates(&broker, messages));
            println!("| {program:?} {version} | {storage:?} | {produce:.0} | {fetch:.0} |");
        }
    }
}
