//! The `[kafka]` table: the cluster, the consumer group, delivery, retries
//! and the broker breaker, with their defaults (the event bus's, under the
//! same `KAFKA_*` names) and the settings derived from them.
//!
//! Owns the fields and their derived values only: TLS, SASL and the output
//! codec are in `security`, static membership and the assignment strategy
//! in `membership`, and the checks in `validate`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{
    AssignmentStrategy, Choices, Compression, SaslConfig, SecurityProtocol, TlsConfig, validate,
};

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

pub(super) const ACKS: Choices<Acks> = Choices {
    names: &[("all", Acks::All), ("1", Acks::Leader), ("0", Acks::None)],
    expected: r#"one of "all", "1", "0""#,
};

pub(super) const OFFSET_RESETS: Choices<OffsetReset> = Choices {
    names: &[
        ("earliest", OffsetReset::Earliest),
        ("latest", OffsetReset::Latest),
    ],
    expected: r#"one of "earliest", "latest""#,
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
