//! Golden tests for every configuration error message, and the `KAFKA_*`
//! overrides of a valid file.
//!
//! Each case is `tests/config_errors/NAME.toml` (the file), `NAME.err` (the
//! expected `ConfigError` message, compared after trimming), and optionally
//! `NAME.env` (`VAR=value` lines, `#` comments; the only environment the case
//! sees: the process environment is never read). The file is parsed in a fresh
//! directory whose `plugins/` holds empty `uppercase.wasm` and `misbehave.wasm`,
//! so a route's module exists unless the case names another one. That
//! directory's path is written `$CONFIG_DIR` in `.err` files. A file that
//! parses is also made into the clients' settings, which is where the
//! certificate and secret files it names are read: a case may pin that
//! error too.
//!
//! To accept the current messages after changing one on purpose, run
//! `UPDATE_GOLDEN=1 cargo test -p sluice-tests --test config_errors` and
//! review the diff of `tests/config_errors/*.err`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sluice::config::{
    Acks, Compression, Config, KAFKA_VARIABLES, OffsetReset, SaslMechanism, SecurityProtocol,
};

/// Modules present in every case's plugins directory.
const MODULES: [&str; 2] = ["uppercase", "misbehave"];

/// What stands for the case's directory in `.err` files.
const CONFIG_DIR: &str = "$CONFIG_DIR";

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config_errors")
}

/// A directory with `plugins/<module>.wasm` for every module of [`MODULES`].
fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    fs::create_dir(dir.path().join("plugins")).expect("create plugins/");
    for module in MODULES {
        fs::write(dir.path().join(format!("plugins/{module}.wasm")), b"")
            .expect("write an empty module");
    }
    dir
}

/// Reads `VAR=value` lines; blank lines and `#` comments are skipped.
fn read_env(path: &Path) -> BTreeMap<String, String> {
    let Ok(text) = fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (var, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: {line:?} is not VAR=value", path.display()));
            (var.trim().to_owned(), value.to_owned())
        })
        .collect()
}

/// Parses `text` as the config file of a fresh [`config_dir`].
fn parse(
    text: &str,
    env: &BTreeMap<String, String>,
) -> (Result<Config, String>, tempfile::TempDir) {
    parse_with_modules(text, env, &[])
}

/// Like [`parse`], with more (empty) modules in the plugins directory.
fn parse_with_modules(
    text: &str,
    env: &BTreeMap<String, String>,
    extra_modules: &[&str],
) -> (Result<Config, String>, tempfile::TempDir) {
    let dir = config_dir();
    for module in extra_modules {
        fs::write(dir.path().join(format!("plugins/{module}.wasm")), b"")
            .expect("write an empty module");
    }
    fs::write(dir.path().join("sluice.toml"), text).expect("copy the case into its directory");
    let lookup = |var: &str| env.get(var).cloned();
    let result = Config::parse(text, dir.path(), &lookup).map_err(|e| {
        e.to_string()
            .replace(&dir.path().display().to_string(), CONFIG_DIR)
    });
    (result, dir)
}

/// Makes the settings of the consumer and the producer, reading the files
/// the config names, as `sluice run` does before it connects.
fn configure_clients(config: &Config, dir: &tempfile::TempDir) -> Result<(), String> {
    sluice::kafka::consumer_config(config, "localhost:9092")
        .and_then(|_| sluice::kafka::producer_config(config, "localhost:9092"))
        .map(|_| ())
        .map_err(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), CONFIG_DIR)
        })
}

#[test]
fn every_config_error_message_matches_its_golden_file() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut tomls: Vec<PathBuf> = fs::read_dir(cases_dir())
        .expect("tests/config_errors exists")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    tomls.sort();
    assert!(!tomls.is_empty(), "no cases in {}", cases_dir().display());

    let mut failures = Vec::new();
    for toml_path in &tomls {
        let name = toml_path
            .file_stem()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let text = fs::read_to_string(toml_path).expect("read the case");
        let env = read_env(&toml_path.with_extension("env"));
        let (result, dir) = parse(&text, &env);
        let actual = match result.and_then(|config| configure_clients(&config, &dir)) {
            Ok(()) => "(no error: the config was accepted)".to_owned(),
            Err(message) => message.trim().to_owned(),
        };
        let err_path = toml_path.with_extension("err");
        if update {
            fs::write(&err_path, format!("{actual}\n")).expect("write the .err file");
            continue;
        }
        match fs::read_to_string(&err_path) {
            Err(_) => failures.push(format!(
                "{name}: {} is missing; the actual message is:\n    {actual}",
                err_path.display()
            )),
            Ok(expected) if expected.trim().replace("\r\n", "\n") != actual => {
                failures.push(format!(
                    "{name}:\n  expected: {}\n  actual:   {}",
                    indent(expected.trim()),
                    indent(&actual)
                ));
            }
            Ok(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} config error cases do not match (UPDATE_GOLDEN=1 rewrites the .err files):\n\n{}",
        failures.len(),
        tomls.len(),
        failures.join("\n\n")
    );
}

