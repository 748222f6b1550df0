//! End to end, one command: the event bus's Python consumer, a bare Rust
//! rdkafka loop and `sluice` with the `uppercase` example, one after another
//! on the same data and the same Tansu broker, each as a process of its own.
//! All three upper-case 100-byte (then 1 KiB) values at least once: an
//! offset is stored only after its output is acknowledged.
//!
//! ```sh
//! SLUICE_PYTHON_PEER=path/to/python_consumer.py cargo bench -p sluice-tests --bench throughput
//! ```
//!
//! For each it prints messages per second (from its start, group join
//! included, to its last output appearing on its output topic) and CPU time
//! (user + system of its process) per message, then the ratios the goals are
//! stated in. `SLUICE_PYTHON_PEER` names the Python consumer script
//! (arguments: bootstrap, input topic, output topic, count); without it the
//! Python run is skipped. The script needs `confluent-kafka`, which is
//! installed with pip when missing. `SLUICE_BENCH_MESSAGES` sets the
//! messages per run (default 100000).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::broker::Broker;
use sluice_tests::daemon::config_text;
use sluice_tests::kafka::{Counter, Send, produce_with};

const PARTITIONS: i32 = 3;

/// CPU time (user + system) of every child process waited for so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass; RUSAGE_CHILDREN is
    // a valid `who`.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Waits until `topic` holds `count` records; returns when the last arrived.
fn watch(bootstrap: &str, topic: &str, count: usize, deadline: Instant) -> Option<Instant> {
    let mut counter = Counter::new(bootstrap, topic, PARTITIONS);
    let mut last = None;
    while counter.count < count {
        if Instant::now() > deadline {
            eprintln!("  {topic}: only {} of {count} records", counter.count);
            return None;
        }
        if let Some((_, at)) = counter.poll(Duration::from_millis(100)) {
            last = Some(at);
        }
    }
    last
}

/// One contender's figures.
struct Run {
    name: &'static str,
    per_second: f64,
    cpu_per_message: Duration,
}

/// Starts `command`, waits for `count` outputs on `output`, stops it
/// (SIGTERM, unless it exits by itself) and measures it.
fn measure(
    name: &'static str,
    mut command: Command,
    bootstrap: &str,
    output: &str,
    count: usize,
    exits_by_itself: bool,
) -> Option<Run> {
    let cpu_before = children_cpu();
    let started = Instant::now();
    let mut child: Child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let last = watch(bootstrap, output, count, started + Duration::from_secs(600));
    if !exits_by_itself || last.is_none() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let _ = child.wait();
    let cpu = children_cpu() - cpu_before;
    let last = last?;
    let run = Run {
        name,
        per_second: count as f64 / last.duration_since(started).as_secs_f64(),
        cpu_per_message: cpu / u32::try_from(count).unwrap_or(u32::MAX),
    };
    eprintln!(
        "  {name}: {:.0} msg/s, {:.2} us CPU per message",
        run.per_second,
        run.cpu_per_message.as_secs_f64() * 1e6
    );
    Some(run)
}

/// The Python consumer's command, if its script is named and its library
/// can be imported (installed with pip when missing).
fn python_peer() -> Option<(String, String)> {
    let Some(script) = std::env::var("SLUICE_PYTHON_PEER").ok() else {
        eprintln!("SLUICE_PYTHON_PEER is not set: the Python consumer is skipped");
        return None;
    };
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let importable = |python: &str| {
        Command::new(python)
            .args(["-c", "import confluent_kafka"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !importable(&python) {
        eprintln!("installing confluent-kafka for the Python consumer");
        let _ = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "confluent-kafka"])
            .status();
    }
    if !importable(&python) {
        eprintln!("{python} cannot import confluent_kafka: the Python consumer is skipped");
        return None;
    }
    Some((python, script))
}

fn run(broker: &Broker, size: usize, count: usize, peer: Option<&(String, String)>) -> Vec<Run> {
    let bootstrap = broker.bootstrap();
    let tag = format!("{size}b");
    let input = format!("in-{tag}");
    let outputs = ["python", "bare", "sluice"].map(|who| format!("out-{who}-{tag}"));
    broker.create_topic(&input, PARTITIONS);
    for topic in &outputs {
        broker.create_topic(topic, PARTITIONS);
    }
    let value: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let keys: Vec<Vec<u8>> = (0..64).map(|i| format!("key-{i}").into_bytes()).collect();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(produce_with(
        &bootstrap,
        &input,
        (0..count).map(|i| Send {
            partition: None,
            key: Some(&keys[i % keys.len()]),
            value: &value,
            headers: &[],
        }),
        true,
    ));
    eprintln!("{count} messages of {size} B produced to {input}");

    let mut runs = Vec::new();
    if let Some((python, script)) = peer {
        let mut command = Command::new(python);
        command.args([script, &bootstrap, &input, &outputs[0], &count.to_string()]);
        runs.extend(measure(
            "python",
            command,
            &bootstrap,
            &outputs[0],
            count,
            true,
        ));
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-bare-loop"));
    command.args([&bootstrap, &input, &outputs[1]]);
    runs.extend(measure(
        "bare loop",
        command,
        &bootstrap,
        &outputs[1],
        count,
        false,
    ));

    // A partition queue as large as the input: the input shares record
    // batches, and Tansu serves fetches only from batch boundaries, so a
    // partition must never be paused and resumed mid-batch.
    let routes = format!(
        "[[routes]]\ntopic = \"{input}\"\nmodule = \"uppercase\"\noutput_topics = [\"{out}\"]\n\
         [routes.config]\noutput_topic = \"{out}\"\n",
        out = outputs[2]
    );
    let text = config_text(&bootstrap, &format!("sluice-{tag}"), "", &routes).replace(
        "[processing]\n",
        &format!("[processing]\npartition_queue = {}\n", count.min(100_000)),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, text).expect("config file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-test-daemon"));
    command
        .args(["run", "--config"])
        .arg(Path::new(&config))
        .env("RUST_LOG", "warn");
    runs.extend(measure(
        "sluice",
        command,
        &bootstrap,
        &outputs[2],
        count,
        false,
    ));
    runs
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
    let peer = python_peer();
    let broker = Broker::start();
    println!(
        "end to end, {count} messages, {PARTITIONS} partitions, Tansu (memory storage), at least once"
    );
    for size in [100, 1024] {
        let runs = run(&broker, size, count, peer.as_ref());
        println!("\n{size} B values");
        println!("{:>10} {:>12} {:>16}", "", "msg/s", "CPU us/message");
        for r in &runs {
            println!(
                "{:>10} {:>12.0} {:>16.2}",
                r.name,
                r.per_second,
                r.cpu_per_message.as_secs_f64() * 1e6
            );
        }
        let find = |name: &str| runs.iter().find(|r| r.name == name);
        if let (Some(sluice), Some(python)) = (find("sluice"), find("python")) {
            println!(
                "sluice CPU per message / python's: {:.2} (goal <= 0.5 at 100 B)",
                sluice.cpu_per_message.as_secs_f64() / python.cpu_per_message.as_secs_f64()
            );
        }
        if let (Some(sluice), Some(bare)) = (find("sluice"), find("bare loop")) {
            println!(
                "sluice msg/s / bare loop's: {:.2} (goal >= 0.9)",
                sluice.per_second / bare.per_second
            );
        }
    }
}
