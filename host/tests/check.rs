//! `sluice check` as a user runs it: the description of a valid plugin, a
//! single invocation, and the exit codes.

use std::process::{Command, Output};

use sluice_test_artifacts as artifacts;

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the sluice binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_describes_a_valid_plugin() {
    let out = sluice(&["check", artifacts::UPPERCASE]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let bytes = std::fs::read(artifacts::UPPERCASE).expect("built");
    assert!(text.contains("a valid Sluice handler"), "{text}");
    assert!(
        text.contains("world    sluice:handler/plugin@0.1.0"),
        "{text}"
    );
    assert!(
        text.contains(&format!("size     {} bytes", bytes.len())),
        "{text}"
    );
    assert!(text.contains("sha256   "), "{text}");
    assert!(
        text.contains("sluice:handler/handler@0.1.0 { handle }"),
        "{text}"
    );
    assert!(
        text.contains("sluice:handler/host@0.1.0 { config }"),
        "imports only what it uses: {text}"
    );
}

#[test]
fn check_with_a_value_invokes_the_handler_once() {
    let out = sluice(&[
        "check",
        artifacts::UPPERCASE,
        "--value",
        "hi there",
        "--key",
        "k1",
        "--header",
        "source=cli",
        "--config",
        "output_topic=loud",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("outcome  ok: 1 output"), "{text}");
    assert!(
        text.contains(r#"topic=loud key="k1" value="HI THERE" headers={source="cli"}"#),
        "{text}"
    );
}

#[test]
fn check_reports_a_failed_invocation_and_exits_non_zero() {
    let out = sluice(&[
        "check",
        artifacts::MISBEHAVE,
        "--value",
        "loop",
        "--timeout-ms",
        "100",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).contains("outcome  failed: handler did not return within 100 ms"));

    let out = sluice(&["check", artifacts::MISBEHAVE, "--value", "retry:2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("retryable error"), "{out:?}");

    let out = sluice(&[
        "check",
        artifacts::MISBEHAVE,
        "--value",
        "retry:2",
        "--attempt",
        "2",
    ]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn check_refuses_an_invalid_plugin_with_its_reason() {
    let out = sluice(&["check", artifacts::WRONG_WORLD]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not export `handle`"), "{err}");
    assert!(err.contains("wrong_world.wasm"), "{err}");
}

#[test]
fn help_explains_the_commands() {
    let out = sluice(&["--help"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("check"));
    let out = sluice(&["check", "--help"]);
    for flag in [
        "--value",
        "--key",
        "--header",
        "--config",
        "--timeout-ms",
        "--memory-limit-mb",
    ] {
        assert!(stdout(&out).contains(flag), "check --help mentions {flag}");
    }
}
