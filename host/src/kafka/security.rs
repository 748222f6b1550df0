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

use crate::config::{Config, ConfigError, SaslMechanism, Secret, is_sensitive_property};

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
    let file = |field: &str, path: &Path| resolve(config, field, path);
    if protocol.uses_tls() {
        let tls = k.tls.as_ref().filter(|t| t.enabled);
        let ca = match tls.and_then(|t| t.ca_file.as_deref()) {
            Some(path) => file("kafka.tls.ca_file", path)?,
            // librdkafka then searches the usual places of the system's CA
            // certificates; OpenSSL's own default is the directory it was
            // built for, which a vendored build does not fill.
            None => "probe".to_owned(),
        };
        props.push(("ssl.ca.location", ca));
        if let Some(tls) = tls {
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
        }
    }
    if let Some(sasl) = k.sasl.as_ref().filter(|_| protocol.uses_sasl()) {
        props.push(("sasl.mechanism", sasl.mechanism.as_str().to_owned()));
        match sasl.mechanism {
            SaslMechanism::OauthBearer => {
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
            }
            SaslMechanism::Plain | SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
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
            }
        }
    }
    Ok(props)
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
    let text = std::fs::read_to_string(&full).map_err(|e| unreadable(file_field, &full, &e))?;
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if text.is_empty() {
        return Err(ConfigError::File {
            field: file_field.to_owned(),
            path: full,
            reason: "the file is empty".to_owned(),
        });
    }
    Ok(Some(text.to_owned()))
}

