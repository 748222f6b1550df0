//! `KAFKA_*` environment variables: each overrides its `[kafka]` field, as
//! the event bus's variables did.

use super::security::{ChoiceOf, check_choice};
use super::{ACKS, ConfigError, OFFSET_RESETS};

/// The type a variable's value must parse as.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    /// 0 or more (every such field is unsigned).
    Whole,
    Decimal,
    Bool,
    /// One of `kafka.acks`'s strings, checked here so that the error names
    /// the variable.
    Acks,
    /// One of `kafka.auto_offset_reset`'s strings.
    OffsetReset,
    /// One of the strings of a security setting or of `kafka.compression`.
    Choice(ChoiceOf),
}

/// Every variable, the `[kafka]` field it overrides (a dotted path into
/// `[kafka.tls]` or `[kafka.sasl]`: setting one adds its table), and its
/// type. `[kafka.tls]`'s variables are `KAFKA_SSL_*`, after Kafka's own
/// `ssl.*` names and the event bus's "SSL" port.
const VARIABLES: &[(&str, &str, Kind)] = &[
    ("KAFKA_BOOTSTRAP_SERVERS", "bootstrap_servers", Kind::Text),
    ("KAFKA_ENVIRONMENT", "environment", Kind::Text),
    ("KAFKA_GROUP", "group", Kind::Text),
    ("KAFKA_TIMEOUT_SECONDS", "timeout_seconds", Kind::Whole),
    (
        "KAFKA_MAX_RETRY_ATTEMPTS",
        "max_retry_attempts",
        Kind::Whole,
    ),
    (
        "KAFKA_RETRY_BACKOFF_BASE",
        "retry_backoff_base",
        Kind::Decimal,
    ),
    (
        "KAFKA_RETRY_BACKOFF_MAX",
        "retry_backoff_max",
        Kind::Decimal,
    ),
    (
        "KAFKA_CIRCUIT_BREAKER_THRESHOLD",
        "circuit_breaker_threshold",
        Kind::Whole,
    ),
    (
        "KAFKA_CIRCUIT_BREAKER_RESET_TIMEOUT",
        "circuit_breaker_reset_timeout",
        Kind::Decimal,
    ),
    (
        "KAFKA_CONSUMER_SLEEP_INTERVAL",
        "consumer_sleep_interval",
        Kind::Decimal,
    ),
    (
        "KAFKA_AUTO_OFFSET_RESET",
        "auto_offset_reset",
        Kind::OffsetReset,
    ),
    ("KAFKA_ENABLE_AUTO_COMMIT", "enable_auto_commit", Kind::Bool),
    ("KAFKA_ACKS", "acks", Kind::Acks),
    ("KAFKA_ENABLE_IDEMPOTENCE", "enable_idempotence", Kind::Bool),
    ("KAFKA_DEAD_LETTER_TOPIC", "dead_letter_topic", Kind::Text),
    ("KAFKA_GROUP_INSTANCE_ID", "group_instance_id", Kind::Text),
    (
        "KAFKA_COMPRESSION",
        "compression",
        Kind::Choice(ChoiceOf::Compression),
    ),
    (
        "KAFKA_SECURITY_PROTOCOL",
        "security_protocol",
        Kind::Choice(ChoiceOf::SecurityProtocol),
    ),
    ("KAFKA_SSL_CA_FILE", "tls.ca_file", Kind::Text),
    ("KAFKA_SSL_CERT_FILE", "tls.cert_file", Kind::Text),
    ("KAFKA_SSL_KEY_FILE", "tls.key_file", Kind::Text),
    ("KAFKA_SSL_KEY_PASSWORD", "tls.key_password", Kind::Text),
    (
        "KAFKA_SSL_KEY_PASSWORD_FILE",
        "tls.key_password_file",
        Kind::Text,
    ),
    (
        "KAFKA_SSL_VERIFY_HOSTNAME",
        "tls.verify_hostname",
        Kind::Bool,
    ),
    (
        "KAFKA_SASL_MECHANISM",
        "sasl.mechanism",
        Kind::Choice(ChoiceOf::SaslMechanism),
    ),
    ("KAFKA_SASL_USERNAME", "sasl.username", Kind::Text),
    ("KAFKA_SASL_PASSWORD", "sasl.password", Kind::Text),
    ("KAFKA_SASL_PASSWORD_FILE", "sasl.password_file", Kind::Text),
    (
        "KAFKA_SASL_TOKEN_ENDPOINT",
        "sasl.token_endpoint",
        Kind::Text,
    ),
    ("KAFKA_SASL_CLIENT_ID", "sasl.client_id", Kind::Text),
    ("KAFKA_SASL_CLIENT_SECRET", "sasl.client_secret", Kind::Text),
    (
        "KAFKA_SASL_CLIENT_SECRET_FILE",
        "sasl.client_secret_file",
        Kind::Text,
    ),
    ("KAFKA_SASL_SCOPE", "sasl.scope", Kind::Text),
];

