//! The configuration file (`sluice.toml`), its `KAFKA_*` environment
//! overrides, and the checks that make a bad file fail fast.
//!
//! Owns parsing and validation only: nothing here touches Kafka or loads a
//! plugin (it only checks that each route's module file exists). Every field
//! carries a doc comment: it is the user's documentation, and
//! `docs/configuration.md` follows it.

mod env;
mod membership;
mod secret;
mod security;
mod security_checks;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::telemetry::LogFormat;
use crate::wasm::{Isolation, OutputLimits};

pub use env::KAFKA_VARIABLES;
pub use membership::{AssignmentStrategy, HOSTNAME_PLACEHOLDER};
pub use secret::{Secret, is_sensitive_property};
pub use security::{Compression, SaslConfig, SaslMechanism, SecurityProtocol, TlsConfig};

/// Why a configuration was refused. Each message names the field (or
/// variable), the value and what is allowed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        reason: String,
    },
    /// The file is not valid TOML, has an unknown field or a value of the
    /// wrong type.
    #[error("{0}")]
    Parse(String),
    /// A `KAFKA_*` environment variable has a value of the wrong type.
    #[error("environment variable {var} = {value:?} is not valid: expected {expected}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A file that a field names (a certificate, a key, a mounted secret)
    /// cannot be read; found when the clients are built.
    #[error(
        "{field} = {path:?} cannot be read: {reason}; the file must be readable by the daemon \
         when it starts (mount the Secret there, or correct the path)"
    )]
    File {
        /// The field, as a TOML path (`kafka.sasl.password_file`).
        field: String,
        /// The file, resolved against the config file's directory.
        path: PathBuf,
        /// What the operating system said.
        reason: String,
    },
    /// A value is out of its range or conflicts with another.
    #[error("{field} = {value} is not allowed: {allowed}")]
    Invalid {
        /// The field, as a TOML path (`routes[1].timeout_ms`).
        field: String,
        /// The value given, as written in TOML, followed by
        /// `(from KAFKA_...)` when an environment variable set it.
        value: String,
        /// What is allowed instead.
        allowed: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Connection, consumer-group and delivery settings (the event bus's
    /// `KAFKA_*` settings, same names, same defaults, same ranges). The table
    /// may be left out: every field has a default.
    pub kafka: KafkaConfig,
    /// Where handler modules live.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// How messages are scheduled onto handlers.
    #[serde(default)]
    pub processing: ProcessingConfig,
    /// The HTTP endpoint: health, readiness, metrics, plugins, admin.
    #[serde(default)]
    pub http: HttpConfig,
    /// How the daemon logs.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Where message spans are exported.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Which module handles which topic; at least one, and a topic appears
    /// in one route only.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The directory relative paths are resolved against: the config file's
    /// own directory.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file it was read from, watched for changes while the daemon
    /// runs; `None` for a config parsed from text.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// The bootstrap value that starts the in-process development broker.
pub const EMBEDDED_BROKER: &str = "embedded";

/// The largest `processing.max_memory_mb`, and so the largest memory limit
/// any route can have, in MiB.
pub const MAX_MEMORY_MB: u64 = 4096;

/// Kafka settings. Every field can be overridden by its `KAFKA_*` variable.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated broker addresses, or `"embedded"` for the in-memory
    /// development broker. `KAFKA_BOOTSTRAP_SERVERS`.
    #[serde(default = "default_bootstrap_servers")]
    pub bootstrap_servers: String,
    /// Environment identifier (`dev`, `staging`, `prod`); the consumer group
    /// id is `{environment}.{group}`. `KAFKA_ENVIRONMENT`.
    #[serde(default = "default_environment")]
    pub environment: String,
    /// Consumer group name. `KAFKA_GROUP`.
    #[serde(default = "default_group")]
    pub group: String,
    /// Where a group without committed offsets starts. `KAFKA_AUTO_OFFSET_RESET`.
    #[serde(default)]
    pub auto_offset_reset: OffsetReset,
    /// Topic for failed messages; without one (and without a route override)
    /// a failed message stops its partition instead of being skipped.
    /// `KAFKA_DEAD_LETTER_TOPIC`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Timeout of broker operations in seconds, 1 to 300: a produce that is
    /// not acknowledged within it has failed, and the producer's flush on
    /// shutdown waits at most this long. `KAFKA_TIMEOUT_SECONDS`.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// How many times a retryable failure (a handler error marked retryable,
    /// a timeout) is retried before the message is dead-lettered, 0 to 10.
    /// `KAFKA_MAX_RETRY_ATTEMPTS`.
    #[serde(default = "default_max_retry_attempts")]
    pub max_retry_attempts: u32,
    /// Base of the exponential retry backoff in seconds, 0.1 to 60.0: retry
    /// `n` (0 for the first) waits `base * 2^n`, times a jitter from 0.5 to
    /// 1.5, at most `retry_backoff_max`. `KAFKA_RETRY_BACKOFF_BASE`.
    #[serde(default = "default_retry_backoff_base")]
    pub retry_backoff_base: f64,
    /// The longest retry delay in seconds, 0.1 to 3600.0 and at least
    /// `retry_backoff_base`. `KAFKA_RETRY_BACKOFF_MAX`.
    #[serde(default = "default_retry_backoff_max")]
    pub retry_backoff_max: f64,
    /// Consecutive failures to produce output or dead-letter records (each
    /// after librdkafka's own retries and `timeout_seconds`) before the
    /// broker circuit opens and consumption pauses, 1 to 100; also the
    /// default of each route's handler breaker.
    /// `KAFKA_CIRCUIT_BREAKER_THRESHOLD`.
    #[serde(default = "default_circuit_breaker_threshold")]
    pub circuit_breaker_threshold: u32,
    /// Seconds an open circuit waits before a probe, 1.0 to 3600.0; also the
    /// default of each route's handler breaker.
    /// `KAFKA_CIRCUIT_BREAKER_RESET_TIMEOUT`.
    #[serde(default = "default_circuit_breaker_reset_timeout")]
    pub circuit_breaker_reset_timeout: f64,
    /// Longest wait for new messages in one fetch, in seconds, 0.01 to 10.0.
    /// `KAFKA_CONSUMER_SLEEP_INTERVAL`.
    #[serde(default = "default_consumer_sleep_interval")]
    pub consumer_sleep_interval: f64,
    /// Commit stored offsets on librdkafka's timer. When false, Sluice commits
    /// them itself every `processing.commit_interval_seconds`. Either way an
    /// offset is stored only after its outputs are acknowledged.
    /// `KAFKA_ENABLE_AUTO_COMMIT`.
    #[serde(default = "default_true")]
    pub enable_auto_commit: bool,
    /// How many broker acknowledgements a produce needs. `KAFKA_ACKS`.
    #[serde(default)]
    pub acks: Acks,
    /// Idempotent producer: retries never duplicate a record.
    /// `KAFKA_ENABLE_IDEMPOTENCE`.
    #[serde(default = "default_true")]
    pub enable_idempotence: bool,
    /// Static membership: this daemon's own, stable member id in the group
    /// (librdkafka's `group.instance.id`), unique to each daemon. A daemon
    /// restarted under the same id within the session timeout
    /// (`"session.timeout.ms"` in `[kafka.librdkafka]`) gets its partitions
    /// back without a rebalance of the group; one that stops leaves them
    /// unconsumed until the session timeout ends. `{hostname}` is replaced
    /// with the host name (`HOSTNAME`, which Kubernetes sets to the pod's
    /// name, else the kernel's), so `"sluice-{hostname}"` in a StatefulSet
    /// gives each pod its own id for good. Unset: a new member at each
    /// start. `KAFKA_GROUP_INSTANCE_ID`.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// How the group's leader spreads partitions over the members:
    /// `"range"`, `"roundrobin"` or `"cooperative-sticky"` (recommended: a
    /// rebalance moves only the partitions that change hands, and the rest
    /// keep flowing). Unset: librdkafka's default, range with round-robin
    /// allowed. The members of a group must have a strategy in common: to
    /// move a group from an eager strategy to `"cooperative-sticky"`, stop
    /// every daemon of the group, then start them with the new setting.
    #[serde(default)]
    pub partition_assignment_strategy: Option<AssignmentStrategy>,
    /// The codec of the batches of outputs and dead letters (the producer's
    /// `compression.type`): `"none"`, `"gzip"`, `"snappy"`, `"lz4"` or
    /// `"zstd"`. Default `"lz4"`: it costs little CPU to compress and next to
    /// none to read, shrinks text and JSON records to a half or a third, and
    /// every broker and client since Kafka 0.10 reads it (zstd needs 2.1).
    /// Inputs are read whatever their codec. `KAFKA_COMPRESSION`.
    #[serde(default)]
    pub compression: Compression,
    /// librdkafka's `security.protocol`: `"plaintext"`, `"ssl"`,
    /// `"sasl_plaintext"` or `"sasl_ssl"`. Unset: derived from the tables
    /// present, `ssl` with `[kafka.tls]`, `sasl_` with `[kafka.sasl]`. Set it
    /// to use TLS with the system's CA certificates without a `[kafka.tls]`
    /// table, as `KAFKA_SECURITY_PROTOCOL=SASL_SSL` does.
    /// `KAFKA_SECURITY_PROTOCOL`.
    #[serde(default)]
    pub security_protocol: Option<SecurityProtocol>,
    /// TLS to the brokers: the CA, a client certificate and key, hostname
    /// verification. Present: the connection is encrypted.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// SASL authentication: PLAIN, SCRAM or OAUTHBEARER (OpenID Connect).
    #[serde(default)]
    pub sasl: Option<SaslConfig>,
    /// Any other librdkafka property, passed through to both the consumer and
    /// the producer (for example `"socket.keepalive.enable" = true`): a
    /// string, number or boolean. The properties Sluice manages itself, and
    /// those of `security_protocol`, `tls`, `sasl` and `compression`, are
    /// refused with the field to use instead.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, toml::Value>,
}

/// Where a consumer group without committed offsets starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OffsetReset {
    /// From the oldest message still in the topic.
    Earliest,
    /// From the next message produced.
    #[default]
    Latest,
}