fn unreadable(field: &str, path: &Path, error: &std::io::Error) -> ConfigError {
    ConfigError::File {
        field: field.to_owned(),
        path: path.to_owned(),
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::ClientConfig;

    use super::*;
    use crate::kafka::{consumer_config, group_client_config, producer_config};

    const PASSWORD: &str = "sasl-password-6f1c";
    const KEY_PASSWORD: &str = "key-password-93ad";
    const CLIENT_SECRET: &str = "client-secret-c07e";

    /// A directory holding a module, the certificate files and the secret
    /// files the cases name (each secret file ends with a newline, as
    /// `kubectl create secret --from-file` leaves it).
    fn dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write a file");
        };
        std::fs::create_dir(dir.path().join("plugins")).expect("plugins dir");
        write("plugins/m.wasm", "");
        write("ca.pem", "CA");
        write("client.pem", "CERT");
        write("client.key", "KEY");
        write("key-password", &format!("{KEY_PASSWORD}\n"));
        write("password", &format!("{PASSWORD}\n"));
        write("client-secret", &format!("{CLIENT_SECRET}\r\n"));
        dir
    }

    /// `body` after `[kafka]`, with one route, read with `env`.
    fn parse(dir: &tempfile::TempDir, body: &str, env: &[(&str, &str)]) -> Config {
        let text = format!("[kafka]\n{body}\n[[routes]]\ntopic = \"t\"\nmodule = \"m\"\n");
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(var, value)| ((*var).to_owned(), (*value).to_owned()))
            .collect();
        Config::parse(&text, dir.path(), &|var| env.get(var).cloned())
            .unwrap_or_else(|e| panic!("a valid config: {e}"))
    }

    fn props(config: &Config) -> BTreeMap<&'static str, String> {
        properties(config)
            .expect("the files are readable")
            .into_iter()
            .collect()
    }

    fn path(dir: &tempfile::TempDir, name: &str) -> String {
        dir.path().join(name).to_string_lossy().into_owned()
    }

    #[test]
    fn without_tls_or_sasl_the_clients_speak_plaintext() {
        let dir = dir();
        let config = parse(&dir, "", &[]);
        let expected = BTreeMap::from([("security.protocol", "plaintext".to_owned())]);
        assert_eq!(props(&config), expected);
    }

    #[test]
    fn tls_with_a_client_certificate_names_its_files_and_reads_the_key_password() {
        let dir = dir();
        let config = parse(
            &dir,
            "[kafka.tls]\nca_file = \"ca.pem\"\ncert_file = \"client.pem\"\n\
             key_file = \"client.key\"\nkey_password_file = \"key-password\"",
            &[],
        );
        let expected = BTreeMap::from([
            ("security.protocol", "ssl".to_owned()),
            ("ssl.ca.location", path(&dir, "ca.pem")),
            ("ssl.certificate.location", path(&dir, "client.pem")),
            ("ssl.key.location", path(&dir, "client.key")),
            ("ssl.key.password", KEY_PASSWORD.to_owned()),
        ]);
        assert_eq!(props(&config), expected, "hostname verification stays on");
    }

    #[test]
    fn hostname_verification_is_turned_off_only_when_asked() {
        let dir = dir();
        let off = parse(&dir, "[kafka.tls]\nverify_hostname = false", &[]);
        let props_off = props(&off);
        assert_eq!(
            props_off.get("ssl.endpoint.identification.algorithm"),
            Some(&"none".to_owned())
        );
        assert_eq!(
            props_off.get("ssl.ca.location"),
            Some(&"probe".to_owned()),
            "without ca_file the system's CA certificates are searched for"
        );
        let on = parse(&dir, "[kafka.tls]", &[]);
        assert_eq!(
            props(&on).get("ssl.endpoint.identification.algorithm"),
            None
        );
    }

    #[test]
    fn scram_over_tls_reads_the_password_file() {
        let dir = dir();
        let config = parse(
            &dir,
            "[kafka.tls]\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"sluice\"\n\
             password_file = \"password\"",
            &[],
        );
        let expected = BTreeMap::from([
            ("security.protocol", "sasl_ssl".to_owned()),
            ("ssl.ca.location", "probe".to_owned()),
            ("sasl.mechanism", "SCRAM-SHA-512".to_owned()),
            ("sasl.username", "sluice".to_owned()),
            ("sasl.password", PASSWORD.to_owned()),
        ]);
        assert_eq!(props(&config), expected);
        let sha256 = parse(
            &dir,
            "[kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"u\"\npassword = \"p\"",
            &[],
        );
        let p = props(&sha256);
        assert_eq!(p["security.protocol"], "sasl_plaintext");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-256");
        assert_eq!(p["sasl.password"], "p");
    }

    #[test]
    fn plain_over_tls_can_be_set_from_the_environment_alone() {
        let dir = dir();
        let config = parse(
            &dir,
            "",
            &[
                ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                ("KAFKA_SASL_MECHANISM", "PLAIN"),
                ("KAFKA_SASL_USERNAME", "API-KEY"),
                ("KAFKA_SASL_PASSWORD", PASSWORD),
            ],
        );
        let expected = BTreeMap::from([
            ("security.protocol", "sasl_ssl".to_owned()),
            ("ssl.ca.location", "probe".to_owned()),
            ("sasl.mechanism", "PLAIN".to_owned()),
            ("sasl.username", "API-KEY".to_owned()),
            ("sasl.password", PASSWORD.to_owned()),
        ]);
        assert_eq!(props(&config), expected);
    }

    #[test]
    fn oauthbearer_asks_the_token_endpoint_with_client_credentials_and_extensions() {
        let dir = dir();
        let config = parse(
            &dir,
            "[kafka.tls]\n[kafka.sasl]\nmechanism = \"OAUTHBEARER\"\n\
             token_endpoint = \"https://login.example.com/oauth2/token\"\n\
             client_id = \"sluice\"\nclient_secret_file = \"client-secret\"\n\
             scope = \"kafka\"\n\
             [kafka.sasl.extensions]\nlogicalCluster = \"lkc-1\"\nidentityPoolId = \"pool-2\"",
            &[],
        );
        let expected = BTreeMap::from([
            ("security.protocol", "sasl_ssl".to_owned()),
            ("ssl.ca.location", "probe".to_owned()),
            ("sasl.mechanism", "OAUTHBEARER".to_owned()),
            ("sasl.oauthbearer.method", "oidc".to_owned()),
            (
                "sasl.oauthbearer.token.endpoint.url",
                "https://login.example.com/oauth2/token".to_owned(),
            ),
            ("sasl.oauthbearer.client.id", "sluice".to_owned()),
            ("sasl.oauthbearer.client.secret", CLIENT_SECRET.to_owned()),
            ("sasl.oauthbearer.scope", "kafka".to_owned()),
            (
                "sasl.oauthbearer.extensions",
                "identityPoolId=pool-2,logicalCluster=lkc-1".to_owned(),
            ),
        ]);
        assert_eq!(props(&config), expected);
    }

    #[test]
    fn every_client_carries_the_settings_and_only_the_producer_compresses() {
        let dir = dir();
        let config = parse(
            &dir,
            "compression = \"zstd\"\n[kafka.tls]\n[kafka.sasl]\nmechanism = \"PLAIN\"\n\
             username = \"u\"\npassword_file = \"password\"",
            &[],
        );
        let clients = [
            consumer_config(&config, "b:9093").expect("consumer"),
            group_client_config(&config, "b:9093", "g").expect("tool client"),
            producer_config(&config, "b:9093").expect("producer"),
        ];
        for client in &clients {
            assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(client.get("sasl.password"), Some(PASSWORD));
        }
        assert_eq!(clients[0].get("compression.type"), None);
        assert_eq!(clients[2].get("compression.type"), Some("zstd"));
        let default = parse(&dir, "", &[]);
        let producer = producer_config(&default, "b:9092").expect("producer");
        assert_eq!(producer.get("compression.type"), Some("lz4"));
    }

    #[test]
    fn the_embedded_broker_gets_no_security_settings() {
        let dir = dir();
        let config = parse(
            &dir,
            "bootstrap_servers = \"embedded\"\n[kafka.tls]\nca_file = \"ca.pem\"",
            &[],
        );
        assert_eq!(props(&config), BTreeMap::new());
    }

    #[test]
    fn a_missing_secret_file_names_the_field_and_the_path() {
        let dir = dir();
        let config = parse(
            &dir,
            "[kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"u\"\n\
             password_file = \"secrets/absent\"",
            &[],
        );
        let error = producer_config(&config, "b:9092").expect_err("the file is missing");
        let shown = error.to_string();
        assert!(
            shown.starts_with(&format!(
                "kafka.sasl.password_file = {:?} cannot be read: ",
                dir.path().join("secrets/absent")
            )),
            "{shown}"
        );
        assert!(shown.contains("mount the Secret there"), "{shown}");
    }

    #[test]
    #[ignore = "this build's librdkafka has no libcurl, so no OIDC: its configure script does \
                not find the static libcurl that rdkafka-sys's curl-static feature builds"]
    fn this_build_has_tls_sasl_oidc_and_every_codec() {
        let features = builtin_features();
        for feature in [
            "ssl",
            "sasl_plain",
            "sasl_scram",
            "sasl_oauthbearer",
            "oidc",
        ] {
            assert!(
                features.iter().any(|f| f == feature),
                "{feature} is missing from {features:?}"
            );
        }
        for codec in ["gzip", "snappy", "lz4", "zstd"] {
            assert!(features.iter().any(|f| f == codec), "{codec}: {features:?}");
        }
    }

    #[test]
    fn oauthbearer_in_a_build_without_oidc_is_refused_with_the_reason() {
        if builtin_features().iter().any(|f| f == "oidc") {
            return;
        }
        let dir = dir();
        let config = parse(
            &dir,
            "[kafka.sasl]\nmechanism = \"OAUTHBEARER\"\n\
             token_endpoint = \"https://idp.example.com/token\"\nclient_id = \"c\"\n\
             client_secret_file = \"client-secret\"",
            &[],
        );
        let error = producer_config(&config, "b:9092").expect_err("no OIDC in this build");
        let shown = error.to_string();
        assert!(shown.contains("without OpenID Connect"), "{shown}");
        assert!(!shown.contains(CLIENT_SECRET), "{shown}");
    }

    #[test]
    fn a_refused_credential_is_not_quoted_in_a_client_error() {
        // A property this build lacks is refused with its value.
        let mut c = ClientConfig::new();
        c.set("sasl.oauthbearer.client.secret", CLIENT_SECRET);
        c.set("sasl.password.no.such.property", PASSWORD);
        let created: Result<rdkafka::producer::BaseProducer, _> = c.create();
        let error = redact(created.err().expect("an unknown property is refused"));
        let shown = error.to_string();
        assert!(
            !shown.contains(CLIENT_SECRET) && !shown.contains(PASSWORD),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn librdkafka_accepts_the_settings_of_every_mechanism() {
        use rdkafka::consumer::BaseConsumer;
        use rdkafka::producer::BaseProducer;
        let dir = dir();
        let mechanisms = [
            // (ca.pem here holds no certificate, which librdkafka would refuse.)
            "[kafka.tls]\nverify_hostname = false",
            "[kafka.tls]\n[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\n\
             password_file = \"password\"",
            "[kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"u\"\npassword = \"p\"",
            "[kafka.tls]\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"u\"\n\
             password = \"p\"",
            "compression = \"zstd\"\n[kafka.tls]\n[kafka.sasl]\nmechanism = \"OAUTHBEARER\"\n\
             token_endpoint = \"http://127.0.0.1:9/token\"\nclient_id = \"c\"\n\
             client_secret_file = \"client-secret\"\nscope = \"kafka\"\n\
             [kafka.sasl.extensions]\nlogicalCluster = \"lkc-1\"",
        ];
        let oidc = builtin_features().iter().any(|f| f == "oidc");
        for body in mechanisms {
            if body.contains("OAUTHBEARER") && !oidc {
                // Refused before librdkafka sees it: see the test above.
                continue;
            }
            let config = parse(&dir, body, &[]);
            // Made, not connected: librdkafka checks every property (and
            // that this build has TLS, SASL, OIDC and the codec) here.
            let consumer: Result<BaseConsumer, _> = consumer_config(&config, "127.0.0.1:9")
                .expect("settings")
                .create();
            let producer: Result<BaseProducer, _> = producer_config(&config, "127.0.0.1:9")
                .expect("settings")
                .create();
            assert!(consumer.is_ok(), "{body}: {:?}", consumer.err());
            assert!(producer.is_ok(), "{body}: {:?}", producer.err());
        }
    }

    /// What a client's settings show when they are printed.
    fn shown(client: &ClientConfig) -> String {
        format!("{client:?}")
    }

    #[test]
    fn no_secret_appears_in_the_config_or_the_client_settings_when_printed() {
        let dir = dir();
        let tls_and_scram = parse(
            &dir,
            &format!(
                "[kafka.tls]\ncert_file = \"client.pem\"\nkey_file = \"client.key\"\n\
                 key_password = \"{KEY_PASSWORD}\"\n\
                 [kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"u\"\n\
                 password = \"{PASSWORD}\"\n\
                 [http]\nadmin_token = \"{CLIENT_SECRET}\""
            ),
            &[],
        );
        let oauth = parse(
            &dir,
            "[kafka.sasl]\nmechanism = \"OAUTHBEARER\"\n\
             token_endpoint = \"https://idp.example.com/token\"\nclient_id = \"c\"",
            &[("KAFKA_SASL_CLIENT_SECRET", CLIENT_SECRET)],
        );
        for config in [&tls_and_scram, &oauth] {
            let mut printed = vec![format!("{config:?}"), format!("{config:#?}")];
            // The security properties alone, for the OAUTHBEARER settings
            // even in a build that refuses them.
            let security: ClientConfig = properties(config)
                .expect("the files are readable")
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect();
            printed.push(shown(&security));
            if config.kafka.sasl.as_ref().map(|s| s.mechanism) != Some(SaslMechanism::OauthBearer) {
                printed.push(shown(&consumer_config(config, "b:9093").expect("consumer")));
                printed.push(shown(&producer_config(config, "b:9093").expect("producer")));
            }
            for text in printed {
                for secret in [PASSWORD, KEY_PASSWORD, CLIENT_SECRET] {
                    assert!(!text.contains(secret), "{secret} printed in {text}");
                }
            }
        }
        assert!(format!("{tls_and_scram:?}").contains("password: Some(<redacted>)"));
    }
}
