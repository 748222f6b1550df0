//! Sluice under test: in-process (with its own shutdown) or as a child
//! process that can be killed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use sluice::config::Config;
use sluice::pipeline::Status;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The directory holding the compiled guests, used as the plugins directory:
/// modules `uppercase`, `json_router`, `misbehave`, ...
pub fn plugins_dir() -> PathBuf {
    Path::new(crate::artifacts::UPPERCASE)
        .parent()
        .expect("artifacts live in a directory")
        .to_owned()
}

/// A config file's text: the `[kafka]` table for `bootstrap` and `group`
/// (reading from the earliest offset, committing every 200 ms), the plugins
/// directory, an HTTP endpoint on a free port (unless `rest` has an `[http]`
/// table), then `rest` (routes and any other tables).
pub fn config_text(bootstrap: &str, group: &str, kafka_extra: &str, rest: &str) -> String {
    config_text_in(&plugins_dir(), bootstrap, group, kafka_extra, rest)
}

/// Like [`config_text`], with `plugins` as the plugins directory.
pub fn config_text_in(
    plugins: &Path,
    bootstrap: &str,
    group: &str,
    kafka_extra: &str,
    rest: &str,
) -> String {
    // Tests run side by side: each daemon serves HTTP on a port of its own.
    let http = if rest.contains("[http]") {
        ""
    } else {
        "[http]\nlisten = \"127.0.0.1:0\"\n"
    };
    format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"
environment = "test"
group = "{group}"
auto_offset_reset = "earliest"
{kafka_extra}

[kafka.librdkafka]
"reconnect.backoff.max.ms" = 1000
"statistics.interval.ms" = 500
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 500
"topic.metadata.refresh.interval.ms" = 1000

[plugins]
dir = {dir:?}

[processing]
commit_interval_seconds = 0.2
drain_timeout_seconds = 5

{http}
{rest}
"#,
        dir = plugins.display().to_string()
    )
}

/// Parses config text without reading the process environment.
pub fn parse(text: &str) -> Config {
    Config::parse(text, &plugins_dir(), &|_| None)
        .unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

/// The daemon running in this process.
pub struct Daemon {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    /// What it reports: breakers, stopped partitions, messages consumed.
    pub status: Arc<Status>,
}

impl Daemon {
    /// Starts `sluice::run` with `config` on the current tokio runtime.
    pub fn start(config: Config) -> Daemon {
        // Logs go to stderr when RUST_LOG asks for them.
        if std::env::var_os("RUST_LOG").is_some() {
            sluice::telemetry::init(sluice::telemetry::LogFormat::Human, "warn");
        }
        let stop = CancellationToken::new();
        let status = Status::new(&config);
        let task = tokio::spawn(sluice::pipeline::run_with_status(
            config,
            status.clone(),
            stop.clone().cancelled_owned(),
        ));
        Daemon { stop, task, status }
    }

    /// The address of its HTTP endpoint, once it listens.
    pub async fn http_addr(&self) -> std::net::SocketAddr {
        let mut addr = self.status.http_addr();
        let ready = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            addr.wait_for(Option::is_some),
        )
        .await
        .expect("the daemon listens for HTTP within a minute")
        .expect("the status outlives the daemon");
        ready.expect("wait_for returned a listening address")
    }

    /// Its broker breaker, once the pipeline has made it.
    pub async fn broker(&self) -> sluice::pipeline::BreakerView {
        let mut broker = self.status.broker();
        let made = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            broker.wait_for(Option::is_some),
        )
        .await
        .expect("the daemon makes its broker breaker within a minute")
        .expect("the status outlives the daemon");
        made.clone().expect("wait_for returned a breaker")
    }

    /// Whether it has stopped on its own (it should not).
    pub fn has_exited(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for it to stop on its own, and returns how it ended.
    pub async fn exited(self) -> anyhow::Result<()> {
        self.task.await.expect("the daemon task does not panic")
    }

    /// Asks it to stop (as SIGTERM does) and waits for the drain.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("the daemon task does not panic")
            .expect("the daemon stops cleanly");
    }
}

