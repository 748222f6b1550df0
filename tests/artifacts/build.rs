//! Builds every guest component with one nested `cargo build` (Rust) and
//! `scripts/build-polyglot` (Python and JavaScript), and writes
//! `OUT_DIR/artifacts.rs` with a path constant for each.
//!
//! The nested build uses its own target directory, `<workspace>/target/guests`,
//! shared by all profiles of the outer build: reusing the outer target
//! directory would deadlock on its lock. Variables that the outer cargo sets
//! for build scripts (or that configure the outer build) are removed so they
//! cannot leak into the guests' build.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

const TARGET: &str = "wasm32-wasip2";

/// A guest component: the constant naming it, its package, and what it is.
struct Guest {
    constant: &'static str,
    package: &'static str,
    doc: &'static str,
}

const GUESTS: &[Guest] = &[
    Guest {
        constant: "UPPERCASE",
        package: "uppercase",
        doc: "`examples/uppercase`: upper-cases (ASCII) each value to route config `output_topic` \
              (default `<topic>.out`), keeping key and headers.",
    },
    Guest {
        constant: "JSON_ROUTER",
        package: "json-router",
        doc: "`examples/json-router`: routes JSON objects to `high_topic`/`default_topic` by \
              `route_field`/`route_value`, adding `\"routed_by\": \"json-router\"`; \
              non-objects are permanent errors.",
    },
    Guest {
        constant: "MISBEHAVE",
        package: "misbehave",
        doc: "`examples/misbehave`: the value is an instruction (`ok:T`, `retry:N`, `permanent`, \
              `panic`, `loop`, `oom`, `stack`, `fanout:N`, `slow:MS`, else pass-through).",
    },
    Guest {
        constant: "SANDBOX_PROBE",
        package: "sandbox-probe",
        doc: "`tests/fixtures/sandbox-probe`: tries files, directories, a socket and the \
              environment; emits `fs=..;dir=..;net=..;env=N` to topic `probe` and one line each \
              to stdout and stderr.",
    },
    Guest {
        constant: "WRONG_WORLD",
        package: "wrong-world",
        doc: "`tests/fixtures/wrong-world`: a component for world `acme:other/tool@0.1.0` \
              (exports `run: func() -> string`), not `sluice:handler/plugin`.",
    },
    Guest {
        constant: "UNKNOWN_IMPORT",
        package: "unknown-import",
        doc: "`tests/fixtures/unknown-import`: exports the real handler but imports \
              `acme:vault/secrets@1.0.0` (`get`), which the host does not provide.",
    },
    Guest {
        constant: "FUTURE_MAJOR",
        package: "future-major",
        doc: "`tests/fixtures/future-major`: the handler world at `sluice:handler@1.0.0`, a \
              major version the host does not speak.",
    },
    Guest {
        constant: "TAGGED",
        package: "tagged",
        doc: "`tests/fixtures/tagged`: emits `<tag>|<value>` to route config `output_topic`; \
              the tag `sluice-tag-00000` sits once in the data segment for tests to patch.",
    },
    Guest {
        constant: "UNBATCHED",
        package: "unbatched",
        doc: "`tests/fixtures/unbatched`: the plain `plugin` world, `handle` only (no batch \
              export); emits the value reversed to `<topic>.out`, `fail` is a permanent error.",
    },
    Guest {
        constant: "MISTYPED",
        package: "mistyped",
        doc: "`tests/fixtures/mistyped`: `handle` as the contract has it (the value passed on \
              to `<topic>.out`), `handle-batch` and `handle-packed` with other types.",
    },
    Guest {
        constant: "MIRROR",
        package: "mirror",
        doc: "`tests/fixtures/mirror`: one output to `<topic>.out` with the message's key, value \
              and headers plus `partition`, `offset`, `attempt` and `timestamp` headers; \
              `retry`/`permanent` fail, `none` emits nothing, `twice` adds an empty output.",
    },
    Guest {
        constant: "CHATTY",
        package: "chatty",
        doc: "`tests/fixtures/chatty`: per message, 1000 host `log` calls and 100 KiB to \
              stdout; no outputs.",
    },
    Guest {
        constant: "MISTYPED_HANDLE",
        package: "mistyped-handle",
        doc: "`tests/fixtures/mistyped-handle`: `handle` takes and returns a string (not the \
              contract's types), next to a `handle-packed` of the contract's type.",
    },
    Guest {
        constant: "OVERSIZED",
        package: "oversized",
        doc: "`tests/fixtures/oversized`: passes values on to `<topic>.out`, but its linear \
              memory starts at 320 MiB, more than any pool slot: it cannot be instantiated.",
    },
    Guest {
        constant: "REFUSALS",
        package: "refusals",
        doc: "`tests/fixtures/refusals`: `big:N` emits N bytes to route config `output_topic`, \
              `to:TOPIC` emits to TOPIC, `error:N` is a permanent error with an N-byte reason; \
              anything else passes on.",
    },
    Guest {
        constant: "HOSTILE",
        package: "hostile",
        doc: "`tests/fixtures/hostile`: the value is an attack on a limit (`sleep:MS`, `poll:MS`, \
              `outputs:N`, `bytes:N`, `headers:N`, `topic:N`, `reason:N`, `log:N`, `print:N`), \
              else pass-through to `<topic>.out`.",
    },
];

