//! `KAFKA_*` environment variables: each overrides its `[kafka]` field, as
//! the event bus's variables did.

use super::ConfigError;

/// The type a variable's value must parse as.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Whole,
    Decimal,
    Bool,
}

/// Every variable, the `[kafka]` field it overrides, and its type.
const VARIABLES: &[(&str, &str, Kind)] = &[
    ("KAFKA_BOOTSTRAP_SERVERS", "bootstrap_servers", Kind::Text),
    ("KAFKA_ENVIRONMENT", "environment", Kind::Text),
    ("KAFKA_GROUP", "group", Kind::Text),
    ("KAFKA_TIMEOUT_SECONDS", "timeout_seconds", Kind::Whole),
    ("KAFKA_MAX_RETRY_ATTEMPTS", "max_retry_attempts", Kind::Whole),
    ("KAFKA_RETRY_BACKOFF_BASE", "retry_backoff_base", Kind::Decimal),
    ("KAFKA_CIRCUIT_BREAKER_THRESHOLD", "circuit_breaker_threshold", Kind::Whole),
    ("KAFKA_CIRCUIT_BREAKER_RESET_TIMEOUT", "circuit_breaker_reset_timeout", Kind::Decimal),
    ("KAFKA_CONSUMER_SLEEP_INTERVAL", "consumer_sleep_interval", Kind::Decimal),
    ("KAFKA_AUTO_OFFSET_RESET", "auto_offset_reset", Kind::Text),
    ("KAFKA_ENABLE_AUTO_COMMIT", "enable_auto_commit", Kind::Bool),
    ("KAFKA_ACKS", "acks", Kind::Text),
    ("KAFKA_ENABLE_IDEMPOTENCE", "enable_idempotence", Kind::Bool),
    ("KAFKA_DEAD_LETTER_TOPIC", "dead_letter_topic", Kind::Text),
];

/// The names of the variables Sluice reads.
pub const KAFKA_VARIABLES: [&str; 14] = {
    let mut names = [""; 14];
    let mut i = 0;
    while i < VARIABLES.len() {
        names[i] = VARIABLES[i].0;
        i += 1;
    }
    names
};

/// Writes each set variable into the `[kafka]` table, typed, so that range
/// checks report it like a value from the file.
pub(super) fn apply_overrides(
    table: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let kafka = table
        .entry("kafka")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(kafka) = kafka.as_table_mut() else {
        // Not a table: let deserialisation report the type error.
        return Ok(());
    };
    for &(var, field, kind) in VARIABLES {
        let Some(raw) = env(var) else { continue };
        let value = raw.trim();
        let bad = |expected| ConfigError::Env {
            var,
            value: raw.clone(),
            expected,
        };
        let typed = match kind {
            Kind::Text => toml::Value::String(value.to_owned()),
            Kind::Whole => toml::Value::Integer(value.parse().map_err(|_| bad("a whole number"))?),
            Kind::Decimal => toml::Value::Float(value.parse().map_err(|_| bad("a number"))?),
            Kind::Bool => toml::Value::Boolean(match value.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => return Err(bad("true or false")),
            }),
        };
        kafka.insert(field.to_owned(), typed);
    }
    Ok(())
}
