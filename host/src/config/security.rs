//! How the clients reach the brokers: `[kafka.tls]`, `[kafka.sasl]`, the
//! `security.protocol` they add up to, and the output codec.
//!
//! Owns these settings only; their cross-field checks are in
//! `security_checks`. The files they name (certificates, keys, mounted
//! secrets) are not touched here: `kafka` opens them when it builds a
//! client, so that a Secret mounted by Kubernetes is read where it is used,
//! and a missing one is reported there, naming the field and the path.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Choices, KafkaConfig, Secret};

/// librdkafka's `security.protocol`: whether the connection is encrypted
/// and whether the client authenticates with SASL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// Neither: `"plaintext"`.
    Plaintext,
    /// TLS, and a client certificate if one is given: `"ssl"`.
    Ssl,
    /// SASL without encryption: `"sasl_plaintext"`.
    SaslPlaintext,
    /// SASL over TLS: `"sasl_ssl"`.
    SaslSsl,
}

impl SecurityProtocol {
    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether the connection is encrypted.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether the client authenticates with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// How the client authenticates over SASL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// A user name and password sent as they are (so only over TLS):
    /// `"PLAIN"`, Confluent Cloud's API keys.
    Plain,
    /// A salted challenge with SHA-256: `"SCRAM-SHA-256"`.
    ScramSha256,
    /// A salted challenge with SHA-512: `"SCRAM-SHA-512"` (AWS MSK).
    ScramSha512,
    /// A token from an OpenID Connect provider, fetched with client
    /// credentials and renewed before it expires: `"OAUTHBEARER"`.
    OauthBearer,
}

impl SaslMechanism {
    /// The librdkafka value (`sasl.mechanism`).
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OauthBearer => "OAUTHBEARER",
        }
    }
}

/// The codec of the batches Sluice produces (outputs and dead letters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// Uncompressed: `"none"`.
    None,
    /// `"gzip"`: the best ratio of the four, and the most CPU.
    Gzip,
    /// `"snappy"`.
    Snappy,
    /// `"lz4"` (the default): see [`KafkaConfig::compression`].
    #[default]
    Lz4,
    /// `"zstd"`: close to gzip's ratio for less CPU; brokers read it from
    /// Kafka 2.1.
    Zstd,
}

impl Compression {
    /// The librdkafka value (`compression.type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// `[kafka.tls]`: the table turns TLS on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Whether TLS is on; `false` keeps the table but connects without TLS.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The PEM file of the certificate authorities that signed the brokers'
    /// certificates, relative to the config file. Unset: the system's CA
    /// certificates (the standard locations such as `/etc/ssl/certs` are
    /// searched), which is what a managed cluster with a public certificate
    /// needs. `KAFKA_SSL_CA_FILE`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The PEM file of this client's certificate, for brokers that
    /// authenticate clients by certificate (mTLS); needs `key_file`.
    /// `KAFKA_SSL_CERT_FILE`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The PEM file of the private key of `cert_file`. `KAFKA_SSL_KEY_FILE`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The password of an encrypted `key_file`. Prefer `key_password_file`.
    /// `KAFKA_SSL_KEY_PASSWORD`.
    #[serde(default)]
    pub key_password: Option<Secret>,
    /// A file holding the password of an encrypted `key_file` (a mounted
    /// Secret), read when the clients are built; one trailing newline is
    /// dropped. `KAFKA_SSL_KEY_PASSWORD_FILE`.
    #[serde(default)]
    pub key_password_file: Option<PathBuf>,
    /// Whether the broker's certificate must name the host it was reached
    /// at. Turn it off only for brokers whose certificates do not name
    /// their addresses, never to silence an error you do not understand.
    /// `KAFKA_SSL_VERIFY_HOSTNAME`.
    #[serde(default = "default_true")]
    pub verify_hostname: bool,
}

