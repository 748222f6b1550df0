//! `sluice check`: validate a plugin, describe it, optionally invoke it once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;

use crate::config::MAX_MEMORY_MB;
use crate::wasm::{
    self, EntryPoint, Header, Invocation, Isolation, Limits, Message, OutputLimits, Runtime,
    RuntimeConfig,
};

#[derive(Debug, Args)]
pub(super) struct CheckArgs {
    /// The .wasm component to check.
    file: PathBuf,

    /// Invoke the handler once with this message value (UTF-8 text).
    #[arg(long)]
    value: Option<String>,

    /// The message key (with --value).
    #[arg(long, requires = "value")]
    key: Option<String>,

    /// A message header as NAME=VALUE; repeatable (with --value).
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_pair, requires = "value")]
    headers: Vec<(String, String)>,

    /// A route config entry as KEY=VALUE, answered by the guest's config(key);
    /// repeatable (with --value).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_pair, requires = "value")]
    config: Vec<(String, String)>,

    /// The topic the message claims to come from.
    #[arg(long, default_value = "check", requires = "value")]
    topic: String,

    /// The delivery attempt the handler sees (1 = first delivery).
    #[arg(long, default_value_t = 1, requires = "value")]
    attempt: u32,

    /// How long the call may take, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=300_000))]
    timeout_ms: u64,

    /// The handler's memory limit, in MiB, as a route's `memory_limit_mb`:
    /// the module's memory must start within it.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=MAX_MEMORY_MB))]
    memory_limit_mb: u64,
}

/// Prints the limits the module is run under, as a route's defaults would
/// set them.
fn print_limits(limits: &Limits) {
    let o = &limits.outputs;
    println!(
        "  limits   {} ms per call (waits in WASI calls included), {} MiB of memory and tables \
         per instance",
        limits.timeout.as_millis(),
        limits.memory_bytes >> 20
    );
    println!(
        "           per message: {} outputs, {} bytes per output, {} headers per output, {} bytes \
         in all",
        o.max_outputs, o.max_output_bytes, o.max_output_headers, o.max_returned_bytes
    );
    println!(
        "           guest text: reasons cut at {} bytes, log lines at {}, control characters \
         escaped",
        wasm::MAX_GUEST_TEXT,
        wasm::MAX_LOG_MESSAGE
    );
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not of the form NAME=VALUE"))
}

pub(super) fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let memory_bytes = usize::try_from(args.memory_limit_mb << 20)?;
    // Loaded within the largest limit a route can have, then tried within
    // `--memory-limit-mb`, so that what does not fit is named.
    let runtime = Runtime::new(RuntimeConfig {
        max_memory_bytes: usize::try_from(MAX_MEMORY_MB << 20)?,
        pooling: false,
        ..RuntimeConfig::default()
    })
    .context("starting the WebAssembly runtime")?;
    let plugin = Arc::new(runtime.load_file(&args.file)?);
    runtime.fits_within(
        &plugin,
        memory_bytes,
        &format!(
            "--memory-limit-mb {}, as a route's memory_limit_mb would",
            args.memory_limit_mb
        ),
    )?;

    let info = plugin.info();
    println!("{}: a valid Sluice handler", args.file.display());
    println!("  module   {}", plugin.name());
    println!(
        "  world    {} (handler contract {})",
        wasm::contract::WORLD,
        info.contract_version
    );
    println!(
        "  batches  {}",
        match plugin.entry_point() {
            EntryPoint::Packed => {
                "yes: several messages of a partition per call, packed in one buffer (handle-packed)"
            }
            EntryPoint::Batch => "yes: several messages of a partition per call (handle-batch)",
            EntryPoint::Handle => {
                "no: one call per message (export `packed` or `batch` to batch, as the SDK does)"
            }
        }
    );
    println!("  size     {} bytes", plugin.size());
    println!("  sha256   {}", plugin.hash());
    print_list("exports", &info.exports);
    print_list("imports", &info.imports);
    let limits = Limits {
        timeout: Duration::from_millis(args.timeout_ms),
        memory_bytes,
        outputs: OutputLimits::default(),
    };
    print_limits(&limits);

    let Some(value) = args.value else {
        return Ok(ExitCode::SUCCESS);
    };
    let message = Message {
        topic: args.topic,
        partition: 0,
        offset: 0,
        timestamp: Some(now_millis()),
        key: args.key.map(String::into_bytes),
        value: Some(value.into_bytes()),
        headers: args
            .headers
            .into_iter()
            .map(|(key, value)| Header {
                key,
                value: value.into_bytes(),
            })
            .collect(),
        attempt: args.attempt,
    };
    let invocation = Invocation {
        limits,
        config: Arc::new(args.config.into_iter().collect::<BTreeMap<_, _>>()),
    };
    let mut invoker = runtime.invoker(plugin, Isolation::Fresh);
    let started = Instant::now();
    let outcome = invoker.invoke(&message, &invocation);
    let took = started.elapsed();
    println!();
    println!(
        "invoked on topic {} (attempt {}, timeout {} ms, memory limit {} MiB)",
        message.topic, message.attempt, args.timeout_ms, args.memory_limit_mb
    );
    match outcome {
        Ok(outputs) => {
            println!(
                "  outcome  ok: {} output{} in {:.2} ms",
                outputs.len(),
                if outputs.len() == 1 { "" } else { "s" },
                took.as_secs_f64() * 1e3
            );
            for (i, out) in outputs.iter().enumerate() {
                println!(
                    "  output {}  topic={} key={} value={} headers={}",
                    i + 1,
                    out.topic,
                    show_bytes(out.key.as_deref()),
                    show_bytes(out.value.as_deref()),
                    show_headers(&out.headers)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            println!("  outcome  failed: {failure}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn print_list(label: &str, items: &[String]) {
    let mut rest = items.iter();
    match rest.next() {
        Some(first) => println!("  {label:<8} {first}"),
        None => println!("  {label:<8} (none)"),
    }
    for item in rest {
        println!("           {item}");
    }
}

/// Shows bytes as a quoted string when they are UTF-8, base64 otherwise.
pub(super) fn show_bytes(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "(none)".to_owned(),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => format!("{s:?}"),
            Err(_) => format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(b)
            ),
        },
    }
}

fn show_headers(headers: &[Header]) -> String {
    let shown: Vec<String> = headers
        .iter()
        .map(|h| format!("{}={}", h.key, show_bytes(Some(&h.value))))
        .collect();
    format!("{{{}}}", shown.join(", "))
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
