//! A real Kafka-compatible broker for tests: Tansu, started on a free
//! loopback port, stopped when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

/// How the broker keeps its data.
enum Storage {
    /// In memory: fast, gone when the broker stops.
    Memory,
    /// In a SQLite file that survives restarts.
    Sqlite(PathBuf),
}

/// A running Tansu broker.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    storage: Storage,
    /// Keeps the SQLite file's directory alive.
    _dir: tempfile::TempDir,
}

const INSTALL_HINT: &str = "install it with `cargo install tansu --locked --version 0.6.0 \
     --features libsql,dynostore` (scripts/test does this)";

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Broker {
    /// Starts a broker keeping its data in memory.
    pub fn start() -> Broker {
        Self::start_with(Storage::Memory)
    }

    /// Starts a broker keeping its data in a SQLite file, so that
    /// [`Broker::restart`] keeps every message and committed offset.
    pub fn start_persistent() -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tansu.db");
        let mut broker = Self::start_with(Storage::Sqlite(file));
        broker._dir = dir;
        broker
    }

    fn start_with(storage: Storage) -> Broker {
        let mut broker = Broker {
            child: None,
            port: free_port(),
            storage,
            _dir: tempfile::tempdir().expect("tempdir"),
        };
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // Tansu resolves a SQLite path against its working directory, even
        // one written as absolute: run it in the file's directory.
        let (engine, dir) = match &self.storage {
            Storage::Memory => ("memory://tansu/".to_owned(), self._dir.path().to_owned()),
            Storage::Sqlite(file) => (
                format!(
                    "sqlite://{}",
                    file.file_name().unwrap_or_default().to_string_lossy()
                ),
                file.parent().map(Path::to_owned).unwrap_or_default(),
            ),
        };
        let log = std::fs::File::create(self.log_file()).expect("broker log file");
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &engine])
            .env("RUST_LOG", "warn")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the tansu broker ({e}); {INSTALL_HINT}"));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the broker answers a metadata request.
    fn wait_ready(&self) {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("log_level", "0")
            .create()
            .expect("metadata client");
        let deadline = Instant::now() + Duration::from_secs(30);
        while consumer
            .fetch_metadata(None, Duration::from_secs(1))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "tansu did not become ready within 30 s; its output:\n{}",
                std::fs::read_to_string(self.log_file()).unwrap_or_default()
            );
        }
    }

    /// Where the broker's output goes (overwritten at each start).
    fn log_file(&self) -> PathBuf {
        self._dir.path().join("tansu.log")
    }

    /// What the broker has written since it was last started.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// The address clients connect to.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let out = Command::new("tansu")
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
            ])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .output()
            .unwrap_or_else(|e| panic!("cannot run `tansu topic create` ({e}); {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "tansu topic create {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the broker (SIGKILL) without starting it again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped broker again on the same port and storage.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the broker is still running");
        self.launch();
    }

    /// Kills the broker and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A test that fails shows what the broker said, and whether it was
        // still running: a red test may be the broker's doing.
        if std::thread::panicking() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let tail = crate::logs::tail(&self.log(), 40);
            eprintln!(
                "the test broker {}; the end of its log:\n{tail}",
                match exited {
                    Some(status) => format!("had exited ({status})"),
                    None => "was running".to_owned(),
                }
            );
        }
        self.stop();
    }
}
