//! The `sluice` command as a user runs it: `check` describing and invoking a
//! plugin, `run` refusing a bad config or a module a route cannot use, and
//! `demo` on the embedded broker.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

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
        text.contains("sluice:handler/batch@0.1.0 { handle-batch }"),
        "{text}"
    );
    assert!(text.contains("batches  yes"), "{text}");
    assert!(
        text.contains("sluice:handler/host@0.1.0 { config, handling }"),
        "imports only what it uses: {text}"
    );
    // The limits the module was tried under, as a route's defaults set them.
    for limit in [
        "1000 ms per call (waits in WASI calls included)",
        "64 MiB of memory and tables per instance",
        "1000 outputs, 1000000 bytes per output, 64 headers per output, 16777216 bytes in all",
        "reasons cut at 1024 bytes",
    ] {
        assert!(text.contains(limit), "{limit}: {text}");
    }
}

#[test]
fn check_reports_the_entry_point_that_is_called_when_batch_exports_have_another_type() {
    // `mistyped` exports `handle-batch` and `handle-packed`, both with other
    // types than the contract's: neither is ever called, so `check` must not
    // say that the module batches, and it says why.
    let out = sluice(&["check", artifacts::MISTYPED, "--value", "ab"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("batches  no: one call per message"), "{text}");
    assert!(text.contains("outcome  ok: 1 output"), "{text}");
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        !errors.contains('\x1b'),
        "no colour codes when stderr is not a terminal: {errors:?}"
    );
    for export in ["handle-batch", "handle-packed"] {
        assert!(
            errors.contains(&format!("{export} ")) && errors.contains("mistyped"),
            "a warning names {export} and the file: {errors}"
        );
    }
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

    // Valid, but its 320 MiB of initial memory do not fit in the memory
    // limit checked against (a route's, 64 MiB by default) ...
    let out = sluice(&["check", artifacts::OVERSIZED]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("oversized.wasm cannot be instantiated")
            && err.contains("its initial memory must fit in --memory-limit-mb 64"),
        "{err}"
    );
    // ... and do fit in a larger one.
    let out = sluice(&["check", artifacts::OVERSIZED, "--memory-limit-mb", "400"]);
    assert!(out.status.success(), "{out:?}");
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

#[test]
fn run_fails_fast_on_a_bad_config_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "[kafka]\ntimeout_seconds = 0\n\n[[routes]]\ntopic = \"orders\"\nmodule = \"enrich\"\n",
    )
    .expect("write config");
    let out = sluice(&["run", "--config", config.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid config file"), "{err}");
    assert!(
        err.contains("kafka.timeout_seconds = 0 is not allowed: from 1 to 300"),
        "{err}"
    );

    std::fs::write(
        &config,
        "[[routes]]\ntopic = \"orders\"\nmodule = \"enrich\"\n",
    )
    .expect("write config");
    let out = sluice(&["run", "--config", config.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[0].module = \"enrich\""),
        "a missing module is named: {err}"
    );
    assert!(err.contains("enrich.wasm does not exist"), "{err}");
}

#[test]
fn run_refuses_a_route_whose_memory_limit_its_module_does_not_fit_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).expect("plugins dir");
    std::fs::copy(artifacts::UPPERCASE, plugins.join("uppercase.wasm")).expect("copy plugin");
    let config = dir.path().join("sluice.toml");
    // The module's memory starts above 1 MiB (its stack alone is 1 MiB):
    // every message of the route would fail.
    std::fs::write(
        &config,
        "[plugins]\ndir = \"plugins\"\n\n[http]\nenabled = false\n\n\
         [[routes]]\ntopic = \"orders\"\nmodule = \"uppercase\"\nmemory_limit_mb = 1\n",
    )
    .expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config", config.to_str().expect("utf-8 path")])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sluice binary runs");
    // Were the route accepted, the daemon would go on to look for a broker:
    // stop it after a minute rather than wait for ever.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).expect("read stderr");
        let _ = done_tx.send(());
        text
    });
    if done_rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    let status = child.wait().expect("wait for sluice");
    let err = reader.join().expect("stderr reader");
    assert_eq!(status.code(), Some(1), "exits at startup: {err}");
    assert!(
        err.contains("uppercase.wasm cannot be instantiated")
            && err.contains("memory_limit_mb = 1 of the route for topic `orders`"),
        "names the module, the route and its setting: {err}"
    );
}

#[test]
fn demo_shows_every_sample_with_its_output_or_dead_letter() {
    // The demo config with the plugins directory pointing at the built
    // examples, under the module names the config uses.
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).expect("plugins dir");
    for (name, path) in [
        ("uppercase", artifacts::UPPERCASE),
        ("json-router", artifacts::JSON_ROUTER),
        ("misbehave", artifacts::MISBEHAVE),
    ] {
        std::fs::copy(path, plugins.join(format!("{name}.wasm"))).expect("copy plugin");
    }
    let demo = include_str!("../../examples/demo.toml")
        .replace("dir = \"../plugins\"", "dir = \"plugins\"");
    let config = dir.path().join("demo.toml");
    std::fs::write(&config, demo).expect("write config");

    let out = sluice(&[
        "demo",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--exit-when-done",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("every sample message has its output or dead letter"),
        "{text}"
    );
    assert!(
        text.contains(r#"→ text.out key="sample-0" value="HELLO, SLUICE""#),
        "{text}"
    );
    assert!(text.contains("→ events.high"), "{text}");
    for error_type in [
        "HandlerError",
        "HandlerTrap",
        "HandlerTimeout",
        "MemoryLimitExceeded",
    ] {
        assert!(
            text.contains(&format!("✗ dlq-events {error_type} from")),
            "{error_type}: {text}"
        );
    }
}