/// Producer acknowledgements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Acks {
    /// Every in-sync replica (required by the idempotent producer): `"all"`.
    #[default]
    All,
    /// The partition leader only: `"1"`.
    Leader,
    /// None: the broker is not asked to acknowledge, so at-least-once is
    /// lost: `"0"`.
    None,
}

impl Acks {
    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "1",
            Acks::None => "0",
        }
    }
}

/// Where handler modules live.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// The plugins directory, relative to the config file: module `enrich` is
    /// the file `enrich.wasm` in it.
    #[serde(default = "default_plugins_dir")]
    pub dir: PathBuf,
    /// Where compiled modules are kept so that a restart does not compile
    /// them again, relative to the config file. Unset: the user's cache
    /// directory (`$XDG_CACHE_HOME/sluice/modules` or
    /// `~/.cache/sluice/modules`); empty: no cache.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: default_plugins_dir(),
            cache_dir: None,
        }
    }
}

/// The HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve health, readiness, metrics, plugins and the admin API.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The address to listen on: loopback on the event bus's port unless
    /// set otherwise (`"0.0.0.0:8083"` to serve every interface; port 0
    /// picks a free one).
    #[serde(default = "default_http_listen")]
    pub listen: String,
    /// The bearer token `POST /admin/...` requires. Without one the admin
    /// API answers only requests from loopback addresses.
    #[serde(default)]
    pub admin_token: Option<Secret>,
    /// How long a client may take to send a request's headers, and how long
    /// a kept-alive connection may stay idle before its next request, in
    /// seconds, 0.1 to 300: a slow or silent client is cut off after it.
    #[serde(default = "default_http_header_timeout_seconds")]
    pub header_timeout_seconds: f64,
    /// Most connections served at once, 1 to 10000; one more is answered
    /// `503` and closed, so slow clients cannot use up the process's files.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
}

