//! End to end, one command: the event bus's Python consumer, a bare Rust
//! rdkafka loop (twice: as it is, and adding to each output the
//! `correlation_id` header that sluice's outputs carry, as `bare + id`) and
//! `sluice` with the `uppercase` example, one after another on the same data
//! and the same Nisshi broker, each as a process of its own.
//! All three upper-case 100-byte (then 1 KiB) values at least once: an
//! offset is stored only after its output is acknowledged. Then `sluice`
//! with the `json-router` example against `python_json_consumer.py` (next to
//! this file), which does the same with Python's `json` module.
//!
//! ```sh
//! SLUICE_PYTHON_PEER=path/to/python_consumer.py cargo bench -p sluice-tests --bench throughput
//! ```
//!
//! For each it prints messages per second (from its start, group join
//! included, to its last output appearing on its output topic), the same
//! once running (from its first output to its last), and CPU time
//! (user + system of its process, start-up included) per message, then the
//! ratios the goals are stated in. `SLUICE_PYTHON_PEER` names the event
//! bus's consumer script (arguments: bootstrap, input topic, output topic,
//! count); without it that run is skipped. The Python scripts need
//! `confluent-kafka`, which is installed with pip when missing.
//!
//! Settings, all optional: `SLUICE_BENCH_MESSAGES` the messages per run
//! (default 300000), `SLUICE_BENCH_SIZES` the value sizes (default
//! `100,1024`), `SLUICE_BENCH_JSON=0` skips the JSON comparison,
//! `SLUICE_BENCH_ONLY` the contenders to run (`python`, `bare`, `sluice`;
//! for example `sluice` while profiling), and `SLUICE_BENCH_PROCESSING` adds
//! lines to sluice's `[processing]` table, separated by `;` (for example
//! `batch_size = 16`), to measure a setting against its default.
//! `SLUICE_BENCH_LIBRDKAFKA` gives librdkafka properties, `key=value` pairs
//! separated by `;` (for example `linger.ms=20`), to both clients of the
//! bare loop and to sluice's `[kafka.librdkafka]`.
//! `SLUICE_BENCH_TLS=0` skips the TLS comparison: `sluice` over TLS beside
//! plaintext, on two brokers with the same storage, CPU per message and
//! rate side by side.
//! `SLUICE_BENCH_REPEAT` runs every contender that many times (default 1),
//! taking turns on the same input, each time with a fresh consumer group
//! and output topic, and reports the median of each figure: CPU per message
//! varies by about 15% between identical runs on a small VM.
//!
//! `SLUICE_BENCH_AGAINST` names another build of the daemon (for example
//! `target/release/sluice-test-daemon` copied from a build of `main`), run
//! as `against` with the same config, taking turns with `sluice`: a change
//! is measured against it in the same script, on the same data.
//! `SLUICE_BENCH_AGAINST_PLUGINS` gives `against` another directory of
//! modules (for example the examples built from `main`), to measure a change
//! to the SDK or the examples; it defaults to this build's modules, and
//! `SLUICE_BENCH_AGAINST` to this build's daemon when only the modules
//! differ.
//!
//! `sluice` takes its modules' machine code from the compile cache
//! (`plugins.cache_dir`, at its default), as a restarted daemon does; the
//! first run after a change of module or of Sluice compiles them (0.17 s of
//! CPU for `uppercase`, 0.39 s for `json-router` on a 2-core VM).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use sluice_tests::broker::{Broker, Storage};
use sluice_tests::daemon::{module_route, plugins_dir};
use sluice_tests::kafka::{Counter, Send, bench_properties, client, produce, produce_via};
use tempfile::TempDir;

const PARTITIONS: i32 = 3;

/// Messages per run: enough that start-up (a Python interpreter, compiling
/// a module) weighs little in the CPU per message.
const DEFAULT_MESSAGES: usize = 300_000;

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

