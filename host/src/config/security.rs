//! How the clients reach the brokers: `[kafka.tls]`, `[kafka.sasl]`, the
//! `security.protocol` they add up to, the output codec, and [`Secret`],
//! which keeps a password out of every `Debug` and `Display`.
//!
//! Owns these settings and their cross-field checks only. The files they
//! name (certificates, keys, mounted secrets) are not touched here: `kafka`
//! opens them when it builds a client, so that a Secret mounted by
//! Kubernetes is read where it is used, and a missing one is reported there,
//! naming the field and the path.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Choices, ConfigError, KafkaConfig};

/// A password, client secret or key password. `Debug` and `Display` print
/// `<redacted>`, so a config or an error that holds one never shows it; the
/// value is read only through [`Secret::expose`], where a client is built.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// What `Debug` and `Display` print instead of the value.
    pub const REDACTED: &'static str = "<redacted>";

    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that hands it to librdkafka.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

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

fn invalid(field: &str, value: impl fmt::Display, allowed: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

/// A path field that is set must not be empty.
fn check_path(field: &str, path: Option<&PathBuf>) -> Result<(), ConfigError> {
    match path {
        Some(p) if p.as_os_str().is_empty() => Err(invalid(
            field,
            "\"\"",
            "the path of a file (relative to the config file), or no such field",
        )),
        _ => Ok(()),
    }
}

/// Exactly one of a secret and its file, or (when `required` is false)
/// neither.
fn one_secret(
    table: &str,
    (name, value): (&str, Option<&Secret>),
    (file_name, file): (&str, Option<&PathBuf>),
    required: Option<&str>,
) -> Result<(), ConfigError> {
    check_path(&format!("{table}.{file_name}"), file)?;
    match (value, file, required) {
        (Some(_), Some(path), _) => Err(invalid(
            &format!("{table}.{file_name}"),
            format!("{:?}", path.display().to_string()),
            format!(
                "either {table}.{name} or {table}.{file_name}, not both: keep the file (a \
                 mounted Secret) and remove {name}"
            ),
        )),
        (Some(secret), None, _) if secret.expose().is_empty() => Err(invalid(
            &format!("{table}.{name}"),
            "\"\"",
            format!("a non-empty value, or {table}.{file_name} naming a file that holds it"),
        )),
        (None, None, Some(why)) => Err(invalid(
            &format!("{table}.{name}"),
            "(none)",
            format!("{table}.{name} or {table}.{file_name} (a file that holds it): {why}"),
        )),
        _ => Ok(()),
    }
}

/// Checks the security settings: the tables against each other and against
/// `kafka.security_protocol`. Files are opened later, by `kafka`.
pub(super) fn validate(k: &KafkaConfig) -> Result<(), ConfigError> {
    check_protocol(k)?;
    if let Some(tls) = &k.tls {
        validate_tls(tls)?;
    }
    if let Some(sasl) = &k.sasl {
        validate_sasl(sasl)?;
    }
    Ok(())
}

fn check_protocol(k: &KafkaConfig) -> Result<(), ConfigError> {
    let Some(protocol) = k.security_protocol else {
        return Ok(());
    };
    let field = "kafka.security_protocol";
    let value = format!("{:?}", protocol.as_str());
    let tls_table = k.tls.as_ref().map(|t| t.enabled);
    if !protocol.uses_tls() && tls_table == Some(true) {
        let with_tls = if protocol.uses_sasl() {
            "sasl_ssl"
        } else {
            "ssl"
        };
        return Err(invalid(
            field,
            value,
            format!(
                "\"{with_tls}\" while [kafka.tls] is present (the table turns TLS on): set \
                 security_protocol = \"{with_tls}\", or kafka.tls.enabled = false to connect \
                 without TLS"
            ),
        ));
    }
    if protocol.uses_tls() && tls_table == Some(false) {
        return Err(invalid(
            field,
            value,
            "a protocol without TLS while kafka.tls.enabled = false: set enabled = true, or \
             remove the field to connect with TLS",
        ));
    }
    if protocol.uses_sasl() && k.sasl.is_none() {
        return Err(invalid(
            field,
            value,
            "\"plaintext\" or \"ssl\" unless [kafka.sasl] says how to authenticate: add \
             [kafka.sasl] with a mechanism (or KAFKA_SASL_MECHANISM and its credentials)",
        ));
    }
    if !protocol.uses_sasl() && k.sasl.is_some() {
        let with_sasl = if protocol.uses_tls() {
            "sasl_ssl"
        } else {
            "sasl_plaintext"
        };
        return Err(invalid(
            field,
            value,
            format!(
                "\"{with_sasl}\" while [kafka.sasl] is present (its credentials would not be \
                 used): set security_protocol = \"{with_sasl}\", or remove [kafka.sasl]"
            ),
        ));
    }
    Ok(())
}

fn validate_tls(tls: &TlsConfig) -> Result<(), ConfigError> {
    let t = "kafka.tls";
    check_path(&format!("{t}.ca_file"), tls.ca_file.as_ref())?;
    check_path(&format!("{t}.cert_file"), tls.cert_file.as_ref())?;
    check_path(&format!("{t}.key_file"), tls.key_file.as_ref())?;
    let quoted = |p: &PathBuf| format!("{:?}", p.display().to_string());
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), None) => {
            return Err(invalid(
                &format!("{t}.cert_file"),
                quoted(cert),
                format!("a client certificate together with its private key: set {t}.key_file too"),
            ));
        }
        (None, Some(key)) => {
            return Err(invalid(
                &format!("{t}.key_file"),
                quoted(key),
                format!(
                    "a private key together with its certificate: set {t}.cert_file too (or \
                     remove key_file when the brokers do not ask for a client certificate)"
                ),
            ));
        }
        _ => {}
    }
    one_secret(
        t,
        ("key_password", tls.key_password.as_ref()),
        ("key_password_file", tls.key_password_file.as_ref()),
        None,
    )?;
    let password = match (&tls.key_password, &tls.key_password_file) {
        (Some(secret), _) => Some(("key_password", secret.to_string())),
        (None, Some(path)) => Some(("key_password_file", quoted(path))),
        (None, None) => None,
    };
    if let (None, Some((name, value))) = (&tls.key_file, password) {
        return Err(invalid(
            &format!("{t}.{name}"),
            value,
            format!(
                "a key password only together with {t}.key_file, the encrypted key it opens: \
                 set key_file or remove {name}"
            ),
        ));
    }
    Ok(())
}

