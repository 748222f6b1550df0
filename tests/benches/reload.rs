//! Hot reload latency: from the rename of a new module version into the
//! plugins directory to the first message handled by it, with messages
//! flowing, for a small component and for one of about 2 MB.
//!
//! Starts Nisshi, runs Sluice in this process on the tagged test handler, and
//! keeps a message flowing every few milliseconds while it renames new
//! versions into place. Prints every swap's latency and the median.
//!
//! ```sh
//! cargo bench -p sluice-tests --bench reload
//! ```
//!
//! `SLUICE_BENCH_SWAPS` sets the swaps per size (default 10).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use sluice_tests::artifacts;
use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text_in, parse};

const TAG: &[u8] = b"sluice-tag-00000";
/// The gap between two messages of the stream.
const EVERY: Duration = Duration::from_millis(5);

/// Version `n` of the tagged handler, padded with a custom section to
/// `pad` extra bytes (as debug information pads a release build).
fn version(n: u32, pad: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(artifacts::TAGGED).expect("the tagged guest");
    let at = bytes
        .windows(TAG.len())
        .position(|w| w == TAG)
        .expect("the tag is in the component");
    bytes[at..at + TAG.len()].copy_from_slice(format!("sluice-tag-{n:05}").as_bytes());
    if pad > 0 {
        let name = b"padding";
        let mut section = Vec::new();
        leb128(&mut section, name.len() as u64);
        section.extend_from_slice(name);
        section.resize(section.len() + pad, 0);
        bytes.push(0); // custom section id
        leb128(&mut bytes, section.len() as u64);
        bytes.extend_from_slice(&section);
    }
    bytes
}

fn leb128(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn deploy(dir: &Path, bytes: &[u8]) {
    let tmp = dir.join(".handler.wasm.partial");
    std::fs::write(&tmp, bytes).expect("write the new version");
    std::fs::rename(&tmp, dir.join("handler.wasm")).expect("rename it into place");
}

/// Reads the output topic on a thread, noting when each version's first
/// output arrived.
fn watch_outputs(bootstrap: &str, stop: Arc<AtomicBool>) -> Arc<Mutex<HashMap<u32, Instant>>> {
    let first = Arc::new(Mutex::new(HashMap::new()));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reload-bench-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("reader");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset("out", 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&list).expect("assign");
    let seen = first.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) else {
                continue;
            };
            let now = Instant::now();
            let tag = m
                .payload()
                .and_then(|v| v.get(11..16))
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse::<u32>().ok());
            if let Some(n) = tag {
                seen.lock().expect("lock").entry(n).or_insert(now);
            }
        }
    });
    first
}

async fn measure(label: &str, pad: usize, swaps: u32) -> Vec<Duration> {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    broker.create_topic("in", 1);
    broker.create_topic("out", 1);
    let plugins = tempfile::tempdir().expect("plugins dir");
    deploy(plugins.path(), &version(0, pad));
    let routes = "[[routes]]\ntopic = \"in\"\nmodule = \"handler\"\noutput_topics = [\"out\"]\n\
                  [routes.config]\noutput_topic = \"out\"\n";
    let daemon = Daemon::start(parse(&config_text_in(
        plugins.path(),
        &bootstrap,
        "reload-bench",
        "",
        routes,
    )));
    let stop = Arc::new(AtomicBool::new(false));
    let first = watch_outputs(&bootstrap, stop.clone());
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let stream = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let value = format!("m{i}");
                let _ = producer
                    .send(
                        FutureRecord::<(), _>::to("in").payload(&value),
                        Duration::from_secs(5),
                    )
                    .await;
                i += 1;
                tokio::time::sleep(EVERY).await;
            }
        }
    });
    // Version 0 serving and flowing.
    while !first.lock().expect("lock").contains_key(&0) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let size = version(1, pad).len();
    let mut latencies = Vec::new();
    for n in 1..=swaps {
        let bytes = version(n, pad);
        let renamed = Instant::now();
        deploy(plugins.path(), &bytes);
        let arrived = loop {
            if let Some(at) = first.lock().expect("lock").get(&n).copied() {
                break at;
            }
            assert!(
                renamed.elapsed() < Duration::from_secs(60),
                "version {n} never handled a message"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let latency = arrived.duration_since(renamed);
        println!(
            "{label}: {size} bytes, swap {n}: {:.0} ms",
            latency.as_secs_f64() * 1000.0
        );
        latencies.push(latency);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = stream.await;
    daemon.stop().await;
    latencies
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let swaps: u32 = std::env::var("SLUICE_BENCH_SWAPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let small = measure("small component", 0, swaps).await;
    let large = measure("2 MB component", 2 << 20, swaps).await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "rename to first message handled by the new version, median of {swaps}: small {:.0} ms \
         (max {:.0}), 2 MB {:.0} ms (max {:.0}); goal < 500 ms",
        ms(median(small.clone())),
        ms(small.iter().copied().max().unwrap_or_default()),
        ms(median(large.clone())),
        ms(large.iter().copied().max().unwrap_or_default()),
    );
}
