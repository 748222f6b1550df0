//! Range and cross-field checks, each error quoting the field, the value and
//! what is allowed.
//!
//! Owns the order of the checks, the helpers every check uses, and the
//! checks of the sections: `[kafka]` and its librdkafka pass-through,
//! `[processing]`, `[telemetry]` and `[http]`. The routes' checks are in
//! `route_checks`, and those of TLS and SASL in `security_checks`.

use std::collections::BTreeMap;
use std::fmt::{Debug, Display};
use std::ops::RangeInclusive;

use super::route_checks::check_routes;
use super::{
    Acks, Config, ConfigError, HttpConfig, KafkaConfig, MAX_MEMORY_MB, ProcessingConfig,
    TelemetryConfig,
};

/// librdkafka properties Sluice sets itself; overriding them would break
/// at-least-once delivery or the group id contract.
const MANAGED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.bootstrap_servers"),
    ("group.id", "set kafka.environment and kafka.group"),
    (
        "enable.auto.offset.store",
        "Sluice stores offsets only after outputs are acknowledged",
    ),
    ("enable.auto.commit", "set kafka.enable_auto_commit"),
    ("auto.offset.reset", "set kafka.auto_offset_reset"),
    ("acks", "set kafka.acks"),
    ("enable.idempotence", "set kafka.enable_idempotence"),
    ("group.instance.id", "set kafka.group_instance_id"),
    (
        "partition.assignment.strategy",
        "set kafka.partition_assignment_strategy",
    ),
    (
        "security.protocol",
        "add [kafka.tls] and/or [kafka.sasl], or set kafka.security_protocol",
    ),
    ("ssl.ca.location", "set kafka.tls.ca_file"),
    (
        "ssl.ca.pem",
        "set kafka.tls.ca_file to a file that holds it",
    ),
    ("ssl.certificate.location", "set kafka.tls.cert_file"),
    (
        "ssl.certificate.pem",
        "set kafka.tls.cert_file to a file that holds it",
    ),
    ("ssl.key.location", "set kafka.tls.key_file"),
    (
        "ssl.key.pem",
        "set kafka.tls.key_file to a file that holds it",
    ),
    (
        "ssl.key.password",
        "set kafka.tls.key_password_file (or key_password)",
    ),
    (
        "ssl.keystore.location",
        "convert the PKCS#12 keystore to PEM files and set kafka.tls.cert_file and key_file",
    ),
    (
        "ssl.keystore.password",
        "convert the PKCS#12 keystore to PEM files and set kafka.tls.key_password_file",
    ),
    (
        "ssl.endpoint.identification.algorithm",
        "set kafka.tls.verify_hostname",
    ),
    ("compression.type", "set kafka.compression"),
    ("compression.codec", "set kafka.compression"),
];

/// What to set instead of a `sasl.*` property: every one is refused, since
/// a SASL setting may hold a credential.
fn sasl_field(property: &str) -> Option<&'static str> {
    let field = match property.strip_prefix("sasl.")? {
        "mechanism" | "mechanisms" => "set kafka.sasl.mechanism",
        "username" => "set kafka.sasl.username",
        "password" => "set kafka.sasl.password_file (or password)",
        "oauthbearer.token.endpoint.url" => "set kafka.sasl.token_endpoint",
        "oauthbearer.client.id" => "set kafka.sasl.client_id",
        "oauthbearer.client.secret" => "set kafka.sasl.client_secret_file (or client_secret)",
        "oauthbearer.scope" => "set kafka.sasl.scope",
        "oauthbearer.extensions" => "set kafka.sasl.extensions",
        "oauthbearer.method" => "set kafka.sasl.mechanism = \"OAUTHBEARER\" and token_endpoint",
        _ => "use [kafka.sasl]; a SASL setting it has no field for is not supported",
    };
    Some(field)
}

pub(super) fn invalid(
    field: impl Into<String>,
    value: impl Display,
    allowed: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

/// Checks an inclusive range. Numbers are quoted with `Debug`, which writes
/// a float as TOML does (`3600.0`, not `3600`).
pub(super) fn in_range<T: PartialOrd + Debug>(
    field: &str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(invalid(
        field,
        format!("{value:?}"),
        format!("from {:?} to {:?}", range.start(), range.end()),
    ))
}

/// Kafka's rule for topic names.
pub(super) fn check_topic(field: &str, topic: &str) -> Result<(), ConfigError> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty()
        || topic.len() > 249
        || !topic.chars().all(legal)
        || topic == "."
        || topic == ".."
    {
        return Err(invalid(
            field,
            format!("{topic:?}"),
            "a Kafka topic name: 1 to 249 characters from a-z A-Z 0-9 . _ -",
        ));
    }
    Ok(())
}

fn check_text(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(invalid(field, format!("{value:?}"), "a non-empty string"));
    }
    Ok(())
}