/// The Python and JavaScript guests, built by `scripts/build-polyglot` into
/// the Rust guests' folder (so the daemon tests' plugins directory holds
/// them too) as `<folder name>.wasm`.
const POLYGLOT: &[Guest] = &[
    Guest {
        constant: "PYTHON_UPPERCASE",
        package: "examples/python-uppercase",
        doc: "`examples/python-uppercase`: the `uppercase` example in Python (module \
              `python-uppercase`).",
    },
    Guest {
        constant: "JS_ROUTER",
        package: "examples/js-router",
        doc: "`examples/js-router`: the `json-router` example in JavaScript, tagging objects \
              `\"routed_by\": \"js-router\"` (module `js-router`).",
    },
    Guest {
        constant: "PYTHON_MISBEHAVE",
        package: "tests/polyglot/python-misbehave",
        doc: "`tests/polyglot/python-misbehave`: the value is an instruction (`ok:T`, \
              `permanent`, `retry`, `raise`, `bad-return`, `loop`, `oom`, `recurse`, `log`, \
              `headers`), else pass-through to `<topic>.out`.",
    },
    Guest {
        constant: "JS_MISBEHAVE",
        package: "tests/polyglot/js-misbehave",
        doc: "`tests/polyglot/js-misbehave`: the value is an instruction (`ok:T`, `permanent`, \
              `retry`, `throw`, `throw-string`, `bad-return`, `loop`, `oom`, `recurse`, `log`, \
              `headers`), else pass-through to `<topic>.out`.",
    },
];

/// Set by the outer cargo for this build script, or configuring the outer
/// build; none of them describe the guests' build.
const LEAKY_VARS: &[&str] = &[
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_MAKEFLAGS",
    "CARGO_TARGET_DIR",
    "DEBUG",
    "HOST",
    "MAKEFLAGS",
    "MFLAGS",
    "NUM_JOBS",
    "OPT_LEVEL",
    "OUT_DIR",
    "PROFILE",
    "RUSTC_LINKER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "RUSTDOCFLAGS",
    "RUSTFLAGS",
    "TARGET",
];
const LEAKY_PREFIXES: &[&str] = &[
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_MANIFEST_",
    "CARGO_PKG_",
];

