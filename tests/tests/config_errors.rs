//! Golden tests for every configuration error message, and the `KAFKA_*`
//! overrides of a valid file.
//!
//! Each case is `tests/config_errors/NAME.toml` (the file), `NAME.err` (the
//! expected `ConfigError` message, compared after trimming), and optionally
//! `NAME.env` (`VAR=value` lines, `#` comments; the only environment the case
//! sees: the process environment is never read). The file is parsed in a fresh
//! directory whose `plugins/` holds empty `uppercase.wasm` and `misbehave.wasm`,
//! so a route's module exists unless the case names another one. That
//! directory's path is written `$CONFIG_DIR` in `.err` files.
//!
//! To accept the current messages after changing one on purpose, run
//! `UPDATE_GOLDEN=1 cargo test -p sluice-tests --test config_errors` and
//! review the diff of `tests/config_errors/*.err`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sluice::config::{Acks, Config, KAFKA_VARIABLES, OffsetReset};

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
        let actual = match parse(&text, &env).0 {
            Ok(_) => "(no error: the config was accepted)".to_owned(),
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
    let tested: Vec<&str> = env
        .keys()
        .map(String::as_str)
        .filter(|var| var.starts_with("KAFKA_"))
        .collect();
    let mut documented = KAFKA_VARIABLES.to_vec();
    documented.sort_unstable();
    assert_eq!(tested, documented, "this test sets exactly KAFKA_VARIABLES");

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