fn validate_sasl(sasl: &SaslConfig) -> Result<(), ConfigError> {
    let s = "kafka.sasl";
    let mechanism = format!("{:?}", sasl.mechanism.as_str());
    let set = |name: &str, present: bool| present.then(|| name.to_owned());
    let oauth_only = [
        set("token_endpoint", sasl.token_endpoint.is_some()),
        set("client_id", sasl.client_id.is_some()),
        set("client_secret", sasl.client_secret.is_some()),
        set("client_secret_file", sasl.client_secret_file.is_some()),
        set("scope", sasl.scope.is_some()),
        set("extensions", !sasl.extensions.is_empty()),
    ];
    let password_only = [
        set("username", sasl.username.is_some()),
        set("password", sasl.password.is_some()),
        set("password_file", sasl.password_file.is_some()),
    ];
    let (foreign, meant_for, instead) = match sasl.mechanism {
        SaslMechanism::OauthBearer => (
            &password_only[..],
            "\"PLAIN\" or a SCRAM one",
            "token_endpoint, client_id and a client secret",
        ),
        _ => (
            &oauth_only[..],
            "\"OAUTHBEARER\"",
            "username and a password",
        ),
    };
    if let Some(name) = foreign.iter().flatten().next() {
        return Err(invalid(
            &format!("{s}.mechanism"),
            &mechanism,
            format!(
                "{meant_for}, the mechanism {s}.{name} is for; {mechanism} logs in with \
                 {instead}: remove {name}, or set the mechanism it was meant for"
            ),
        ));
    }
    match sasl.mechanism {
        SaslMechanism::OauthBearer => validate_oauth(sasl),
        mechanism => {
            match &sasl.username {
                None => {
                    return Err(invalid(
                        &format!("{s}.username"),
                        "(none)",
                        format!(
                            "a user name: {} authenticates with a username and a password",
                            mechanism.as_str()
                        ),
                    ));
                }
                Some(user) if user.trim().is_empty() => {
                    return Err(invalid(
                        &format!("{s}.username"),
                        format!("{user:?}"),
                        "a non-empty user name",
                    ));
                }
                Some(_) => {}
            }
            one_secret(
                s,
                ("password", sasl.password.as_ref()),
                ("password_file", sasl.password_file.as_ref()),
                Some(&format!(
                    "{} authenticates with a username and a password",
                    mechanism.as_str()
                )),
            )?;
            Ok(())
        }
    }
}

