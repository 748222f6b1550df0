//! The librdkafka properties each mechanism produces, the files read, what
//! this build accepts, and that no secret is printed.

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

#[test]
fn the_tools_build_their_clients_with_the_settings() {
    let dir = dir();
    let config = parse(
        &dir,
        "dead_letter_topic = \"dlq\"\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-512\"\n\
         username = \"u\"\npassword_file = \"absent\"",
        &[],
    );
    let names_the_file = |error: &ConfigError| matches!(error, ConfigError::File { field, .. } if field == "kafka.sasl.password_file");
    // `sluice dlq list`: fails on the settings, before any connection.
    let timeout = std::time::Duration::from_millis(10);
    match crate::replay::read_dead_letters(&config, &["dlq".to_owned()], timeout) {
        Err(crate::replay::ReplayError::Settings(e)) => assert!(names_the_file(&e), "{e}"),
        other => panic!("the dead-letter reader did not read the settings: {other:?}"),
    }
    // `sluice offsets show` and its check for live members.
    match crate::rewind::partition_states(&config, &["t".to_owned()]) {
        Err(crate::rewind::RewindError::Settings(e)) => assert!(names_the_file(&e), "{e}"),
        other => panic!("the offsets tool did not read the settings: {other:?}"),
    }
    match crate::rewind::describe_group(&config) {
        Err(crate::rewind::RewindError::Settings(e)) => assert!(names_the_file(&e), "{e}"),
        other => panic!("the offsets tool did not read the settings: {other:?}"),
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