/// The credentials the cases write (in the file or in a variable): no
/// message may quote them.
const CASE_SECRETS: [&str; 2] = ["hunter2-secret", "73519"];

#[test]
fn no_config_error_message_quotes_a_secret() {
    for entry in fs::read_dir(cases_dir()).expect("tests/config_errors exists") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|ext| ext == "err") {
            let message = fs::read_to_string(&path).expect("read the .err file");
            for secret in CASE_SECRETS {
                assert!(
                    !message.contains(secret),
                    "{} quotes the secret {secret}: {message}",
                    path.display()
                );
            }
        }
    }
}

/// Aligns the continuation lines of a multi-line message under its first.
fn indent(message: &str) -> String {
    message.replace('\n', "\n            ")
}

#[test]
fn every_err_file_has_its_case() {
    let orphans: Vec<String> = fs::read_dir(cases_dir())
        .expect("tests/config_errors exists")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "err" || ext == "env")
        })
        .filter(|path| !path.with_extension("toml").is_file())
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        orphans.is_empty(),
        "files without a .toml case: {orphans:?}"
    );
}

const MINIMAL: &str = r#"
[kafka]

[[routes]]
topic = "orders"
module = "uppercase"
"#;

#[test]
fn a_minimal_config_gets_the_event_bus_defaults() {
    let (config, dir) = parse(MINIMAL, &BTreeMap::new());
    let config = config.expect("the minimal config is valid");
    let k = &config.kafka;
    assert_eq!(k.bootstrap_servers, "localhost:9092");
    assert_eq!(config.group_id(), "local.default");
    assert_eq!(k.auto_offset_reset, OffsetReset::Latest);
    assert_eq!(k.dead_letter_topic, None);
    assert_eq!(k.timeout_seconds, 30);
    assert_eq!(k.max_retry_attempts, 3);
    assert_eq!(k.retry_backoff_base, 1.0);
    assert_eq!(k.circuit_breaker_threshold, 5);
    assert_eq!(k.circuit_breaker_reset_timeout, 30.0);
    assert_eq!(k.consumer_sleep_interval, 0.1);
    assert!(k.enable_auto_commit);
    assert_eq!(k.acks, Acks::All);
    assert!(k.enable_idempotence);
    assert!(k.librdkafka.is_empty());
    assert_eq!(k.group_instance_id, None, "a new member at each start");
    assert_eq!(
        k.partition_assignment_strategy, None,
        "librdkafka's default"
    );
    assert_eq!(config.plugins_dir(), dir.path().join("plugins"));
    let route = &config.routes[0];
    assert_eq!(
        (route.topic.as_str(), route.module.as_str()),
        ("orders", "uppercase")
    );
    assert_eq!((route.timeout_ms, route.memory_limit_mb), (1000, 64));
    assert_eq!(route.max_retry_attempts(k), 3);
}