impl HttpConfig {
    /// [`HttpConfig::header_timeout_seconds`] as a duration.
    pub fn header_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.header_timeout_seconds).unwrap_or(Duration::from_secs(10))
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: default_http_listen(),
            admin_token: None,
            header_timeout_seconds: default_http_header_timeout_seconds(),
            max_connections: default_http_max_connections(),
        }
    }
}

/// How the daemon logs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `"human"` (default) or `"json"`; `--log-format` overrides it.
    #[serde(default, deserialize_with = "deserialize_log_format")]
    pub format: LogFormat,
}

/// Where message spans are exported.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The URL of an OpenTelemetry collector's OTLP/HTTP traces resource,
    /// such as `"http://127.0.0.1:4318/v1/traces"`: each message's span is
    /// exported there (protobuf, in batches). Unset (the default): nothing
    /// is exported, and only inputs that carry a `traceparent` header pass
    /// a trace context on to their outputs and dead letters.
    pub otlp_endpoint: Option<String>,
}

/// How messages are scheduled onto handlers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    /// How many handler calls may run at once, across all partitions, 1 to
    /// 1024. Each partition is handled in order by one call at a time.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Messages buffered per partition, 1 to 100000; a partition whose buffer
    /// is full is paused until its handler catches up.
    #[serde(default = "default_partition_queue")]
    pub partition_queue: usize,
    /// Most messages of one partition handed to a worker in one go, 1 to 10000.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// On shutdown, how long in-flight messages may take to finish, in
    /// seconds, 0 to 300; it must be shorter than the session timeout.
    #[serde(default = "default_drain_timeout_seconds")]
    pub drain_timeout_seconds: f64,
    /// How often stored offsets are committed when `kafka.enable_auto_commit`
    /// is false (and librdkafka's commit interval when it is true), in
    /// seconds, 0.1 to 3600.
    #[serde(default = "default_commit_interval_seconds")]
    pub commit_interval_seconds: f64,
    /// `reused` (one instance per worker, replaced after any failure) or
    /// `fresh` (a new instance for every message).
    #[serde(default, deserialize_with = "deserialize_isolation")]
    pub isolation: Isolation,
    /// The largest memory limit any route may have, in MiB, 1 to 4096: it
    /// sizes the instance pool's memory slots.
    #[serde(default = "default_max_memory_mb")]
    pub max_memory_mb: u64,
    /// Whether every output carries a `correlation_id` header (the input's,
    /// or a new UUID). Off, outputs carry only the headers the handler
    /// returns. Dead letters always carry it.
    #[serde(default = "default_output_correlation_id")]
    pub output_correlation_id: bool,
    /// How long, in seconds, a partition's lag may stay above zero without
    /// moving, while it is neither paused, held nor stopped, before health
    /// reports it stalled: 10 to 86400, or 0 to never report it.
    #[serde(default = "default_stall_timeout_seconds")]
    pub stall_timeout_seconds: f64,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig {
            concurrency: default_concurrency(),
            partition_queue: default_partition_queue(),
            batch_size: default_batch_size(),
            drain_timeout_seconds: default_drain_timeout_seconds(),
            commit_interval_seconds: default_commit_interval_seconds(),
            isolation: Isolation::default(),
            max_memory_mb: default_max_memory_mb(),
            output_correlation_id: default_output_correlation_id(),
            stall_timeout_seconds: default_stall_timeout_seconds(),
        }
    }
}

