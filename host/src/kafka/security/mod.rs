//! TLS and SASL for every client Sluice makes: the librdkafka properties
//! that `[kafka.tls]`, `[kafka.sasl]` and `kafka.security_protocol` stand
//! for.
//!
//! Owns reading the files those settings name, when a client is built (a
//! Kubernetes Secret is mounted as files, and a rotated one is read again by
//! the next client): a file that cannot be read is a [`ConfigError::File`]
//! naming the field and the path. Secrets leave [`Secret`] only here, into
//! librdkafka properties that rdkafka's `Debug` of a `ClientConfig` leaves
//! out.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rdkafka::error::KafkaError;

use crate::config::{
    Config, ConfigError, SaslConfig, SaslMechanism, Secret, TlsConfig, is_sensitive_property,
};

/// The features this build's librdkafka has (`builtin.features`: `ssl`,
/// `sasl_scram`, `oidc`, `zstd`, ...).
pub fn builtin_features() -> &'static [String] {
    static FEATURES: OnceLock<Vec<String>> = OnceLock::new();
    FEATURES.get_or_init(|| {
        rdkafka::ClientConfig::new()
            .create_native_config()
            .and_then(|native| native.get("builtin.features"))
            .map(|list| list.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    })
}

/// A client creation error without the value librdkafka was given, when
/// the property may hold a credential: librdkafka refuses a property this
/// build lacks (an OAUTHBEARER client secret without OIDC) by quoting it.
pub fn redact(error: KafkaError) -> KafkaError {
    match error {
        KafkaError::ClientConfig(code, description, key, _) if is_sensitive_property(&key) => {
            KafkaError::ClientConfig(code, description, key, Secret::REDACTED.to_owned())
        }
        other => other,
    }
}

/// Refuses a setting this build's librdkafka cannot carry out, before a
/// client is made: without OIDC (libcurl), OAUTHBEARER could only fail
/// later, with librdkafka quoting the property it refused.
pub fn check_supported(config: &Config) -> Result<(), ConfigError> {
    let oauth = config
        .kafka
        .sasl
        .as_ref()
        .is_some_and(|s| s.mechanism == SaslMechanism::OauthBearer);
    if oauth && !config.is_embedded() && !builtin_features().iter().any(|f| f == "oidc") {
        return Err(ConfigError::Invalid {
            field: "kafka.sasl.mechanism".to_owned(),
            value: "\"OAUTHBEARER\"".to_owned(),
            allowed: "a mechanism this build of Sluice supports: its librdkafka was built \
                      without OpenID Connect token fetches (libcurl); use PLAIN or SCRAM, or a \
                      build that has them"
                .to_owned(),
        });
    }
    Ok(())
}

/// The librdkafka properties of the connection's security, in the order
/// they are set. Secret values come from their fields or are read from
/// their files now. None for the embedded broker.
pub fn properties(config: &Config) -> Result<Vec<(&'static str, String)>, ConfigError> {
    if config.is_embedded() {
        // The development broker (and so `sluice demo`) speaks plaintext
        // only; a production file's settings are left unused there.
        return Ok(Vec::new());
    }
    let k = &config.kafka;
    let protocol = k.effective_security_protocol();
    let mut props = vec![("security.protocol", protocol.as_str().to_owned())];
    if protocol.uses_tls() {
        tls_properties(config, k.tls.as_ref().filter(|t| t.enabled), &mut props)?;
    }
    if let Some(sasl) = k.sasl.as_ref().filter(|_| protocol.uses_sasl()) {
        props.push(("sasl.mechanism", sasl.mechanism.as_str().to_owned()));
        match sasl.mechanism {
            SaslMechanism::OauthBearer => oauthbearer_properties(config, sasl, &mut props)?,
            SaslMechanism::Plain | SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                login_properties(config, sasl, &mut props)?;
            }
        }
    }
    Ok(props)
}