/// Checks a parsed config section by section: `[kafka]`, `[processing]`,
/// `[telemetry]`, `[http]`, then every route. The first problem found is
/// the error.
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    check_kafka(&config.kafka)?;
    check_processing(&config.processing, &config.kafka)?;
    check_telemetry(&config.telemetry)?;
    check_http(&config.http)?;
    check_routes(config)
}

/// `[kafka]`: the cluster and group names, timeouts, retries, the broker
/// breaker, the dead-letter topic, acknowledgements, TLS and SASL, and the
/// librdkafka pass-through.
fn check_kafka(k: &KafkaConfig) -> Result<(), ConfigError> {
    check_text("kafka.bootstrap_servers", &k.bootstrap_servers)?;
    check_text("kafka.environment", &k.environment)?;
    check_text("kafka.group", &k.group)?;
    in_range("kafka.timeout_seconds", k.timeout_seconds, 1..=300)?;
    in_range("kafka.max_retry_attempts", k.max_retry_attempts, 0..=10)?;
    in_range("kafka.retry_backoff_base", k.retry_backoff_base, 0.1..=60.0)?;
    in_range("kafka.retry_backoff_max", k.retry_backoff_max, 0.1..=3600.0)?;
    if k.retry_backoff_max < k.retry_backoff_base {
        return Err(invalid(
            "kafka.retry_backoff_max",
            format!("{:?}", k.retry_backoff_max),
            format!(
                "a value of at least kafka.retry_backoff_base ({:?}): the cap on the retry delay \
                 cannot be below its base",
                k.retry_backoff_base
            ),
        ));
    }
    in_range(
        "kafka.circuit_breaker_threshold",
        k.circuit_breaker_threshold,
        1..=100,
    )?;
    in_range(
        "kafka.circuit_breaker_reset_timeout",
        k.circuit_breaker_reset_timeout,
        1.0..=3600.0,
    )?;
    in_range(
        "kafka.consumer_sleep_interval",
        k.consumer_sleep_interval,
        0.01..=10.0,
    )?;
    if let Some(topic) = &k.dead_letter_topic {
        check_topic("kafka.dead_letter_topic", topic)?;
    }
    if k.enable_idempotence && k.acks != Acks::All {
        return Err(invalid(
            "kafka.acks",
            format!("{:?}", k.acks.as_str()),
            "\"all\" while kafka.enable_idempotence = true (an idempotent producer needs every \
             in-sync replica to acknowledge); set acks = \"all\" or enable_idempotence = false",
        ));
    }
    super::security_checks::validate(k)?;
    for (key, value) in &k.librdkafka {
        check_librdkafka_property(key, value)?;
    }
    Ok(())
}

/// One `kafka.librdkafka` property: not one Sluice manages, no SASL
/// setting, no transactions, statistics kept on, CRC checks kept off, and a
/// plain value.
fn check_librdkafka_property(key: &str, value: &toml::Value) -> Result<(), ConfigError> {
    if let Some((_, instead)) = MANAGED_PROPERTIES.iter().find(|(p, _)| *p == key) {
        return Err(refused_property(
            key,
            value,
            format!("nothing: Sluice manages this property ({instead})"),
        ));
    }
    if let Some(instead) = sasl_field(key) {
        return Err(refused_property(
            key,
            value,
            format!("nothing: Sluice manages this property ({instead})"),
        ));
    }
    if key == "transactional.id" {
        return Err(refused_property(
            key,
            value,
            "nothing: Sluice's producer is not transactional (outputs are made safe by the \
             idempotent producer and by committing an offset only after its outputs are \
             acknowledged); remove the property",
        ));
    }
    if key == "statistics.interval.ms" && !statistics_on(value) {
        return Err(refused_property(
            key,
            value,
            "from 100 to 60000 (5000 unless set): the consumer lag, stalled partitions and \
             records the client cannot decode in health all come from librdkafka's \
             statistics, so they cannot be turned off",
        ));
    }
    if key == "check.crcs" && !is_false(value) {
        return Err(refused_property(
            key,
            value,
            "false (the default): with CRC checks on, librdkafka reports a batch whose \
             checksum is wrong and goes on past it, so its records would be lost without a \
             dead letter; remove the property (a record the client cannot read stops its \
             partition, or is dead-lettered with a route's on_undecodable = \"dead-letter\")",
        ));
    }
    if matches!(value, toml::Value::Table(_) | toml::Value::Array(_)) {
        return Err(refused_property(key, value, "a string, number or boolean"));
    }
    Ok(())
}

