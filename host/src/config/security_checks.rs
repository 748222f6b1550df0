//! The cross-field checks of `[kafka.tls]`, `[kafka.sasl]` and
//! `kafka.security_protocol`, each error quoting the field, the value (a
//! secret as `<redacted>`) and what to do.
//!
//! Owns the rules only: the files the settings name are opened by `kafka`
//! when it builds a client, not here.

use std::fmt;
use std::path::PathBuf;

use super::{ConfigError, KafkaConfig, SaslConfig, SaslMechanism, Secret, TlsConfig};

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
