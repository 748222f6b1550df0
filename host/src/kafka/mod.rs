//! Kafka clients: the settings of every client Sluice makes (the daemon's
//! consumer and producer, the tools' clients), derived from the
//! configuration with its TLS and SASL, and the embedded development broker.
//!
//! Owns librdkafka configuration only; what is consumed and produced, and
//! when offsets are stored, belongs to the pipeline.

pub mod connect;
pub mod credentials;
mod embedded;
pub mod headers;
pub mod security;

use rdkafka::ClientConfig;

use crate::config::{Config, ConfigError, OffsetReset};

pub use connect::ConnectFailure;
pub use embedded::EmbeddedBroker;

/// Initialises the OpenSSL the Kafka clients use, without the handler
/// OpenSSL otherwise registers to free its state when the process exits.
/// That handler runs while librdkafka's threads may still be in a TLS call
/// (a client dropped on a runtime thread as the process ends), and such a
/// thread can then touch freed memory: the process would end on a signal
/// instead of its exit status. Idempotent; called before any client is
/// made.
pub fn init_tls() {
    openssl_sys::init();
}

/// Properties every client shares: the brokers, TLS and SASL (with the
/// secret files read now), and the pass-through table. Fails when a file
/// the settings name cannot be read.
fn common(config: &Config, bootstrap: &str) -> Result<ClientConfig, ConfigError> {
    init_tls();
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c.set("client.id", format!("sluice-{}", config.group_id()));
    security::check_supported(config)?;
    for (key, value) in security::properties(config)? {
        c.set(key, value);
    }
    for (key, value) in &config.kafka.librdkafka {
        let value = match value {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        c.set(key, value);
    }
    Ok(c)
}

/// The consumer: offsets are stored by Sluice only once a message's outputs
/// and dead-letter records are acknowledged, never by librdkafka on delivery.
pub fn consumer_config(config: &Config, bootstrap: &str) -> Result<ClientConfig, ConfigError> {
    let k = &config.kafka;
    let mut c = common(config, bootstrap)?;
    c.set("group.id", config.group_id());
    c.set("enable.auto.offset.store", "false");
    c.set("enable.auto.commit", k.enable_auto_commit.to_string());
    let interval_ms = (config.processing.commit_interval_seconds * 1000.0).round() as u64;
    c.set_default("auto.commit.interval.ms", interval_ms.max(1).to_string());
    c.set(
        "auto.offset.reset",
        match k.auto_offset_reset {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        },
    );
    if let Some(id) = &k.group_instance_id {
        c.set("group.instance.id", id);
    }
    if let Some(strategy) = k.partition_assignment_strategy {
        c.set("partition.assignment.strategy", strategy.as_str());
    }
    let fetch_wait_ms = (k.consumer_sleep_interval * 1000.0).round() as u64;
    c.set_default("fetch.wait.max.ms", fetch_wait_ms.max(1).to_string());
    // Consumer lag and broker reachability for health and metrics.
    c.set_default("statistics.interval.ms", "5000");
    // Topics that do not exist yet are reported, not fatal: they may be created later.
    c.set_default("allow.auto.create.topics", "false");
    Ok(c)
}

/// A client of `group` that reads or commits its offsets without ever
/// joining it (the dead-letter and offsets tools): the consumer's settings
/// without the daemon's static member id, which would make the broker take
/// it for that daemon (and fence one of them).
pub fn group_client_config(
    config: &Config,
    bootstrap: &str,
    group: &str,
) -> Result<ClientConfig, ConfigError> {
    let mut c = consumer_config(config, bootstrap)?;
    c.remove("group.instance.id");
    c.set("group.id", group);
    c.set("enable.auto.commit", "false");
    Ok(c)
}

/// The producer for outputs and dead-letter records (and the replay tool's).
pub fn producer_config(config: &Config, bootstrap: &str) -> Result<ClientConfig, ConfigError> {
    let k = &config.kafka;
    let mut c = common(config, bootstrap)?;
    c.set("acks", k.acks.as_str());
    c.set("enable.idempotence", k.enable_idempotence.to_string());
    c.set("compression.type", k.compression.as_str());
    // A record not acknowledged within the operation timeout has failed.
    c.set_default("message.timeout.ms", (k.timeout_seconds * 1000).to_string());
    c.set_default("linger.ms", "5");
    Ok(c)
}

/// Why the brokers' topics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The settings cannot reach the brokers (a refused login, an untrusted
    /// certificate, the wrong protocol for the listener).
    #[error(transparent)]
    Connect(#[from] ConnectFailure),
    /// No broker answered in time.
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Which of `topics` the brokers do not have, from their metadata. Fails
/// when no broker answers within `timeout`, saying why when the settings
/// are the cause.
pub fn missing_topics(
    config: &Config,
    bootstrap: &str,
    topics: &[&str],
    timeout: std::time::Duration,
) -> Result<Vec<String>, MetadataError> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    // The settings were read once already, when the daemon's clients were
    // configured; a file gone since is reported as a client error.
    let mut c = common(config, bootstrap)
        .map_err(|e| rdkafka::error::KafkaError::ClientCreation(e.to_string()))?;
    // A client of its own that joins no group: it only reads metadata.
    c.set("group.id", format!("{}.topic-check", config.group_id()));
    let watch = connect::Watch::new(&c);
    let client: BaseConsumer<connect::Watch> =
        c.create_with_context(watch).map_err(security::redact)?;
    let metadata = match client.fetch_metadata(None, timeout) {
        Ok(metadata) => metadata,
        Err(e) => {
            // librdkafka's errors and logs reach the context when the
            // client is polled; a poll serves one event and answers
            // nothing for it, so poll for a moment rather than until empty.
            let until = std::time::Instant::now() + std::time::Duration::from_millis(200);
            while client.context().failure().is_none() && std::time::Instant::now() < until {
                let _ = client.poll(std::time::Duration::from_millis(10));
            }
            return Err(match client.context().failure() {
                Some(failure) => MetadataError::Connect(failure),
                None => MetadataError::Kafka(e),
            });
        }
    };
    let present: std::collections::HashSet<&str> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.name())
        .collect();
    Ok(topics
        .iter()
        .filter(|t| !present.contains(**t))
        .map(|t| (*t).to_owned())
        .collect())
}