/// One topic and the module that handles it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The topic to consume.
    pub topic: String,
    /// The module (file stem in the plugins directory) that handles it.
    pub module: String,
    /// The only topics the handler may emit to; an output to any other topic
    /// fails the message with `InvalidOutput`.
    #[serde(default)]
    pub output_topics: Vec<String>,
    /// How long one handler call may take, in milliseconds, 1 to 300000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The handler's memory limit in MiB, 1 to `processing.max_memory_mb`.
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: u64,
    /// The most outputs the handler may return for one message, 1 to
    /// 100000; more fails the message with `InvalidOutput`.
    #[serde(default = "default_max_outputs")]
    pub max_outputs: u32,
    /// The most bytes one output may hold (key, value, header keys and
    /// values), 1 to the producer's `message.max.bytes` (librdkafka's
    /// default, 1000000, unless `kafka.librdkafka` sets it); more fails the
    /// message with `InvalidOutput`.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
    /// The most headers one output may carry, 0 to 10000; more fails the
    /// message with `InvalidOutput`.
    #[serde(default = "default_max_output_headers")]
    pub max_output_headers: u32,
    /// The most bytes all the outputs of one message may hold together
    /// (topics included), 1 to 1073741824 (1 GiB); more fails the message
    /// with `InvalidOutput`.
    #[serde(default = "default_max_returned_bytes")]
    pub max_returned_bytes: u64,
    /// Dead-letter topic for this route, overriding `kafka.dead_letter_topic`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Retries for this route, overriding `kafka.max_retry_attempts`, 0 to 10.
    #[serde(default)]
    pub max_retry_attempts: Option<u32>,
    /// Which failures are retried: any of `"retryable"` (the handler's
    /// retryable error), `"timeout"`, `"trap"`, `"memory_limit"`,
    /// `"invalid_output"`, `"permanent"`. Default `["retryable", "timeout"]`;
    /// the rest go to the dead-letter topic at once.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<String>,
    /// Consecutive messages that fail with retryable errors or timeouts
    /// (after their retries) before this route's handler breaker opens and
    /// its partitions hold their failing message instead of dead-lettering
    /// everything behind it, 0 to 100 (0: never opens). Default
    /// `kafka.circuit_breaker_threshold`.
    #[serde(default)]
    pub circuit_breaker_threshold: Option<u32>,
    /// Seconds the open handler breaker waits before re-running the held
    /// message as a probe, 1.0 to 3600.0. Default
    /// `kafka.circuit_breaker_reset_timeout`.
    #[serde(default)]
    pub circuit_breaker_reset_timeout: Option<f64>,
    /// What happens to a record the Kafka client cannot decode (a corrupt
    /// batch, a record over the fetch limit): `"stop"` (the default) holds
    /// the partition on it and names it in health; `"dead-letter"` writes a
    /// dead letter with its coordinates and the client's error, and moves
    /// on.
    #[serde(default, deserialize_with = "deserialize_on_undecodable")]
    pub on_undecodable: OnUndecodable,
    /// Strings handed to the guest's `config(key)`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// What a route does with a record the Kafka client cannot decode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnUndecodable {
    /// Hold the partition on it: nothing behind it is handled until an
    /// operator acts. Nothing is skipped that nobody chose to skip.
    #[default]
    Stop,
    /// Dead-letter it (coordinates and error, no payload) and go on.
    DeadLetter,
}