/// The TLS properties, `tls` being `[kafka.tls]` when it is there and
/// enabled: the CA certificates (the system's without a `ca_file`), the
/// client certificate and key, and hostname verification.
fn tls_properties(
    config: &Config,
    tls: Option<&TlsConfig>,
    props: &mut Vec<(&'static str, String)>,
) -> Result<(), ConfigError> {
    let file = |field: &str, path: &Path| resolve(config, field, path);
    let ca = match tls.and_then(|t| t.ca_file.as_deref()) {
        Some(path) => file("kafka.tls.ca_file", path)?,
        // librdkafka then searches the usual places of the system's CA
        // certificates; OpenSSL's own default is the directory it was
        // built for, which a vendored build does not fill.
        None => "probe".to_owned(),
    };
    props.push(("ssl.ca.location", ca));
    let Some(tls) = tls else {
        return Ok(());
    };
    if let Some(cert) = &tls.cert_file {
        props.push((
            "ssl.certificate.location",
            file("kafka.tls.cert_file", cert)?,
        ));
    }
    if let Some(key) = &tls.key_file {
        props.push(("ssl.key.location", file("kafka.tls.key_file", key)?));
    }
    if let Some(password) = secret(
        config,
        ("kafka.tls.key_password", tls.key_password.as_ref()),
        (
            "kafka.tls.key_password_file",
            tls.key_password_file.as_ref(),
        ),
    )? {
        props.push(("ssl.key.password", password));
    }
    if !tls.verify_hostname {
        props.push(("ssl.endpoint.identification.algorithm", "none".to_owned()));
    }
    Ok(())
}

/// The OAUTHBEARER properties: tokens fetched over OpenID Connect from
/// the token endpoint with the client's id and secret.
fn oauthbearer_properties(
    config: &Config,
    sasl: &SaslConfig,
    props: &mut Vec<(&'static str, String)>,
) -> Result<(), ConfigError> {
    props.push(("sasl.oauthbearer.method", "oidc".to_owned()));
    if let Some(endpoint) = &sasl.token_endpoint {
        props.push(("sasl.oauthbearer.token.endpoint.url", endpoint.clone()));
    }
    if let Some(id) = &sasl.client_id {
        props.push(("sasl.oauthbearer.client.id", id.clone()));
    }
    if let Some(client_secret) = secret(
        config,
        ("kafka.sasl.client_secret", sasl.client_secret.as_ref()),
        (
            "kafka.sasl.client_secret_file",
            sasl.client_secret_file.as_ref(),
        ),
    )? {
        props.push(("sasl.oauthbearer.client.secret", client_secret));
    }
    if let Some(scope) = &sasl.scope {
        props.push(("sasl.oauthbearer.scope", scope.clone()));
    }
    if !sasl.extensions.is_empty() {
        let extensions: Vec<String> = sasl
            .extensions
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        props.push(("sasl.oauthbearer.extensions", extensions.join(",")));
    }
    Ok(())
}

/// The properties of a login with a user and password (PLAIN or SCRAM).
fn login_properties(
    config: &Config,
    sasl: &SaslConfig,
    props: &mut Vec<(&'static str, String)>,
) -> Result<(), ConfigError> {
    if let Some(user) = &sasl.username {
        props.push(("sasl.username", user.clone()));
    }
    if let Some(password) = secret(
        config,
        ("kafka.sasl.password", sasl.password.as_ref()),
        ("kafka.sasl.password_file", sasl.password_file.as_ref()),
    )? {
        props.push(("sasl.password", password));
    }
    Ok(())
}

/// A file field resolved against the config file's directory, once it is
/// known to be readable: librdkafka opens it itself, and would say less.
fn resolve(config: &Config, field: &str, path: &Path) -> Result<String, ConfigError> {
    let full = config.base_dir.join(path);
    std::fs::File::open(&full).map_err(|e| unreadable(field, &full, &e))?;
    Ok(full.to_string_lossy().into_owned())
}

/// A secret from its field or read from its file (one trailing newline
/// dropped, as `echo` and `kubectl create secret --from-file` leave one).
fn secret(
    config: &Config,
    (_, value): (&str, Option<&Secret>),
    (file_field, file): (&str, Option<&PathBuf>),
) -> Result<Option<String>, ConfigError> {
    if let Some(value) = value {
        return Ok(Some(value.expose().to_owned()));
    }
    let Some(path) = file else { return Ok(None) };
    let full = config.base_dir.join(path);
    let text =
        super::credentials::read_secret(&full).map_err(|e| unreadable(file_field, &full, &e))?;
    if text.is_empty() {
        return Err(ConfigError::File {
            field: file_field.to_owned(),
            path: full,
            reason: "the file is empty".to_owned(),
        });
    }
    Ok(Some(text))
}

/// The file the SASL password is read from, with its user, when the
/// clients log in with one (PLAIN or SCRAM): followed while the daemon runs.
pub fn password_file(config: &Config) -> Option<super::credentials::PasswordFile> {
    if config.is_embedded() {
        return None;
    }
    let sasl = config.kafka.sasl.as_ref()?;
    if sasl.mechanism == SaslMechanism::OauthBearer || sasl.password.is_some() {
        return None;
    }
    Some(super::credentials::PasswordFile {
        username: sasl.username.clone()?,
        path: config.base_dir.join(sasl.password_file.as_ref()?),
    })
}

fn unreadable(field: &str, path: &Path, error: &std::io::Error) -> ConfigError {
    ConfigError::File {
        field: field.to_owned(),
        path: path.to_owned(),
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests;
