//! The command line: argument definitions and the commands behind them.
//!
//! Owns parsing and printing only; the work is done by the library modules.

mod check;
mod demo;
mod dlq;
mod offsets;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::telemetry::LogFormat;

/// Sluice consumes Kafka and hands every message to a sandboxed WebAssembly
/// handler.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
pub struct Cli {
    /// How log lines are written to stderr (RUST_LOG filters them); for
    /// `run`, overrides the config file's `logging.format` [default: human].
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: consume the routed topics, hand every message to its
    /// module, produce outputs and dead letters. Stops cleanly on SIGTERM or
    /// SIGINT.
    ///
    /// Every KAFKA_* variable of the event bus overrides its [kafka] field.
    Run(RunArgs),
    /// Validate a handler component and describe it; with --value, invoke it
    /// once and print the outcome.
    ///
    /// Exits 0 when the file is a valid handler (and, with --value, the call
    /// succeeded), 1 otherwise.
    Check(check::CheckArgs),
    /// Try Sluice out: run the daemon on the embedded broker, feed it a sample
    /// stream (failing messages included) and show outputs and dead letters
    /// as they happen.
    Demo(demo::DemoArgs),
    /// Inspect and replay dead letters: list them, count them, or produce
    /// them back to their original topics. Reads the dead-letter topics
    /// named by the config file without joining a consumer group.
    Dlq(dlq::DlqArgs),
    /// Show or move the consumer group's committed offsets: reprocess
    /// from the start, an offset or a point in time after fixing a
    /// handler, or skip ahead. Moves nothing while the group has live
    /// members.
    Offsets(offsets::OffsetsArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The configuration file.
    #[arg(long, short, default_value = "sluice.toml")]
    config: PathBuf,
}

/// The whole `sluice` program: parses the command line, sets up logging,
/// runs the command and prints the whole error chain on failure.
pub fn main() -> ExitCode {
    crate::kafka::init_tls();
    let cli = Cli::parse();
    // `run` sets logging up once its config file (and its logging.format) is read.
    if !matches!(cli.command, Command::Run(_)) {
        init_logging(cli.log_format.unwrap_or_default());
    }
    match cli.run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

impl Cli {
    /// Runs the chosen command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Check(args) => check::check(args),
            Command::Run(args) => {
                let config = load_config(&args.config)?;
                init_logging(self.log_format.unwrap_or(config.logging.format));
                let bound = crate::pipeline::shutdown::bound(&config);
                let runtime = tokio_runtime()?;
                let result = runtime.block_on(crate::run(config, async move {
                    shutdown_signal().await;
                    crate::pipeline::shutdown::watchdog(bound);
                }));
                // The runtime's own threads end first, dropping what their
                // tasks still held, so that nothing of the daemon runs
                // beside the process's exit. A guest still in a call on a
                // blocking thread holds the exit no longer than
                // `RUNTIME_STOP`: its message was not stored, so it is
                // delivered again.
                crate::pipeline::shutdown::stage("stopping the runtime");
                runtime.shutdown_timeout(RUNTIME_STOP);
                result?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Demo(args) => demo::demo(args),
            Command::Dlq(args) => dlq::dlq(args),
            Command::Offsets(args) => offsets::offsets(args),
        }
    }
}

/// How long the end of `run` waits for blocking threads (guests still in a
/// call) after the drain.
const RUNTIME_STOP: std::time::Duration = std::time::Duration::from_secs(1);

fn init_logging(format: LogFormat) {
    crate::telemetry::init(format, "warn,sluice=info");
}

/// Loads and validates a config file, naming it in any error.
fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    load_config_with(path, |var| std::env::var(var).ok())
}

/// Like [`load_config`], with `env` answering the `KAFKA_*` lookups.
fn load_config_with(
    path: &std::path::Path,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Config> {
    Config::load_with(path, &env).with_context(|| format!("invalid config file {}", path.display()))
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice")
        .build()
        .context("starting the async runtime")
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