/// Waits until `topic` holds `count` records; returns when the first and
/// the last arrived. Gives up at `deadline`, or once `child` has exited
/// without writing them all: with a failure, or at all unless it
/// `exits_by_itself` once done (a contender that failed to start, for
/// example, is reported at once).
fn watch(
    reader: ClientConfig,
    topic: &str,
    count: usize,
    deadline: Instant,
    child: &mut Child,
    exits_by_itself: bool,
) -> Option<(Instant, Instant)> {
    let mut counter = Counter::via(reader, topic, PARTITIONS);
    let mut seen: Option<(Instant, Instant)> = None;
    while counter.count < count {
        let failed = child
            .try_wait()
            .ok()
            .flatten()
            .filter(|status| !exits_by_itself || !status.success());
        if Instant::now() > deadline || failed.is_some() {
            let why = failed.map_or_else(|| "in time".to_owned(), |s| format!("({s})"));
            eprintln!("  {topic}: only {} of {count} records {why}", counter.count);
            return None;
        }
        if let Some((first, last)) = counter.poll(Duration::from_millis(100)) {
            seen = Some((seen.map_or(first, |(first, _)| first), last));
        }
    }
    seen
}

/// One contender's figures.
struct Run {
    name: &'static str,
    per_second: f64,
    /// From the first output to the last: the rate once running, without
    /// start-up and the group join.
    running_per_second: f64,
    cpu_per_message: Duration,
}

/// Starts `command`, waits for `count` outputs on `output` (read with
/// `reader`'s settings), stops it (SIGTERM, unless it exits by itself) and
/// measures it.
fn measure(
    name: &'static str,
    mut command: Command,
    reader: &ClientConfig,
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
    let last = watch(
        reader.clone(),
        output,
        count,
        started + Duration::from_secs(600),
        &mut child,
        exits_by_itself,
    );
    if !exits_by_itself || last.is_none() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let _ = child.wait();
    let cpu = children_cpu() - cpu_before;
    let (first, last) = last?;
    let run = Run {
        name,
        per_second: count as f64 / last.duration_since(started).as_secs_f64(),
        running_per_second: count.saturating_sub(1) as f64
            / last.duration_since(first).as_secs_f64().max(1e-9),
        cpu_per_message: cpu / u32::try_from(count).unwrap_or(u32::MAX),
    };
    eprintln!(
        "  {name}: {:.0} msg/s, {:.0} once running, {:.2} us CPU per message (first output after {:.2} s)",
        run.per_second,
        run.running_per_second,
        run.cpu_per_message.as_secs_f64() * 1e6,
        first.duration_since(started).as_secs_f64()
    );
    Some(run)
}

/// The Python interpreter, if it can import confluent-kafka (installed with
/// pip when missing).
fn python() -> Option<String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let importable = |python: &str| {
        Command::new(python)
            .args(["-c", "import confluent_kafka"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !importable(&python) {
        eprintln!("installing confluent-kafka for the Python consumers");
        let _ = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "confluent-kafka"])
            .status();
    }
    if !importable(&python) {
        eprintln!("{python} cannot import confluent_kafka: the Python consumers are skipped");
        return None;
    }
    Some(python)
}

/// The event bus's Python consumer script, if `SLUICE_PYTHON_PEER` names it.
fn python_peer() -> Option<String> {
    let script = std::env::var("SLUICE_PYTHON_PEER").ok();
    if script.is_none() {
        eprintln!("SLUICE_PYTHON_PEER is not set: the event bus's Python consumer is skipped");
    }
    script
}