#[test]
fn every_kafka_variable_overrides_its_field() {
    // The file sets every field to a value that is neither the default nor
    // the variable's, so each assertion below can only pass by the override.
    let file = r#"
[kafka]
bootstrap_servers = "file:9092"
environment = "file"
group = "file"
auto_offset_reset = "latest"
dead_letter_topic = "file-dlq"
timeout_seconds = 20
max_retry_attempts = 4
retry_backoff_base = 0.5
retry_backoff_max = 100.0
circuit_breaker_threshold = 7
circuit_breaker_reset_timeout = 20.0
consumer_sleep_interval = 0.2
enable_auto_commit = true
acks = "all"
enable_idempotence = true
group_instance_id = "file-1"

[[routes]]
topic = "orders"
module = "uppercase"
"#;
    let env: BTreeMap<String, String> = [
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka1:9092,kafka2:9092"),
        ("KAFKA_ENVIRONMENT", "prod"),
        ("KAFKA_GROUP", "my-service"),
        ("KAFKA_TIMEOUT_SECONDS", "60"),
        ("KAFKA_MAX_RETRY_ATTEMPTS", "5"),
        ("KAFKA_RETRY_BACKOFF_BASE", "2.5"),
        ("KAFKA_RETRY_BACKOFF_MAX", "120.5"),
        ("KAFKA_CIRCUIT_BREAKER_THRESHOLD", "10"),
        ("KAFKA_CIRCUIT_BREAKER_RESET_TIMEOUT", "60.5"),
        ("KAFKA_CONSUMER_SLEEP_INTERVAL", "0.05"),
        ("KAFKA_AUTO_OFFSET_RESET", "earliest"),
        ("KAFKA_ENABLE_AUTO_COMMIT", "false"),
        ("KAFKA_ACKS", "1"),
        ("KAFKA_ENABLE_IDEMPOTENCE", "false"),
        ("KAFKA_DEAD_LETTER_TOPIC", "dlq-events"),
        ("KAFKA_GROUP_INSTANCE_ID", "orders-{hostname}"),
        ("HOSTNAME", "sluice-2"),
    ]
    .into_iter()
    .map(|(var, value)| (var.to_owned(), value.to_owned()))
    .collect();
    let mut tested: Vec<&str> = env
        .keys()
        .map(String::as_str)
        .filter(|var| var.starts_with("KAFKA_"))
        .chain(
            SECURITY_OVERRIDES
                .iter()
                .flat_map(|(_, env)| env.iter().map(|(var, _)| *var)),
        )
        .collect();
    tested.sort_unstable();
    tested.dedup();
    let mut documented = KAFKA_VARIABLES.to_vec();
    documented.sort_unstable();
    assert_eq!(
        tested, documented,
        "this test and every_security_variable_overrides_its_field set exactly KAFKA_VARIABLES"
    );

    let (config, _dir) = parse(file, &env);
    let config = config.expect("the overridden config is valid");
    let k = &config.kafka;
    assert_eq!(k.bootstrap_servers, "kafka1:9092,kafka2:9092");
    assert_eq!(k.environment, "prod");
    assert_eq!(k.group, "my-service");
    assert_eq!(config.group_id(), "prod.my-service");
    assert_eq!(k.timeout_seconds, 60);
    assert_eq!(k.max_retry_attempts, 5);
    assert_eq!(k.retry_backoff_base, 2.5);
    assert_eq!(k.retry_backoff_max, 120.5);
    assert_eq!(k.circuit_breaker_threshold, 10);
    assert_eq!(k.circuit_breaker_reset_timeout, 60.5);
    assert_eq!(k.consumer_sleep_interval, 0.05);
    assert_eq!(k.auto_offset_reset, OffsetReset::Earliest);
    assert!(!k.enable_auto_commit);
    assert_eq!(k.acks, Acks::Leader);
    assert!(!k.enable_idempotence);
    assert_eq!(k.dead_letter_topic.as_deref(), Some("dlq-events"));
    assert_eq!(
        k.group_instance_id.as_deref(),
        Some("orders-sluice-2"),
        "{{hostname}} is filled in from HOSTNAME"
    );
}

