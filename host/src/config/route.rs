//! One `[[routes]]` table: a topic, the module that handles it, the bounds
//! on the handler's calls and outputs, and the route's own dead-letter,
//! retry and breaker settings where they override `[kafka]`'s.
//!
//! Owns the fields, their defaults and the values derived from them; the
//! checks are in `route_checks`, and a route at run time is
//! [`crate::route`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{Choices, KafkaConfig, RetryOn};
use crate::wasm::OutputLimits;

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

fn default_retry_on() -> Vec<String> {
    vec![
        RetryOn::Retryable.as_str().to_owned(),
        RetryOn::Timeout.as_str().to_owned(),
    ]
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