/// `sluice run` on a config with `routes` and production defaults (not the
/// test harness's short timers), its partition queue as large as the input
/// (so that the bench measures the message path, not pauses), plus any `SLUICE_BENCH_PROCESSING` lines and
/// `SLUICE_BENCH_LIBRDKAFKA` properties. The directory holds the config
/// file and must outlive the run.
fn sluice_command(
    program: &str,
    plugins: &Path,
    bootstrap: &str,
    security: &str,
    group: &str,
    routes: &str,
    count: usize,
) -> (Command, TempDir) {
    let librdkafka: String = bench_properties()
        .iter()
        .map(|(key, value)| format!("{key:?} = {value:?}\n"))
        .collect();
    let text = format!(
        "[kafka]\nbootstrap_servers = {bootstrap:?}\ngroup = {group:?}\nauto_offset_reset = \"earliest\"\n\n\
         [kafka.librdkafka]\n{librdkafka}\n\
         [plugins]\ndir = {dir:?}\n\n\
         [processing]\npartition_queue = {queue}\n{extra}\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\n{security}\n\n{routes}",
        dir = plugins.display().to_string(),
        queue = count.min(100_000),
        extra = std::env::var("SLUICE_BENCH_PROCESSING")
            .unwrap_or_default()
            .replace(';', "\n"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, text).expect("config file");
    let mut command = Command::new(program);
    // Warnings and errors only, so that a failed start shows; nothing is
    // logged per message at the default level either.
    command
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn");
    (command, dir)
}

/// Where a `sluice` run reads and writes: the brokers, the `[kafka]`
/// tables that secure the connection to them, and the settings its outputs
/// are read back with.
struct Brokers<'a> {
    bootstrap: String,
    security: &'a str,
    reader: ClientConfig,
}

impl Brokers<'_> {
    fn plaintext(bootstrap: &str) -> Brokers<'static> {
        Brokers {
            bootstrap: bootstrap.to_owned(),
            security: "",
            reader: client(bootstrap),
        }
    }
}

/// Runs `program` as `sluice` with `routes` against `brokers` until
/// `count` outputs are on `output`, and measures it.
#[allow(clippy::too_many_arguments)]
fn run_sluice(
    name: &'static str,
    program: &str,
    plugins: &Path,
    brokers: &Brokers<'_>,
    group: &str,
    routes: &str,
    output: &str,
    count: usize,
) -> Option<Run> {
    let (command, _dir) = sluice_command(
        program,
        plugins,
        &brokers.bootstrap,
        brokers.security,
        group,
        routes,
        count,
    );
    measure(name, command, &brokers.reader, output, count, false)
}

/// Runs a Python consumer script (arguments: bootstrap, input topic, output
/// topic, count); it exits by itself once it has `count` outputs.
fn run_python(
    python: &str,
    script: &str,
    bootstrap: &str,
    input: &str,
    output: &str,
    count: usize,
) -> Option<Run> {
    let mut command = Command::new(python);
    command.args([script, bootstrap, input, output, &count.to_string()]);
    measure("python", command, &client(bootstrap), output, count, true)
}

/// The daemons to run, with their modules' directory: this build as
/// `sluice`, and the one `SLUICE_BENCH_AGAINST` names (with the modules
/// `SLUICE_BENCH_AGAINST_PLUGINS` names) as `against`.
fn daemons() -> Vec<(&'static str, String, PathBuf)> {
    let this = env!("CARGO_BIN_EXE_sluice-test-daemon").to_owned();
    let mut daemons = Vec::new();
    if selected("sluice") {
        daemons.push(("sluice", this.clone(), plugins_dir()));
    }
    let program = std::env::var("SLUICE_BENCH_AGAINST").ok();
    let plugins = std::env::var_os("SLUICE_BENCH_AGAINST_PLUGINS").map(PathBuf::from);
    if program.is_some() || plugins.is_some() {
        daemons.push((
            "against",
            program.unwrap_or(this),
            plugins.unwrap_or_else(plugins_dir),
        ));
    }
    daemons
}

/// Whether `name` is among the contenders `SLUICE_BENCH_ONLY` selects.
fn selected(name: &str) -> bool {
    std::env::var("SLUICE_BENCH_ONLY")
        .map_or(true, |only| only.split(',').any(|n| n.trim() == name))
}