impl OnUndecodable {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            OnUndecodable::Stop => "stop",
            OnUndecodable::DeadLetter => "dead-letter",
        }
    }
}

fn default_bootstrap_servers() -> String {
    // The event bus's KAFKA_BOOTSTRAP_SERVERS default.
    "localhost:9092".to_owned()
}
fn default_environment() -> String {
    // The event bus's KAFKA_ENVIRONMENT default.
    "local".to_owned()
}
fn default_group() -> String {
    // The event bus's KAFKA_GROUP default.
    "default".to_owned()
}
fn default_timeout_seconds() -> u64 {
    // The event bus's KAFKA_TIMEOUT_SECONDS default.
    30
}
fn default_max_retry_attempts() -> u32 {
    // The event bus's KAFKA_MAX_RETRY_ATTEMPTS default.
    3
}
fn default_retry_backoff_base() -> f64 {
    // The event bus's KAFKA_RETRY_BACKOFF_BASE default.
    1.0
}
fn default_retry_backoff_max() -> f64 {
    // Five minutes: long enough for a dependency to restart, short enough
    // that a held partition is retried within an operator's attention span.
    300.0
}
fn default_retry_on() -> Vec<String> {
    vec![
        RetryOn::Retryable.as_str().to_owned(),
        RetryOn::Timeout.as_str().to_owned(),
    ]
}
fn default_circuit_breaker_threshold() -> u32 {
    // The event bus's KAFKA_CIRCUIT_BREAKER_THRESHOLD default.
    5
}
fn default_circuit_breaker_reset_timeout() -> f64 {
    // The event bus's KAFKA_CIRCUIT_BREAKER_RESET_TIMEOUT default.
    30.0
}
fn default_consumer_sleep_interval() -> f64 {
    // The event bus's KAFKA_CONSUMER_SLEEP_INTERVAL default.
    0.1
}
fn default_true() -> bool {
    // KAFKA_ENABLE_AUTO_COMMIT and KAFKA_ENABLE_IDEMPOTENCE default to true.
    true
}
fn default_http_listen() -> String {
    // The event bus's health port, on loopback only.
    "127.0.0.1:8083".to_owned()
}
fn default_http_header_timeout_seconds() -> f64 {
    // Ample for any client on a network that works, short enough that a
    // client that stalls gives its connection back soon.
    10.0
}
fn default_http_max_connections() -> usize {
    // Probes and scrapers open a few connections at a time; far more than
    // they need, far fewer than the process's file limit.
    64
}
fn default_plugins_dir() -> PathBuf {
    PathBuf::from("plugins")
}
fn default_concurrency() -> usize {
    // One call per core keeps every core busy without oversubscribing.
    std::thread::available_parallelism().map_or(2, usize::from)
}
fn default_partition_queue() -> usize {
    // Enough to keep a handler busy between fetches (pausing and resuming a
    // partition costs a fetch), small enough to bound memory; see the
    // README's throughput figures.
    5000
}
fn default_batch_size() -> usize {
    // Amortises the hand-off to a handler thread and, with a module that
    // exports handle-batch, the call itself; docs/performance.md has the
    // figures behind it.
    256
}
fn default_output_correlation_id() -> bool {
    true
}
fn default_stall_timeout_seconds() -> f64 {
    // Five minutes: far beyond a handler call's timeout and its retries'
    // backoff, so a partition reported stalled is not merely slow.
    300.0
}
fn default_drain_timeout_seconds() -> f64 {
    // Well inside librdkafka's default 45 s session timeout.
    10.0
}
fn default_commit_interval_seconds() -> f64 {
    // librdkafka's default auto.commit.interval.ms.
    5.0
}
fn default_max_memory_mb() -> u64 {
    256
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_memory_limit_mb() -> u64 {
    64
}
fn default_max_outputs() -> u32 {
    // The runtime's default bound (`OutputLimits::default`).
    OutputLimits::default().max_outputs
}
fn default_max_output_bytes() -> u64 {
    // librdkafka's default `message.max.bytes`, through the runtime's
    // default bound: a larger record would be refused by the producer.
    OutputLimits::default().max_output_bytes as u64
}
fn default_max_output_headers() -> u32 {
    OutputLimits::default().max_output_headers
}
fn default_max_returned_bytes() -> u64 {
    OutputLimits::default().max_returned_bytes as u64
}

/// The strings a setting accepts and the value each stands for. Deserialising
/// through it names every allowed string in any error, also for a value of
/// the wrong type (a derived enum would call `acks = 1` a "unit variant").
struct Choices<T: 'static> {
    names: &'static [(&'static str, T)],
    /// The allowed strings, as error messages list them.
    expected: &'static str,
}

