//! [`Secret`], which keeps a password out of every `Debug` and `Display`,
//! and the redaction of TOML errors that would quote one.
//!
//! Owns how a credential is shown (never). Only the code that hands one
//! on, the Kafka clients' settings and the admin API's token check, calls
//! [`Secret::expose`].

use std::fmt;

use serde::Deserialize;

/// A password, client secret, key password or admin token. `Debug` and
/// `Display` print `<redacted>`, so a config or an error that holds one never
/// shows it; the value is read only through [`Secret::expose`], where it is
/// handed on.
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

    /// The value itself, for the code that hands it on (to librdkafka, or
    /// to the admin API's token check).
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

/// Whether a librdkafka property's value may be a credential: every
/// `sasl.*` one, and those whose name says password or secret, or that
/// hold a PEM key.
pub fn is_sensitive_property(property: &str) -> bool {
    property.starts_with("sasl.")
        || property.contains("password")
        || property.contains("secret")
        || property.ends_with(".pem")
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