/// How many times each contender runs (`SLUICE_BENCH_REPEAT`).
fn repeat() -> usize {
    std::env::var("SLUICE_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// The median of each contender's figures over its repetitions, in the
/// order the contenders first ran.
fn medians(runs: Vec<Run>) -> Vec<Run> {
    let mut names: Vec<&'static str> = Vec::new();
    for r in &runs {
        if !names.contains(&r.name) {
            names.push(r.name);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    names
        .into_iter()
        .map(|name| {
            let own: Vec<&Run> = runs.iter().filter(|r| r.name == name).collect();
            Run {
                name,
                per_second: median(own.iter().map(|r| r.per_second).collect()),
                running_per_second: median(own.iter().map(|r| r.running_per_second).collect()),
                cpu_per_message: Duration::from_secs_f64(median(
                    own.iter()
                        .map(|r| r.cpu_per_message.as_secs_f64())
                        .collect(),
                )),
            }
        })
        .collect()
}

/// Output topics for each contender's run `rep`, created on `broker`.
fn output_topics<const N: usize>(
    broker: &Broker,
    who: [&str; N],
    tag: &str,
    rep: usize,
) -> [String; N] {
    let outputs = who.map(|who| format!("out-{who}-{tag}-{rep}"));
    for topic in &outputs {
        broker.create_topic(topic, PARTITIONS);
    }
    outputs
}

fn run(broker: &Broker, size: usize, count: usize, peer: Option<(&str, &str)>) -> Vec<Run> {
    let bootstrap = broker.bootstrap();
    let tag = format!("{size}b");
    let input = format!("in-{tag}");
    broker.create_topic(&input, PARTITIONS);
    let value: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let keys: Vec<Vec<u8>> = (0..64).map(|i| format!("key-{i}").into_bytes()).collect();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(produce(
        &bootstrap,
        &input,
        (0..count).map(|i| Send {
            partition: None,
            key: Some(&keys[i % keys.len()]),
            value: &value,
            headers: &[],
        }),
    ));
    eprintln!("{count} messages of {size} B produced to {input}");

    let mut runs = Vec::new();
    for rep in 0..repeat() {
        let outputs = output_topics(
            broker,
            ["python", "bare", "bare-id", "sluice", "against"],
            &tag,
            rep,
        );
        runs.extend(run_once(
            &bootstrap, &input, &outputs, &tag, rep, count, peer,
        ));
    }
    medians(runs)
}

/// One run of each selected contender, upper-casing `input` into its own
/// output topic.
fn run_once(
    bootstrap: &str,
    input: &str,
    outputs: &[String; 5],
    tag: &str,
    rep: usize,
    count: usize,
    peer: Option<(&str, &str)>,
) -> Vec<Run> {
    let mut runs = Vec::new();
    if let Some((python, script)) = peer.filter(|_| selected("python")) {
        runs.extend(run_python(
            python,
            script,
            bootstrap,
            input,
            &outputs[0],
            count,
        ));
    }
    if selected("bare") {
        // As it is, and with sluice's output: every record carrying a
        // `correlation_id` header.
        for (name, output, extra) in [
            ("bare loop", &outputs[1], None),
            ("bare + id", &outputs[2], Some("--correlation-id")),
        ] {
            let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-bare-loop"));
            command.args([bootstrap, input, output]).args(extra);
            runs.extend(measure(
                name,
                command,
                &client(bootstrap),
                output,
                count,
                false,
            ));
        }
    }
    for (name, program, plugins) in daemons() {
        let output = &outputs[if name == "sluice" { 3 } else { 4 }];
        let routes = module_route("uppercase", input, output, "");
        let group = format!("{name}-{tag}-{rep}");
        let brokers = Brokers::plaintext(bootstrap);
        runs.extend(run_sluice(
            name, &program, &plugins, &brokers, &group, &routes, output, count,
        ));
    }
    runs
}

/// `sluice` on 100-byte values over TLS beside plaintext: two brokers on
/// memory storage, one serving plaintext and one TLS with a certificate
/// from a CA made for it, taking turns on the same input.
fn run_tls(count: usize) -> Vec<Run> {
    let plain = Broker::start();
    let secure = Broker::start_tls(Storage::Memory);
    let tls = secure.tls().expect("a TLS broker");
    let security = format!(
        "[kafka.tls]\nca_file = {:?}\n",
        tls.ca_file.display().to_string()
    );
    let brokers = [
        ("plaintext", &plain, String::new()),
        ("tls", &secure, security),
    ];
    let value = [b'a'; 100];
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    for (_, broker, _) in &brokers {
        broker.create_topic("in-tls", PARTITIONS);
        runtime.block_on(produce_via(
            broker.client_config(),
            "in-tls",
            (0..count).map(|_| Send {
                partition: None,
                key: None,
                value: &value,
                headers: &[],
            }),
        ));
    }
    eprintln!("{count} messages of 100 B produced to each broker");
    let program = env!("CARGO_BIN_EXE_sluice-test-daemon");
    let mut runs = Vec::new();
    for rep in 0..repeat() {
        for (name, broker, security) in &brokers {
            let output = format!("out-{name}-{rep}");
            broker.create_topic(&output, PARTITIONS);
            let routes = module_route("uppercase", "in-tls", &output, "");
            let group = format!("{name}-{rep}");
            let brokers = Brokers {
                bootstrap: broker.bootstrap(),
                security,
                reader: broker.client_config(),
            };
            runs.extend(run_sluice(
                name,
                program,
                &plugins_dir(),
                &brokers,
                &group,
                &routes,
                &output,
                count,
            ));
        }
    }
    medians(runs)
}

/// The JSON workload: `json-router` against a Python consumer doing the same
/// with the `json` module, on ~100-byte JSON objects.
fn run_json(broker: &Broker, count: usize, python: Option<&str>) -> Vec<Run> {
    let bootstrap = broker.bootstrap();
    let input = "in-json";
    broker.create_topic(input, PARTITIONS);
    let values: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let priority = if i % 10 == 0 { "high" } else { "normal" };
            format!(
                r#"{{"id":{i},"priority":"{priority}","customer":"customer-{:05}","amount":{}.{:02},"currency":"EUR"}}"#,
                i % 50_000,
                i % 1000,
                i % 100
            )
            .into_bytes()
        })
        .collect();
    let keys: Vec<Vec<u8>> = (0..64).map(|i| format!("key-{i}").into_bytes()).collect();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(produce(
        &bootstrap,
        input,
        values.iter().enumerate().map(|(i, value)| Send {
            partition: None,
            key: Some(&keys[i % keys.len()]),
            value,
            headers: &[],
        }),
    ));
    eprintln!("{count} JSON messages produced to {input}");

    let mut runs = Vec::new();
    for rep in 0..repeat() {
        let outputs = output_topics(broker, ["python", "sluice", "against"], "json", rep);
        runs.extend(run_json_once(
            &bootstrap, input, &outputs, rep, count, python,
        ));
    }
    medians(runs)
}

/// One run of each selected contender of the JSON workload.
fn run_json_once(
    bootstrap: &str,
    input: &str,
    outputs: &[String; 3],
    rep: usize,
    count: usize,
    python: Option<&str>,
) -> Vec<Run> {
    let mut runs = Vec::new();
    if let Some(python) = python.filter(|_| selected("python")) {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/python_json_consumer.py"
        );
        runs.extend(run_python(
            python,
            script,
            bootstrap,
            input,
            &outputs[0],
            count,
        ));
    }
    for (name, program, plugins) in daemons() {
        let output = &outputs[if name == "sluice" { 1 } else { 2 }];
        let routes = format!(
            "[[routes]]\ntopic = \"{input}\"\nmodule = \"json_router\"\noutput_topics = [\"{output}\"]\n\
             [routes.config]\nhigh_topic = \"{output}\"\ndefault_topic = \"{output}\"\n"
        );
        let group = format!("{name}-json-{rep}");
        let brokers = Brokers::plaintext(bootstrap);
        runs.extend(run_sluice(
            name, &program, &plugins, &brokers, &group, &routes, output, count,
        ));
    }
    runs
}

fn print_runs(title: &str, runs: &[Run]) {
    println!("\n{title}");
    println!(
        "{:>10} {:>12} {:>20} {:>16}",
        "", "msg/s", "msg/s once running", "CPU us/message"
    );
    for r in runs {
        println!(
            "{:>10} {:>12.0} {:>20.0} {:>16.2}",
            r.name,
            r.per_second,
            r.running_per_second,
            r.cpu_per_message.as_secs_f64() * 1e6
        );
    }
}

fn find<'a>(runs: &'a [Run], name: &str) -> Option<&'a Run> {
    runs.iter().find(|r| r.name == name)
}