/// The error for a refused `kafka.librdkafka` property, its value hidden
/// when the property may hold a credential.
fn refused_property(key: &str, value: &toml::Value, allowed: impl Into<String>) -> ConfigError {
    let shown = match super::secret::is_sensitive_property(key) {
        true => super::Secret::REDACTED.to_owned(),
        false => value.to_string(),
    };
    invalid(format!("kafka.librdkafka.{key:?}"), shown, allowed)
}

/// `[processing]`: concurrency, queues, batches, commits, the stall
/// timeout, memory, and a drain shorter than the consumer session timeout
/// (which `kafka.librdkafka` may set).
fn check_processing(p: &ProcessingConfig, k: &KafkaConfig) -> Result<(), ConfigError> {
    in_range("processing.concurrency", p.concurrency, 1..=1024)?;
    in_range("processing.partition_queue", p.partition_queue, 1..=100_000)?;
    in_range("processing.batch_size", p.batch_size, 1..=10_000)?;
    in_range(
        "processing.commit_interval_seconds",
        p.commit_interval_seconds,
        0.1..=3600.0,
    )?;
    let stall = p.stall_timeout_seconds;
    if stall != 0.0 && !(10.0..=86_400.0).contains(&stall) {
        return Err(invalid(
            "processing.stall_timeout_seconds",
            format!("{stall:?}"),
            "from 10.0 to 86400.0, or 0 to never report a partition stalled",
        ));
    }
    in_range(
        "processing.max_memory_mb",
        p.max_memory_mb,
        1..=MAX_MEMORY_MB,
    )?;
    let session_timeout = session_timeout_seconds(&k.librdkafka);
    if !(0.0..session_timeout).contains(&p.drain_timeout_seconds) {
        return Err(invalid(
            "processing.drain_timeout_seconds",
            format!("{:?}", p.drain_timeout_seconds),
            format!(
                "from 0 to less than the consumer session timeout ({session_timeout} s), so \
                 the group does not evict this member while it drains"
            ),
        ));
    }
    Ok(())
}

/// `[telemetry]`: an OTLP endpoint, when set, is a plain http:// URL with a
/// host.
fn check_telemetry(telemetry: &TelemetryConfig) -> Result<(), ConfigError> {
    let Some(endpoint) = &telemetry.otlp_endpoint else {
        return Ok(());
    };
    let rest = endpoint.strip_prefix("http://").unwrap_or("");
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty()
        || endpoint
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            "telemetry.otlp_endpoint",
            format!("{endpoint:?}"),
            "an http:// URL of a collector's OTLP/HTTP traces resource, such as \
             \"http://127.0.0.1:4318/v1/traces\" (https is not supported: run the \
             collector beside the daemon)",
        ));
    }
    Ok(())
}

/// `[http]`: the listen address (when the endpoint is on), its timeouts and
/// connection limit, and an admin token long enough to be one.
fn check_http(http: &HttpConfig) -> Result<(), ConfigError> {
    if http.enabled && http.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(invalid(
            "http.listen",
            format!("{:?}", http.listen),
            "an IP address and port such as \"127.0.0.1:8083\" or \"0.0.0.0:8083\"",
        ));
    }
    in_range(
        "http.header_timeout_seconds",
        http.header_timeout_seconds,
        0.1..=300.0,
    )?;
    in_range("http.max_connections", http.max_connections, 1..=10_000)?;
    if let Some(token) = &http.admin_token
        && token.expose().trim().len() < 16
    {
        return Err(invalid(
            "http.admin_token",
            "(hidden)",
            "a token of at least 16 characters, or no admin_token (admin API on loopback only)",
        ));
    }
    Ok(())
}

/// Whether a librdkafka boolean property's value is false, as librdkafka
/// reads it (`false`, `f` or `0`, in any case).
fn is_false(value: &toml::Value) -> bool {
    match value {
        toml::Value::Boolean(b) => !b,
        toml::Value::Integer(n) => *n == 0,
        toml::Value::String(s) => ["false", "f", "0"]
            .iter()
            .any(|f| s.trim().eq_ignore_ascii_case(f)),
        _ => false,
    }
}

/// Whether a `statistics.interval.ms` value keeps the statistics coming
/// often enough for health: 100 ms to a minute.
fn statistics_on(value: &toml::Value) -> bool {
    let millis = match value {
        toml::Value::Integer(ms) => *ms,
        toml::Value::String(ms) => ms.trim().parse().unwrap_or(-1),
        _ => -1,
    };
    (100..=60_000).contains(&millis)
}

/// librdkafka's `session.timeout.ms` in seconds (45 s unless overridden).
pub(super) fn session_timeout_seconds(properties: &BTreeMap<String, toml::Value>) -> f64 {
    let millis = match properties.get("session.timeout.ms") {
        Some(toml::Value::Integer(ms)) => *ms as f64,
        Some(toml::Value::String(ms)) => ms.parse().unwrap_or(45_000.0),
        _ => 45_000.0,
    };
    millis / 1000.0
}