impl<T: Copy> Choices<T> {
    fn find(&self, name: &str) -> Option<T> {
        self.names.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }
}

impl<'de, T: Copy> serde::de::Visitor<'de> for &Choices<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (a string)", self.expected)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        self.find(v)
            .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
    }
}

const ACKS: Choices<Acks> = Choices {
    names: &[("all", Acks::All), ("1", Acks::Leader), ("0", Acks::None)],
    expected: r#"one of "all", "1", "0""#,
};

const OFFSET_RESETS: Choices<OffsetReset> = Choices {
    names: &[
        ("earliest", OffsetReset::Earliest),
        ("latest", OffsetReset::Latest),
    ],
    expected: r#"one of "earliest", "latest""#,
};

const ISOLATIONS: Choices<Isolation> = Choices {
    names: &[("reused", Isolation::Reused), ("fresh", Isolation::Fresh)],
    expected: r#"one of "reused", "fresh""#,
};

impl<'de> Deserialize<'de> for Acks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(&ACKS)
    }
}

impl<'de> Deserialize<'de> for OffsetReset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(&OFFSET_RESETS)
    }
}

const LOG_FORMATS: Choices<LogFormat> = Choices {
    names: &[("human", LogFormat::Human), ("json", LogFormat::Json)],
    expected: r#"one of "human", "json""#,
};

