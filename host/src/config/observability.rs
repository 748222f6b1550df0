//! How the running daemon is watched and operated: the HTTP endpoint
//! (`[http]`: health, readiness, metrics, plugins, the admin API), its logs
//! (`[logging]`) and where its spans go (`[telemetry]`).
//!
//! Owns these tables and their defaults; the endpoint itself is served by
//! [`crate::http`], and the checks are in `validate`.

use std::time::Duration;

use serde::Deserialize;

use super::{Choices, Secret};
use crate::telemetry::LogFormat;

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

fn default_true() -> bool {
    // The endpoint is served unless turned off.
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

const LOG_FORMATS: Choices<LogFormat> = Choices {
    names: &[("human", LogFormat::Human), ("json", LogFormat::Json)],
    expected: r#"one of "human", "json""#,
};

fn deserialize_log_format<'de, D: serde::Deserializer<'de>>(d: D) -> Result<LogFormat, D::Error> {
    d.deserialize_str(&LOG_FORMATS)
}