/// The partitions of `topic` that `client`'s brokers report, in order:
/// none when the topic does not exist. Fails when no broker answers within
/// `timeout`.
pub fn partitions_of<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: std::time::Duration,
) -> rdkafka::error::KafkaResult<Vec<i32>> {
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions.sort_unstable();
    Ok(partitions)
}

trait SetDefault {
    fn set_default(&mut self, key: &str, value: impl Into<String>) -> &mut Self;
}

impl SetDefault for ClientConfig {
    /// Sets `key` unless the pass-through table already did.
    fn set_default(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        if self.get(key).is_none() {
            self.set(key, value);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with one route and `kafka` as the `[kafka]` table's body,
    /// read with `HOSTNAME=sluice-2`.
    fn config(kafka: &str) -> Config {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("plugins")).expect("plugins dir");
        std::fs::write(dir.path().join("plugins/m.wasm"), b"").expect("module file");
        let text = format!("[kafka]\n{kafka}\n[[routes]]\ntopic = \"t\"\nmodule = \"m\"\n");
        let env = |var: &str| (var == "HOSTNAME").then(|| "sluice-2".to_owned());
        Config::parse(&text, dir.path(), &env).expect("a valid config")
    }

    #[test]
    fn static_membership_and_the_strategy_reach_the_consumer_only() {
        let c = config(
            "group_instance_id = \"orders-{hostname}\"\n\
             partition_assignment_strategy = \"cooperative-sticky\"",
        );
        let member = consumer_config(&c, "b:9092").expect("settings");
        assert_eq!(member.get("group.instance.id"), Some("orders-sluice-2"));
        assert_eq!(
            member.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        // The tools' clients must not pass for the daemon's member.
        let tool =
            group_client_config(&c, "b:9092", "local.default.sluice-dlq-replay").expect("settings");
        assert_eq!(tool.get("group.instance.id"), None);
        assert_eq!(
            tool.get("group.id"),
            Some("local.default.sluice-dlq-replay")
        );
        let producer = producer_config(&c, "b:9092").expect("settings");
        assert_eq!(producer.get("group.instance.id"), None);
    }

    #[test]
    fn without_the_settings_librdkafka_keeps_its_defaults() {
        let member = consumer_config(&config(""), "b:9092").expect("settings");
        assert_eq!(member.get("group.instance.id"), None);
        assert_eq!(member.get("partition.assignment.strategy"), None);
    }
}