fn deserialize_log_format<'de, D: serde::Deserializer<'de>>(d: D) -> Result<LogFormat, D::Error> {
    d.deserialize_str(&LOG_FORMATS)
}

const ON_UNDECODABLE: Choices<OnUndecodable> = Choices {
    names: &[
        ("stop", OnUndecodable::Stop),
        ("dead-letter", OnUndecodable::DeadLetter),
    ],
    expected: r#"one of "stop", "dead-letter""#,
};

fn deserialize_on_undecodable<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<OnUndecodable, D::Error> {
    d.deserialize_str(&ON_UNDECODABLE)
}

fn deserialize_isolation<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Isolation, D::Error> {
    d.deserialize_str(&ISOLATIONS)
}

impl Config {
    /// Reads, overrides from the environment and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, &|var| std::env::var(var).ok())
    }

    /// Like [`Config::load`], with `env` answering the `KAFKA_*` lookups.
    pub fn load_with(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let mut config = Self::parse(&text, &base_dir, env)?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Parses and validates config text; `env` answers `KAFKA_*` lookups
    /// (and `HOSTNAME`, for `kafka.group_instance_id`) and `base_dir`
    /// anchors relative paths.
    pub fn parse(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let parse_error = |e: toml::de::Error| {
            ConfigError::Parse(secret::redact_parse_error(e.to_string().trim().to_owned()))
        };
        let mut table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        let overridden = env::apply_overrides(&mut table, env)?;
        let mut config: Config = toml::Value::Table(table).try_into().map_err(parse_error)?;
        config.base_dir = base_dir.to_owned();
        if let Some(template) = config.kafka.group_instance_id.take() {
            let id = membership::resolve_instance_id(&template, env)
                .and_then(|id| membership::check_instance_id(&id, &template).map(|()| id))
                .map_err(|e| env::name_variable(e, &overridden))?;
            config.kafka.group_instance_id = Some(id);
        }
        validate::validate(&config).map_err(|e| env::name_variable(e, &overridden))?;
        Ok(config)
    }

    /// The plugins directory, resolved against the config file's directory.
    pub fn plugins_dir(&self) -> PathBuf {
        self.base_dir.join(&self.plugins.dir)
    }

    /// The compile cache directory, resolved against the config file's
    /// directory; `None` when the cache is off (or no default location is
    /// known).
    pub fn compile_cache_dir(&self) -> Option<PathBuf> {
        match &self.plugins.cache_dir {
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(self.base_dir.join(dir)),
            None => {
                let absolute = |name| {
                    std::env::var_os(name)
                        .map(PathBuf::from)
                        .filter(|p| p.is_absolute())
                };
                absolute("XDG_CACHE_HOME")
                    .or_else(|| absolute("HOME").map(|home| home.join(".cache")))
                    .map(|cache| cache.join("sluice").join("modules"))
            }
        }
    }

    /// The consumer group id: `{environment}.{group}`.
    pub fn group_id(&self) -> String {
        format!("{}.{}", self.kafka.environment, self.kafka.group)
    }

    /// Whether the in-process development broker is asked for.
    pub fn is_embedded(&self) -> bool {
        self.kafka.bootstrap_servers == EMBEDDED_BROKER
    }
}

