//! The `sluice` binary's `dlq` commands as the dead-letter tests run
//! them, and dead letters written by hand. Included by `dlq_tool.rs` and
//! `dlq_replay.rs`.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use sluice_tests::daemon::config_text;

const CLI: &str = env!("CARGO_BIN_EXE_sluice-test-daemon");

/// Runs the `sluice` binary off the async threads.
pub async fn sluice(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(CLI)
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run the sluice binary")
    })
    .await
    .expect("the CLI runner does not panic")
}

/// `sluice dlq COMMAND --config FILE ARGS... --format json`, which must
/// succeed; returns its parsed output.
pub async fn dlq_json(command: &str, config: &Path, args: &[&str]) -> Value {
    let mut all = vec![
        "dlq".to_owned(),
        command.to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
        "--format".to_owned(),
        "json".to_owned(),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let out = sluice(all.clone()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "`sluice {}` failed: {}\n{stdout}",
        all.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Writes config text into `dir` as `sluice.toml`.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).expect("write the config file");
    path
}

/// A dead letter written by hand the way the daemon writes it: the
/// original record `topic/partition@offset` with a text key and value.
pub fn hand_envelope(topic: &str, partition: i32, offset: i64, key: &str, value: &str) -> Value {
    serde_json::json!({
        "original_topic": topic,
        "original_message": {
            "key": key, "value": value, "offset": offset.to_string(), "partition": partition,
            "timestamp": null, "headers": [],
        },
        "failure_reason": "written by the test",
        "failure_timestamp": "2026-01-01T00:00:00.000Z",
        "correlation_id": format!("corr-{topic}-{offset}"),
        "retry_count": 0,
        "error_type": "HandlerError",
        "module": "uppercase",
        "module_hash": "h",
    })
}

/// A config whose one route consumes `topic` (nothing runs it) and whose
/// dead-letter topic is `dlq`.
pub fn replay_config(dir: &Path, bootstrap: &str, group: &str, topic: &str) -> PathBuf {
    let route = format!("[[routes]]\ntopic = {topic:?}\nmodule = \"uppercase\"\n");
    write_config(
        dir,
        &config_text(bootstrap, group, "dead_letter_topic = \"dlq\"", &route),
    )
}