/// The names of the variables Sluice reads.
pub const KAFKA_VARIABLES: [&str; VARIABLES.len()] = {
    let mut names = [""; VARIABLES.len()];
    let mut i = 0;
    while i < VARIABLES.len() {
        names[i] = VARIABLES[i].0;
        i += 1;
    }
    names
};

/// A variable that was set, and the `[kafka]` field it overrode.
pub(super) type Overridden = Vec<(&'static str, &'static str)>;

/// Writes each set variable into the `[kafka]` table, typed, so that range
/// checks apply to it as to a value from the file; returns the variables
/// that were set, for [`name_variable`].
pub(super) fn apply_overrides(
    table: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Overridden, ConfigError> {
    let mut overridden = Vec::new();
    let kafka = table
        .entry("kafka")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(kafka) = kafka.as_table_mut() else {
        // Not a table: let deserialisation report the type error.
        return Ok(overridden);
    };
    for &(var, field, kind) in VARIABLES {
        let Some(raw) = env(var) else { continue };
        let value = raw.trim();
        let bad = |expected| ConfigError::Env {
            var,
            value: raw.clone(),
            expected,
        };
        let choice = |allowed: bool, expected| match allowed {
            true => Ok(toml::Value::String(value.to_owned())),
            false => Err(bad(expected)),
        };
        let typed = match kind {
            Kind::Text => toml::Value::String(value.to_owned()),
            Kind::Whole => toml::Value::Integer(
                value
                    .parse::<u32>()
                    .map_err(|_| bad("a whole number (0 or more)"))?
                    .into(),
            ),
            Kind::Decimal => toml::Value::Float(value.parse().map_err(|_| bad("a number"))?),
            Kind::Bool => toml::Value::Boolean(match value.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => return Err(bad("true or false")),
            }),
            Kind::Acks => choice(ACKS.find(value).is_some(), ACKS.expected)?,
            Kind::OffsetReset => {
                choice(OFFSET_RESETS.find(value).is_some(), OFFSET_RESETS.expected)?
            }
            Kind::Choice(of) => match check_choice(of, value) {
                Ok(()) => toml::Value::String(value.to_owned()),
                Err(expected) => return Err(bad(expected)),
            },
        };
        if insert(kafka, field, typed) {
            overridden.push((var, field));
        }
    }
    Ok(overridden)
}

/// Writes `value` at the dotted `path` inside `table`, adding the tables on
/// the way; `false` when one of them is not a table (deserialisation then
/// reports the type error).
fn insert(table: &mut toml::Table, path: &str, value: toml::Value) -> bool {
    match path.split_once('.') {
        None => {
            table.insert(path.to_owned(), value);
            true
        }
        Some((head, rest)) => match table
            .entry(head)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(inner) => insert(inner, rest, value),
            _ => false,
        },
    }
}

/// Adds the variable to a validation error about a field it set, so the
/// user does not look for the value in the file.
pub(super) fn name_variable(error: ConfigError, overridden: &Overridden) -> ConfigError {
    match error {
        ConfigError::Invalid {
            field,
            value,
            allowed,
        } => {
            let var = overridden
                .iter()
                .find(|(_, f)| field.strip_prefix("kafka.") == Some(*f))
                .map(|(var, _)| *var);
            ConfigError::Invalid {
                value: match var {
                    Some(var) => format!("{value} (from {var})"),
                    None => value,
                },
                field,
                allowed,
            }
        }
        other => other,
    }
}