impl KafkaConfig {
    /// The largest record the producer takes: `message.max.bytes` from the
    /// pass-through table, or librdkafka's default (1,000,000).
    pub fn max_record_bytes(&self) -> u64 {
        const DEFAULT: u64 = 1_000_000;
        match self.librdkafka.get("message.max.bytes") {
            Some(toml::Value::Integer(n)) => u64::try_from(*n).unwrap_or(DEFAULT),
            Some(toml::Value::String(n)) => n.trim().parse().unwrap_or(DEFAULT),
            _ => DEFAULT,
        }
    }

    /// The broker operation timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }

    /// The consumer's session timeout: librdkafka's `session.timeout.ms`
    /// (45 s unless `[kafka.librdkafka]` sets it).
    pub fn session_timeout(&self) -> Duration {
        Duration::from_secs_f64(validate::session_timeout_seconds(&self.librdkafka))
    }

    /// The retry backoff.
    pub fn retry_backoff(&self) -> crate::policy::Backoff {
        crate::policy::Backoff {
            base: Duration::from_secs_f64(self.retry_backoff_base),
            max: Duration::from_secs_f64(self.retry_backoff_max),
        }
    }

    /// How long an open circuit waits before a probe.
    pub fn circuit_breaker_reset_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.circuit_breaker_reset_timeout)
    }

    /// The longest wait for new messages in one fetch.
    pub fn consumer_sleep_interval(&self) -> Duration {
        Duration::from_secs_f64(self.consumer_sleep_interval)
    }
}

impl ProcessingConfig {
    /// How long in-flight messages may take to finish on shutdown.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout_seconds)
    }

    /// How often stored offsets are committed.
    pub fn commit_interval(&self) -> Duration {
        Duration::from_secs_f64(self.commit_interval_seconds)
    }

    /// How long a partition's lag may stand still before it is reported
    /// stalled; `None` never reports it.
    pub fn stall_timeout(&self) -> Option<Duration> {
        (self.stall_timeout_seconds > 0.0)
            .then(|| Duration::from_secs_f64(self.stall_timeout_seconds))
    }
}

impl RouteConfig {
    /// How long one handler call may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The handler's memory limit in bytes.
    pub fn memory_limit_bytes(&self) -> usize {
        usize::try_from(self.memory_limit_mb << 20).unwrap_or(usize::MAX)
    }

    /// The bounds on what the handler returns for one message.
    pub fn output_limits(&self) -> OutputLimits {
        let bytes = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        OutputLimits {
            max_outputs: self.max_outputs,
            max_output_bytes: bytes(self.max_output_bytes),
            max_output_headers: self.max_output_headers,
            max_returned_bytes: bytes(self.max_returned_bytes),
        }
    }

    /// The dead-letter topic for this route, if any.
    pub fn dead_letter_topic<'a>(&'a self, kafka: &'a KafkaConfig) -> Option<&'a str> {
        self.dead_letter_topic
            .as_deref()
            .or(kafka.dead_letter_topic.as_deref())
    }

    /// How many retries this route allows.
    pub fn max_retry_attempts(&self, kafka: &KafkaConfig) -> u32 {
        self.max_retry_attempts.unwrap_or(kafka.max_retry_attempts)
    }

    /// The failures this route retries.
    pub fn retry_on(&self) -> Vec<RetryOn> {
        self.retry_on
            .iter()
            .filter_map(|name| RetryOn::parse(name))
            .collect()
    }

    /// The handler breaker's threshold (0: never opens).
    pub fn circuit_breaker_threshold(&self, kafka: &KafkaConfig) -> u32 {
        self.circuit_breaker_threshold
            .unwrap_or(kafka.circuit_breaker_threshold)
    }

    /// How long the open handler breaker waits before a probe.
    pub fn circuit_breaker_reset_timeout(&self, kafka: &KafkaConfig) -> Duration {
        Duration::from_secs_f64(
            self.circuit_breaker_reset_timeout
                .unwrap_or(kafka.circuit_breaker_reset_timeout),
        )
    }
}

pub use crate::policy::FailureKind as RetryOn;