fn cpu_ratio(sluice: &Run, other: &Run) -> f64 {
    sluice.cpu_per_message.as_secs_f64() / other.cpu_per_message.as_secs_f64()
}

/// This build against `SLUICE_BENCH_AGAINST`'s, when both ran.
fn print_against(runs: &[Run]) {
    if let (Some(sluice), Some(against)) = (find(runs, "sluice"), find(runs, "against")) {
        println!(
            "sluice / against: CPU per message {:.2}, msg/s {:.2}, once running {:.2}",
            cpu_ratio(sluice, against),
            sluice.per_second / against.per_second,
            sluice.running_per_second / against.running_per_second
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` asks for a listing: there is nothing to list.
        return;
    }
    let count: usize = std::env::var("SLUICE_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MESSAGES);
    let sizes: Vec<usize> = std::env::var("SLUICE_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1024]);
    let json = std::env::var("SLUICE_BENCH_JSON").map_or(true, |v| v != "0");
    let python = python();
    let script = python_peer();
    let peer = python.as_deref().zip(script.as_deref());
    let broker = Broker::start();
    println!(
        "end to end, {count} messages, {PARTITIONS} partitions, Nisshi (memory storage), at least once, \
         median of {} run(s) each",
        repeat()
    );
    for size in sizes {
        let runs = run(&broker, size, count, peer);
        print_runs(&format!("uppercase, {size} B values"), &runs);
        if let (Some(sluice), Some(python)) = (find(&runs, "sluice"), find(&runs, "python")) {
            println!(
                "sluice CPU per message / python's: {:.2} (goal <= 0.5 at 100 B)",
                cpu_ratio(sluice, python)
            );
        }
        print_against(&runs);
        for bare in ["bare loop", "bare + id"] {
            if let (Some(sluice), Some(bare)) = (find(&runs, "sluice"), find(&runs, bare)) {
                println!(
                    "sluice / {}: msg/s {:.2} (goal >= 0.9), once running {:.2}, CPU per message {:.2}",
                    bare.name,
                    sluice.per_second / bare.per_second,
                    sluice.running_per_second / bare.running_per_second,
                    cpu_ratio(sluice, bare)
                );
            }
        }
    }
    if std::env::var("SLUICE_BENCH_TLS").map_or(true, |v| v != "0") {
        let runs = run_tls(count);
        print_runs("sluice over TLS beside plaintext, 100 B values", &runs);
        if let (Some(tls), Some(plain)) = (find(&runs, "tls"), find(&runs, "plaintext")) {
            println!(
                "TLS / plaintext: CPU per message {:.2}, msg/s {:.2}",
                cpu_ratio(tls, plain),
                tls.per_second / plain.per_second
            );
        }
    }
    if json {
        let runs = run_json(&broker, count, python.as_deref());
        print_runs(
            "json-router against Python's json module, ~100 B objects",
            &runs,
        );
        print_against(&runs);
        if let (Some(sluice), Some(python)) = (find(&runs, "sluice"), find(&runs, "python")) {
            println!(
                "sluice CPU per message / python's: {:.2} (goal <= 0.2)",
                cpu_ratio(sluice, python)
            );
        }
    }
}