fn validate_oauth(sasl: &SaslConfig) -> Result<(), ConfigError> {
    let s = "kafka.sasl";
    let why = "OAUTHBEARER asks an OpenID Connect provider for a token with client credentials";
    let Some(endpoint) = &sasl.token_endpoint else {
        return Err(invalid(
            &format!("{s}.token_endpoint"),
            "(none)",
            format!("the https:// URL of the provider's token endpoint: {why}"),
        ));
    };
    let host = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .and_then(|rest| rest.split(['/', '?', '#']).next())
        .unwrap_or("");
    if host.is_empty()
        || endpoint
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            &format!("{s}.token_endpoint"),
            format!("{endpoint:?}"),
            "the https:// URL of the provider's token endpoint, such as \
             \"https://login.example.com/oauth2/token\"",
        ));
    }
    match &sasl.client_id {
        None => {
            return Err(invalid(
                &format!("{s}.client_id"),
                "(none)",
                format!("the client id registered with the provider: {why}"),
            ));
        }
        Some(id) if id.trim().is_empty() => {
            return Err(invalid(
                &format!("{s}.client_id"),
                format!("{id:?}"),
                "a non-empty client id",
            ));
        }
        Some(_) => {}
    }
    one_secret(
        s,
        ("client_secret", sasl.client_secret.as_ref()),
        ("client_secret_file", sasl.client_secret_file.as_ref()),
        Some(why),
    )?;
    for (key, value) in &sasl.extensions {
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphabetic()) || key == "auth" {
            return Err(invalid(
                &format!("{s}.extensions.{key:?}"),
                format!("{value:?}"),
                "a key of letters only, other than \"auth\" (RFC 7628), such as logicalCluster \
                 or identityPoolId",
            ));
        }
        if value.is_empty() || value.chars().any(|c| c == ',' || !(' '..='~').contains(&c)) {
            return Err(invalid(
                &format!("{s}.extensions.{key}"),
                format!("{value:?}"),
                "a non-empty value of printable ASCII characters without commas",
            ));
        }
    }
    Ok(())
}

/// Whether a field's value is a credential: its name says password,
/// secret or token.
fn names_a_secret(field: &str) -> bool {
    ["password", "secret", "token"]
        .iter()
        .any(|word| field.contains(word))
}

/// A TOML error without the credential it may quote: the value in a source
/// line whose key names a secret (`password = hunter2` without quotes), and
/// the value in "invalid type: integer `123`" when the field named after it
/// is a secret one.
pub(super) fn redact_parse_error(message: String) -> String {
    let about_a_secret = message
        .lines()
        .any(|line| line.starts_with("in `") && names_a_secret(line));
    let mut out: Vec<String> = Vec::new();
    let mut redacted_line = false;
    for line in message.lines() {
        // The carets under a redacted value would tell its length.
        if std::mem::take(&mut redacted_line)
            && line.trim_start_matches([' ', '|']).starts_with('^')
        {
            let indent = line.len() - line.trim_start_matches([' ', '|']).len();
            out.push(format!("{}^", &line[..indent]));
            continue;
        }
        let source = line.split_once(" | ").filter(|(number, _)| {
            let number = number.trim();
            !number.is_empty() && number.chars().all(|c| c.is_ascii_digit())
        });
        if let Some((number, text)) = source
            && let Some((key, _)) = text.split_once('=')
            && names_a_secret(&key.to_ascii_lowercase())
        {
            out.push(format!("{number} | {}= {}", key, Secret::REDACTED));
            redacted_line = true;
            continue;
        }
        if about_a_secret
            && let Some((before, rest)) = line.split_once('`')
            && let Some((_, after)) = rest.split_once('`')
            && before.starts_with("invalid ")
        {
            out.push(format!("{before}`{}`{after}", Secret::REDACTED));
            continue;
        }
        out.push(line.to_owned());
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_its_value() {
        let secret = Secret::new("hunter2-known");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(<redacted>)");
        assert_eq!(secret.expose(), "hunter2-known");
    }

    #[test]
    fn a_toml_error_does_not_quote_a_secret() {
        let unquoted = "[kafka.sasl]\nmechanism = \"PLAIN\"\npassword = hunter2-known\n";
        let error = toml::from_str::<toml::Table>(unquoted).expect_err("not TOML");
        let message = redact_parse_error(error.to_string());
        assert!(!message.contains("hunter2-known"), "{message}");
        assert!(message.contains("password = <redacted>"), "{message}");

        let typed = "invalid type: integer `1234567`, expected a string\nin `kafka.sasl.password`";
        let message = redact_parse_error(typed.to_owned());
        assert!(!message.contains("1234567"), "{message}");
        let other = "invalid type: integer `1`, expected a string\nin `kafka.group`";
        assert_eq!(redact_parse_error(other.to_owned()), other);
    }
}