/// Files whose `[kafka]` security settings differ from what the variables
/// set, and the variables; the secrets and their files cannot all be set at
/// once (one of a password and its file, one mechanism), hence four cases.
const SECURITY_OVERRIDES: &[(&str, &[(&str, &str)])] = &[
    (
        "compression = \"gzip\"\nsecurity_protocol = \"sasl_plaintext\"\n\
         [kafka.tls]\nenabled = true\nca_file = \"file-ca.pem\"\n\
         [kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"file\"\npassword = \"file\"",
        &[
            ("KAFKA_COMPRESSION", "zstd"),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SSL_CA_FILE", "/etc/kafka/ca.pem"),
            ("KAFKA_SSL_CERT_FILE", "/etc/kafka/client.pem"),
            ("KAFKA_SSL_KEY_FILE", "/etc/kafka/client.key"),
            ("KAFKA_SSL_KEY_PASSWORD", "env-key-password"),
            ("KAFKA_SSL_VERIFY_HOSTNAME", "false"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME", "env-user"),
            ("KAFKA_SASL_PASSWORD", "env-password"),
        ],
    ),
    (
        "[kafka.tls]\ncert_file = \"c.pem\"\nkey_file = \"c.key\"\n\
         [kafka.sasl]\nmechanism = \"PLAIN\"",
        &[
            ("KAFKA_SSL_KEY_PASSWORD_FILE", "/run/secrets/key-password"),
            ("KAFKA_SASL_MECHANISM", "OAUTHBEARER"),
            ("KAFKA_SASL_TOKEN_ENDPOINT", "https://idp.example.com/token"),
            ("KAFKA_SASL_CLIENT_ID", "env-client"),
            (
                "KAFKA_SASL_CLIENT_SECRET_FILE",
                "/run/secrets/client-secret",
            ),
            ("KAFKA_SASL_SCOPE", "kafka"),
        ],
    ),
    (
        "[kafka.sasl]\nmechanism = \"OAUTHBEARER\"\n\
         token_endpoint = \"https://idp.example.com/token\"\nclient_id = \"c\"",
        &[("KAFKA_SASL_CLIENT_SECRET", "env-client-secret")],
    ),
    (
        "[kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"u\"",
        &[("KAFKA_SASL_PASSWORD_FILE", "/run/secrets/password")],
    ),
];

#[test]
fn every_security_variable_overrides_its_field() {
    let configs: Vec<Config> = SECURITY_OVERRIDES
        .iter()
        .map(|(kafka, env)| {
            let text = MINIMAL.replace("[kafka]", &format!("[kafka]\n{kafka}"));
            let env = env
                .iter()
                .map(|(var, value)| ((*var).to_owned(), (*value).to_owned()))
                .collect();
            parse(&text, &env)
                .0
                .unwrap_or_else(|e| panic!("{kafka}: the overridden config is refused: {e}"))
        })
        .collect();

    let k = &configs[0].kafka;
    assert_eq!(k.compression, Compression::Zstd);
    assert_eq!(k.security_protocol, Some(SecurityProtocol::SaslSsl));
    let tls = k.tls.as_ref().expect("[kafka.tls]");
    assert_eq!(tls.ca_file, Some("/etc/kafka/ca.pem".into()));
    assert_eq!(tls.cert_file, Some("/etc/kafka/client.pem".into()));
    assert_eq!(tls.key_file, Some("/etc/kafka/client.key".into()));
    let key_password = tls.key_password.as_ref().map(|s| s.expose());
    assert_eq!(key_password, Some("env-key-password"));
    assert!(!tls.verify_hostname);
    let sasl = k.sasl.as_ref().expect("[kafka.sasl]");
    assert_eq!(sasl.mechanism, SaslMechanism::ScramSha512);
    assert_eq!(sasl.username.as_deref(), Some("env-user"));
    assert_eq!(
        sasl.password.as_ref().map(|s| s.expose()),
        Some("env-password")
    );

    let k = &configs[1].kafka;
    let tls = k.tls.as_ref().expect("[kafka.tls]");
    assert_eq!(
        tls.key_password_file,
        Some("/run/secrets/key-password".into())
    );
    let sasl = k.sasl.as_ref().expect("[kafka.sasl]");
    assert_eq!(sasl.mechanism, SaslMechanism::OauthBearer);
    assert_eq!(
        sasl.token_endpoint.as_deref(),
        Some("https://idp.example.com/token")
    );
    assert_eq!(sasl.client_id.as_deref(), Some("env-client"));
    assert_eq!(
        sasl.client_secret_file,
        Some("/run/secrets/client-secret".into())
    );
    assert_eq!(sasl.scope.as_deref(), Some("kafka"));

    let sasl = configs[2].kafka.sasl.as_ref().expect("[kafka.sasl]");
    let client_secret = sasl.client_secret.as_ref().map(|s| s.expose());
    assert_eq!(client_secret, Some("env-client-secret"));

    let sasl = configs[3].kafka.sasl.as_ref().expect("[kafka.sasl]");
    assert_eq!(sasl.password_file, Some("/run/secrets/password".into()));
}

#[test]
fn without_security_settings_the_clients_speak_plaintext_and_compress_with_lz4() {
    let (config, _dir) = parse(MINIMAL, &BTreeMap::new());
    let k = config.expect("the minimal config is valid").kafka;
    assert_eq!(k.security_protocol, None);
    assert_eq!(k.effective_security_protocol(), SecurityProtocol::Plaintext);
    assert_eq!((k.tls, k.sasl), (None, None));
    assert_eq!(k.compression, Compression::Lz4);
}

#[test]
fn every_connection_example_is_valid() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/connect");
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/connecting.md"))
            .expect("docs/connecting.md exists");
    let mut names: Vec<PathBuf> = fs::read_dir(&examples)
        .expect("examples/connect exists")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 5,
        "examples/connect has {} files",
        names.len()
    );
    for path in &names {
        let name = path.file_name().expect("a file name").to_string_lossy();
        let text = fs::read_to_string(path).expect("read the example");
        let config = parse(&text, &BTreeMap::new())
            .0
            .unwrap_or_else(|e| panic!("examples/connect/{name} is refused: {e}"));
        let k = &config.kafka;
        assert_ne!(
            k.effective_security_protocol(),
            SecurityProtocol::Plaintext,
            "examples/connect/{name} connects without TLS or SASL"
        );
        assert!(
            doc.contains(&format!("examples/connect/{name}")),
            "docs/connecting.md does not show examples/connect/{name}"
        );
    }
}