/// The daemon as a child process (`sluice run --config FILE`).
pub struct DaemonProcess {
    child: Child,
    _config: tempfile::NamedTempFile,
}

impl DaemonProcess {
    /// Writes `config` to a file and starts the daemon binary `program` on
    /// it (an integration test passes `env!("CARGO_BIN_EXE_sluice-test-daemon")`).
    pub fn start(program: &str, config: &str) -> DaemonProcess {
        Self::start_logging_to(program, config, None)
    }

    /// Like [`DaemonProcess::start`], writing its stderr (the log) to `log`
    /// instead of the test's stderr.
    pub fn start_logging_to(program: &str, config: &str, log: Option<&Path>) -> DaemonProcess {
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("config file");
        std::io::Write::write_all(&mut file, config.as_bytes()).expect("write config");
        let child = Command::new(program)
            .args(["run", "--config"])
            .arg(file.path())
            .env(
                "RUST_LOG",
                // A captured log is read by the test: everything from info,
                // but for the client statistics logged twice a second.
                match log {
                    Some(_) => "info,rdkafka::client=warn".to_owned(),
                    None => std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                },
            )
            .stdin(Stdio::null())
            .stderr(match log {
                Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
                None => Stdio::inherit(),
            })
            .spawn()
            .expect("start the daemon binary");
        DaemonProcess {
            child,
            _config: file,
        }
    }

    /// Kills it with SIGKILL: no drain, no commit.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to a minute; returns the exit code, or
    /// `None` (after killing it) if it did not exit, or exited on a signal.
    pub fn terminate(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // A child's exit cannot be awaited with a deadline: look every 50 ms.
        while std::time::Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
                        eprintln!("the daemon ended on signal {signal} after SIGTERM");
                    }
                    return status.code();
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(50)),
                Err(_) => return None,
            }
        }
        eprintln!("the daemon did not exit within a minute of SIGTERM: killed");
        None
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A route from `topic` to `output` through `module`, with `extra` route
/// fields and `output_topic = output` in its config table (which the
/// example handlers and fixtures read).
pub fn module_route(module: &str, topic: &str, output: &str, extra: &str) -> String {
    format!(
        r#"
[[routes]]
topic = "{topic}"
module = "{module}"
output_topics = ["{output}"]
{extra}
[routes.config]
output_topic = "{output}"
"#
    )
}

/// A route of the `misbehave` example from `topic` to `output`, with `extra`
/// route fields.
pub fn misbehave_route(topic: &str, output: &str, extra: &str) -> String {
    module_route("misbehave", topic, output, extra)
}

/// Waits until `done` holds for the breaker, re-checking at each transition.
pub async fn until_breaker(
    breaker: &sluice::pipeline::BreakerView,
    what: &str,
    done: impl Fn(&sluice::pipeline::BreakerView) -> bool,
) {
    let mut changes = breaker.subscribe();
    let wait = async {
        while !done(breaker) {
            changes
                .changed()
                .await
                .expect("the breaker lives as long as the daemon");
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

/// Writes `bytes` next to `handler.wasm` in the plugins directory `dir` and
/// renames it into place, as the README tells users to.
pub fn deploy(dir: &Path, bytes: &[u8]) {
    let tmp = dir.join(".handler.wasm.partial");
    std::fs::write(&tmp, bytes).expect("write the new version");
    std::fs::rename(&tmp, dir.join("handler.wasm")).expect("rename it into place");
}

/// Waits, across plugin events (loads, refusals, deletions), until `done`
/// holds; panics naming `what` after two minutes.
pub async fn until_plugins(status: &Status, what: &str, done: impl Fn(&Status) -> bool) {
    let mut events = status.plugin_events();
    let wait = async {
        while !done(status) {
            events.changed().await.expect("status lives");
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}