fn main() {
    let manifest_dir = PathBuf::from(var("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .unwrap_or_else(|| fail("tests/artifacts is not two levels below the workspace root"))
        .to_path_buf();
    for watched in [
        "wit",
        "guest-sdk",
        "wire",
        "examples",
        "tests/fixtures",
        "tests/polyglot",
        "scripts/build-polyglot",
        "scripts/polyglot",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    check_target_installed();

    let target_dir = root.join("target").join("guests");
    build_guests(&root, &target_dir);

    let wasm_dir = target_dir.join(TARGET).join("guest");
    build_polyglot(&root, &wasm_dir);

    let mut code = String::new();
    let rust = GUESTS
        .iter()
        .map(|guest| (guest, format!("{}.wasm", guest.package.replace('-', "_"))));
    let polyglot = POLYGLOT.iter().map(|guest| {
        let folder = guest.package.rsplit('/').next().unwrap_or(guest.package);
        (guest, format!("{folder}.wasm"))
    });
    for (guest, file) in rust.chain(polyglot) {
        let path = wasm_dir.join(file);
        check_component(&path);
        let path = path
            .to_str()
            .unwrap_or_else(|| fail(&format!("{} is not UTF-8", path.display())));
        let _ = writeln!(code, "/// {}", guest.doc);
        let _ = writeln!(code, "pub const {}: &str = {path:?};", guest.constant);
    }
    let _ = writeln!(
        code,
        "/// Every Rust guest above, as `(package name, path)`."
    );
    let _ = writeln!(code, "pub const ALL: &[(&str, &str)] = &[");
    for guest in GUESTS {
        let _ = writeln!(code, "    ({:?}, {}),", guest.package, guest.constant);
    }
    let _ = writeln!(code, "];");

    let out = PathBuf::from(var("OUT_DIR")).join("artifacts.rs");
    fs::write(&out, code).unwrap_or_else(|e| fail(&format!("writing {}: {e}", out.display())));
}

/// Fails early, with the fix, when rustup has not installed the target.
fn check_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .unwrap_or_else(|e| fail(&format!("running {rustc:?}: {e}")));
    let libdir = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !Path::new(libdir.trim()).is_dir() {
        fail(&format!(
            "the {TARGET} target is not installed, so the guest components cannot be built.\n\
             Install it with:\n\n    rustup target add {TARGET}\n"
        ));
    }
}

fn build_guests(root: &Path, target_dir: &Path) {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root)
        .args([
            "build",
            "--profile",
            "guest",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(target_dir);
    for guest in GUESTS {
        cmd.args(["-p", guest.package]);
    }
    run(&mut cmd, "building the guest components failed");
}

/// Runs `cmd` without the outer build's variables; on failure, stops the
/// build with `failure`, the exit status and what the command printed.
fn run(cmd: &mut Command, failure: &str) {
    remove_leaky_vars(cmd);
    eprintln!("running: {cmd:?}");
    let output = cmd
        .output()
        .unwrap_or_else(|e| fail(&format!("running {cmd:?}: {e}")));
    if !output.status.success() {
        fail(&format!(
            "{failure} ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
}

fn remove_leaky_vars(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if LEAKY_VARS.contains(&key) || LEAKY_PREFIXES.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(key);
        }
    }
}

/// Builds the Python and JavaScript guests into `wasm_dir` (installing the
/// tools into `<workspace>/.tools` the first time; unchanged guests are not
/// rebuilt).
fn build_polyglot(root: &Path, wasm_dir: &Path) {
    let mut cmd = Command::new("bash");
    cmd.current_dir(root)
        .arg(root.join("scripts").join("build-polyglot"))
        .arg(wasm_dir);
    for guest in POLYGLOT {
        cmd.arg(root.join(guest.package));
    }
    run(
        &mut cmd,
        "building the Python and JavaScript guests failed; they need python3 (3.10 or later), \
         Node.js (18 or later) and PyPI and npm to install the tools the first time",
    );
}

/// Checks that `path` is a component, not a core module: the build must have
/// produced what the host loads.
fn check_component(path: &Path) {
    let bytes =
        fs::read(path).unwrap_or_else(|e| fail(&format!("reading {}: {e}", path.display())));
    // `\0asm`, then version 0x0d and layer 1 (a component; core modules are layer 0).
    if bytes.get(..8) != Some(b"\0asm\x0d\x00\x01\x00") {
        fail(&format!(
            "{} is not a WebAssembly component",
            path.display()
        ));
    }
}

fn var(name: &str) -> String {
    env::var(name).unwrap_or_else(|_| fail(&format!("cargo did not set {name}")))
}

fn fail(message: &str) -> ! {
    panic!("{message}")
}
