//! The configuration file (`sluice.toml`), its `KAFKA_*` environment
//! overrides, and the checks that make a bad file fail fast.
//!
//! Owns parsing and validation only: nothing here touches Kafka or loads a
//! plugin (it only checks that each route's module file exists). Every field
//! carries a doc comment: it is the user's documentation, and
//! `docs/configuration.md` follows it.
//!
//! The sections are one module each: [`KafkaConfig`] (`[kafka]`, with
//! `security` and `membership` for its connection and group settings),
//! [`ProcessingConfig`] (`[processing]`), the HTTP endpoint, logging and
//! telemetry (`[http]`, `[logging]`, `[telemetry]`) and [`RouteConfig`]
//! (`[[routes]]`). `load` reads a file, `env` overlays the `KAFKA_*`
//! variables, and `validate` with `route_checks` refuses a bad value. This
//! module holds the whole file's [`Config`] with its `[plugins]` table and
//! paths, [`ConfigError`], and the `Choices` every table's strings are read
//! through.

mod env;
mod kafka;
mod load;
mod membership;
mod observability;
mod processing;
mod route;
mod route_checks;
mod secret;
mod security;
mod security_checks;
mod validate;

use std::path::PathBuf;

use serde::Deserialize;

// The strings of `kafka.acks` and `kafka.auto_offset_reset`, for `env`,
// which checks a variable's value itself so that its error names the
// variable.
use kafka::{ACKS, OFFSET_RESETS};

pub use crate::policy::FailureKind as RetryOn;
pub use env::KAFKA_VARIABLES;
pub use kafka::{Acks, KafkaConfig, OffsetReset};
pub use membership::{AssignmentStrategy, HOSTNAME_PLACEHOLDER};
pub use observability::{HttpConfig, LoggingConfig, TelemetryConfig};
pub use processing::{MAX_MEMORY_MB, ProcessingConfig};
pub use route::{OnUndecodable, RouteConfig};
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

impl Config {
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

fn default_plugins_dir() -> PathBuf {
    PathBuf::from("plugins")
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