/// `[kafka.sasl]`: the table makes the clients authenticate with SASL.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// `"PLAIN"`, `"SCRAM-SHA-256"`, `"SCRAM-SHA-512"` or `"OAUTHBEARER"`.
    /// `KAFKA_SASL_MECHANISM`.
    pub mechanism: SaslMechanism,
    /// The user (PLAIN: Confluent Cloud's API key). PLAIN and SCRAM only.
    /// `KAFKA_SASL_USERNAME`.
    #[serde(default)]
    pub username: Option<String>,
    /// The password (PLAIN: the API secret). Prefer `password_file`.
    /// `KAFKA_SASL_PASSWORD`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password (a mounted Secret), read when the
    /// clients are built; one trailing newline is dropped.
    /// `KAFKA_SASL_PASSWORD_FILE`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// OAUTHBEARER: the OpenID Connect provider's token endpoint, an
    /// `https://` (or `http://`) URL. `KAFKA_SASL_TOKEN_ENDPOINT`.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// OAUTHBEARER: the client id the token is asked for with.
    /// `KAFKA_SASL_CLIENT_ID`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// OAUTHBEARER: the client secret. Prefer `client_secret_file`.
    /// `KAFKA_SASL_CLIENT_SECRET`.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// OAUTHBEARER: a file holding the client secret, read when the clients
    /// are built; one trailing newline is dropped.
    /// `KAFKA_SASL_CLIENT_SECRET_FILE`.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// OAUTHBEARER: the scope the token is asked for, if the provider needs
    /// one. `KAFKA_SASL_SCOPE`.
    #[serde(default)]
    pub scope: Option<String>,
    /// OAUTHBEARER: SASL extensions sent with the token, such as Confluent
    /// Cloud's `logicalCluster = "lkc-..."` and `identityPoolId =
    /// "pool-..."`. Keys are letters only; values have no commas.
    #[serde(default)]
    pub extensions: BTreeMap<String, String>,
}

fn default_true() -> bool {
    // TLS on once its table is written, and hostname verification on as
    // every TLS client does.
    true
}

const SECURITY_PROTOCOLS: Choices<SecurityProtocol> = Choices {
    names: &[
        ("plaintext", SecurityProtocol::Plaintext),
        ("ssl", SecurityProtocol::Ssl),
        ("sasl_plaintext", SecurityProtocol::SaslPlaintext),
        ("sasl_ssl", SecurityProtocol::SaslSsl),
        ("PLAINTEXT", SecurityProtocol::Plaintext),
        ("SSL", SecurityProtocol::Ssl),
        ("SASL_PLAINTEXT", SecurityProtocol::SaslPlaintext),
        ("SASL_SSL", SecurityProtocol::SaslSsl),
    ],
    expected: r#"one of "plaintext", "ssl", "sasl_plaintext", "sasl_ssl" (or in capitals)"#,
};

const SASL_MECHANISMS: Choices<SaslMechanism> = Choices {
    names: &[
        ("PLAIN", SaslMechanism::Plain),
        ("SCRAM-SHA-256", SaslMechanism::ScramSha256),
        ("SCRAM-SHA-512", SaslMechanism::ScramSha512),
        ("OAUTHBEARER", SaslMechanism::OauthBearer),
    ],
    expected: r#"one of "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER""#,
};

const COMPRESSIONS: Choices<Compression> = Choices {
    names: &[
        ("none", Compression::None),
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ],
    expected: r#"one of "none", "gzip", "snappy", "lz4", "zstd""#,
};

impl<'de> Deserialize<'de> for SecurityProtocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(&SECURITY_PROTOCOLS)
    }
}

impl<'de> Deserialize<'de> for SaslMechanism {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(&SASL_MECHANISMS)
    }
}

impl<'de> Deserialize<'de> for Compression {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(&COMPRESSIONS)
    }
}

/// Whether `value` is one of the strings of a choice, so that a `KAFKA_*`
/// variable's error names the variable; else the strings allowed.
pub(super) fn check_choice(kind: ChoiceOf, value: &str) -> Result<(), &'static str> {
    let (known, expected) = match kind {
        ChoiceOf::SecurityProtocol => (
            SECURITY_PROTOCOLS.find(value).is_some(),
            SECURITY_PROTOCOLS.expected,
        ),
        ChoiceOf::SaslMechanism => (
            SASL_MECHANISMS.find(value).is_some(),
            SASL_MECHANISMS.expected,
        ),
        ChoiceOf::Compression => (COMPRESSIONS.find(value).is_some(), COMPRESSIONS.expected),
    };
    if known { Ok(()) } else { Err(expected) }
}

/// The choices of this module a variable can set.
#[derive(Clone, Copy)]
pub(super) enum ChoiceOf {
    SecurityProtocol,
    SaslMechanism,
    Compression,
}

impl KafkaConfig {
    /// The `security.protocol` in force: `kafka.security_protocol` when it
    /// is set, else what the tables present add up to.
    pub fn effective_security_protocol(&self) -> SecurityProtocol {
        if let Some(protocol) = self.security_protocol {
            return protocol;
        }
        let tls = self.tls.as_ref().is_some_and(|t| t.enabled);
        match (tls, self.sasl.is_some()) {
            (false, false) => SecurityProtocol::Plaintext,
            (true, false) => SecurityProtocol::Ssl,
            (false, true) => SecurityProtocol::SaslPlaintext,
            (true, true) => SecurityProtocol::SaslSsl,
        }
    }
}