#[test]
fn an_unreadable_file_is_named_in_the_error() {
    let dir = config_dir();
    let path = dir.path().join("missing.toml");
    let error = Config::load_with(&path, &|_| None).expect_err("the file does not exist");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("cannot read config file {}: ", path.display())),
        "{message}"
    );
}

#[test]
fn the_compile_cache_is_relative_to_the_config_file_and_an_empty_path_turns_it_off() {
    let with = |line: &str| {
        let text = MINIMAL.replace("[kafka]", &format!("[plugins]\n{line}\n[kafka]"));
        let (config, dir) = parse(&text, &BTreeMap::new());
        let config = config.unwrap_or_else(|e| panic!("{line}: {e}"));
        (config.compile_cache_dir(), dir)
    };
    let (cache, dir) = with(r#"cache_dir = "state/modules""#);
    assert_eq!(cache, Some(dir.path().join("state/modules")));
    assert_eq!(
        with(r#"cache_dir = "/var/cache/sluice""#).0,
        Some("/var/cache/sluice".into())
    );
    assert_eq!(with(r#"cache_dir = """#).0, None);
}

#[test]
fn the_documented_example_is_valid() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let doc = fs::read_to_string(&doc_path).expect("docs/configuration.md exists");
    let example = doc
        .split_once("## A complete example")
        .and_then(|(_, rest)| rest.split_once("```toml\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(toml, _)| toml)
        .expect("docs/configuration.md has a toml block under \"A complete example\"");
    let (config, dir) = parse_with_modules(example, &BTreeMap::new(), &["json-router"]);
    let config = config.unwrap_or_else(|e| panic!("the documented example is refused: {e}"));
    assert_eq!(config.group_id(), "prod.orders");
    let modules: Vec<&str> = config.routes.iter().map(|r| r.module.as_str()).collect();
    assert_eq!(modules, ["uppercase", "json-router", "misbehave"]);
    assert_eq!(config.plugins_dir(), dir.path().join("plugins"));
}

#[test]
fn crc_checks_may_be_set_off_but_not_on() {
    let file = |value: &str| {
        format!(
            "[kafka.librdkafka]\n\"check.crcs\" = {value}\n\n[[routes]]\ntopic = \"orders\"\nmodule = \"uppercase\"\n"
        )
    };
    let env = BTreeMap::new();
    for off in ["false", "\"false\"", "\"F\"", "\"0\"", "0"] {
        let (parsed, _dir) = parse(&file(off), &env);
        assert!(parsed.is_ok(), "check.crcs = {off}: {parsed:?}");
    }
    for on in ["true", "\"true\"", "\"t\"", "\"1\"", "1"] {
        let (parsed, _dir) = parse(&file(on), &env);
        let error = parsed.expect_err(on);
        assert!(
            error.contains("would be lost"),
            "check.crcs = {on}: {error}"
        );
    }
}
