//! The deployment recipes in `deploy/`, checked as far as they can be
//! without a container runtime or a cluster:
//!
//! - the systemd unit passes `systemd-analyze verify` and scores "OK" in
//!   `systemd-analyze security`, and leaves out the two settings that break
//!   the JIT, whose effect is shown on `sluice check` with the kernel
//!   mechanisms behind them;
//! - the Kubernetes manifests validate against the Kubernetes API schemas
//!   (`kubernetes-validate --strict`, from PyPI), and agree with the
//!   configuration they ship: probes, scrape port, grace period, volumes;
//! - the Dockerfile is read, not built (its base images come from a
//!   registry the tests do not reach): two stages, an unprivileged user,
//!   the health check and the volumes where the shipped config points.
//!
//! `scripts/test` installs `systemd-analyze` (Debian's `systemd`) and
//! `kubernetes-validate` (into `.tools/`) when they are missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sluice::config::Config;

const CLI: &str = env!("CARGO_BIN_EXE_sluice-test-daemon");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_owned()
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// Runs a tool, naming it and how to get it if it is not installed.
fn run(mut command: Command, install: &str) -> Output {
    let program = command.get_program().to_string_lossy().into_owned();
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); {install}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses config text as `sluice run` would, with its plugins directory
/// moved to a fresh one holding (empty) `modules`, and `HOSTNAME` set to
/// `hostname`. Returns the config and the directory's guard.
fn parse_shipped(
    text: &str,
    modules: &[&str],
    hostname: &str,
    vars: &BTreeMap<String, String>,
) -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    for m in modules {
        std::fs::write(dir.path().join(format!("{m}.wasm")), b"").expect("module file");
    }
    let shipped = "dir = \"/var/lib/sluice/plugins\"";
    assert!(
        text.contains(shipped),
        "the config keeps its modules in /var/lib/sluice/plugins"
    );
    let moved = text.replace(
        shipped,
        &format!("dir = {:?}", dir.path().display().to_string()),
    );
    let env = |var: &str| match var {
        "HOSTNAME" => Some(hostname.to_owned()),
        _ => vars.get(var).cloned(),
    };
    let config = Config::parse(&moved, dir.path(), &env)
        .unwrap_or_else(|e| panic!("the shipped config is refused: {e}\n{text}"));
    (config, dir)
}

/// The port of an `http.listen` address.
fn listen_port(config: &Config) -> u16 {
    config
        .http
        .listen
        .parse::<std::net::SocketAddr>()
        .expect("http.listen is an address")
        .port()
}

// ---- systemd ----

const SYSTEMD_INSTALL: &str = "install Debian's `systemd` package (scripts/test does this)";

/// The unit, written beside a copy whose ExecStart runs the test build of
/// `sluice` (verify checks that the program exists).
fn unit_under_test() -> (tempfile::TempDir, PathBuf) {
    let unit = read("deploy/systemd/sluice.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/sluice run --config /etc/sluice/sluice.toml"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluice.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/sluice", CLI)).expect("write the unit");
    (dir, path)
}

#[test]
fn the_systemd_unit_verifies_and_its_sandbox_scores_ok() {
    let (_dir, unit) = unit_under_test();
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify").arg(&unit);
    let out = run(verify, SYSTEMD_INSTALL);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // Exposure from 0 (locked down) to 10 (none): 2.0 or less is "OK".
    let mut security = Command::new("systemd-analyze");
    security
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&unit);
    let out = run(security, SYSTEMD_INSTALL);
    let report = text(&out.stdout);
    assert!(
        out.status.success() && report.contains("Overall exposure level"),
        "systemd-analyze security: {report}{}",
        text(&out.stderr)
    );
}

/// The settings of the unit that are in force (comments left out).
fn unit_settings() -> Vec<String> {
    read("deploy/systemd/sluice.service")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// `sluice check uppercase.wasm --value hi`, with `limit` applied to the
/// child before it runs.
fn check_under(limit: impl Fn() -> std::io::Result<()> + Send + Sync + 'static) -> Output {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(CLI);
    command.args(["check", sluice_tests::artifacts::UPPERCASE, "--value", "hi"]);
    // SAFETY: the closure only makes one system call (prctl or setrlimit)
    // between fork and exec, which is async-signal-safe.
    unsafe { command.pre_exec(limit) };
    command.output().expect("run sluice check")
}

#[test]
fn the_unit_leaves_out_what_breaks_the_jit_and_the_jit_does_need_it() {
    let settings = unit_settings();
    for key in ["MemoryDenyWriteExecute=", "LimitAS="] {
        assert!(
            !settings.iter().any(|s| s.starts_with(key)),
            "the unit sets {key}, which breaks the JIT"
        );
    }
    let fine = check_under(|| Ok(()));
    assert!(fine.status.success(), "{}", text(&fine.stderr));

    // RLIMIT_AS, what LimitAS= sets: 2 GiB of address space is less than
    // one instance's reservation.
    let limited = check_under(|| {
        let limit = libc::rlimit {
            rlim_cur: 2 << 30,
            rlim_max: 2 << 30,
        };
        // SAFETY: setrlimit reads the struct it is given.
        match unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    });
    let said = text(&limited.stderr);
    assert!(
        !limited.status.success() && said.contains("failed to reserve"),
        "under LimitAS: {said}"
    );

    // MemoryDenyWriteExecute= forbids making written pages executable; the
    // kernel's own switch for it is prctl(PR_SET_MDWE), Linux 6.3 and later.
    const PR_SET_MDWE: libc::c_int = 65;
    const PR_GET_MDWE: libc::c_int = 66;
    const PR_MDWE_REFUSE_EXEC_GAIN: libc::c_ulong = 1;
    // SAFETY: PR_GET_MDWE takes no pointer.
    if unsafe { libc::prctl(PR_GET_MDWE, 0, 0, 0, 0) } < 0 {
        eprintln!(
            "skipped the MemoryDenyWriteExecute half: this kernel has no PR_SET_MDWE \
             (Linux 6.3 or later has it)"
        );
        return;
    }
    let denied = check_under(|| {
        // SAFETY: PR_SET_MDWE takes flags, no pointer.
        match unsafe { libc::prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    });
    let said = text(&denied.stderr);
    assert!(
        !denied.status.success() && said.contains("unable to make memory executable"),
        "under MemoryDenyWriteExecute: {said}"
    );
}

// ---- container ----

/// The Dockerfile's instructions, continuation lines joined, comments out.
fn dockerfile() -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

#[test]
fn the_container_image_is_built_in_two_stages_and_runs_unprivileged_with_a_health_check() {
    let all = dockerfile();
    let stages: Vec<usize> = (0..all.len())
        .filter(|&i| all[i].starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a run stage: {all:#?}");
    assert!(all[stages[0]].ends_with(" AS build"), "{}", all[stages[0]]);
    let run_stage = &all[stages[1]..];
    let find = |word: &str| {
        run_stage
            .iter()
            .filter(|i| i.starts_with(word))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        find("COPY --from=build ")
            .iter()
            .any(|i| i.ends_with("/usr/local/bin/sluice /usr/local/bin/sluice")),
        "the run stage takes only the binary from the build"
    );
    let user = find("USER ");
    assert_eq!(user.len(), 1, "{user:?}");
    let uid = user[0]["USER ".len()..]
        .split(':')
        .next()
        .unwrap_or_default();
    assert!(!matches!(uid, "0" | "root" | ""), "runs as {uid}");

    let shipped = read("deploy/sluice.toml");
    let (config, _dir) = parse_shipped(&shipped, &["uppercase"], "a-host", &BTreeMap::new());
    let port = listen_port(&config);
    assert_eq!(find("EXPOSE "), [format!("EXPOSE {port}")]);
    let health = find("HEALTHCHECK ");
    assert!(
        health.len() == 1 && health[0].contains(&format!("http://127.0.0.1:{port}/health/live")),
        "{health:?}"
    );
    assert!(find("COPY deploy/sluice.toml /etc/sluice/sluice.toml").len() == 1);
    assert_eq!(
        find("CMD "),
        [r#"CMD ["run", "--config", "/etc/sluice/sluice.toml"]"#]
    );
    let volumes = find("VOLUME ").join(" ");
    let cache = config.compile_cache_dir().expect("a compile cache");
    for dir in [
        config_dir(&shipped, "dir"),
        cache.parent().map(Path::to_owned),
    ] {
        let dir = dir.expect("a directory").display().to_string();
        assert!(
            volumes.contains(&format!("\"{dir}\"")),
            "{dir} is not a volume: {volumes}"
        );
    }
}

/// The value of a `key = "..."` line of config text, as a path.
fn config_dir(text: &str, key: &str) -> Option<PathBuf> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .and_then(|(_, v)| v.split('"').nth(1))
        .map(PathBuf::from)
}

// ---- Kubernetes ----

const MANIFESTS: [&str; 4] = [
    "deploy/kubernetes/configmap.yaml",
    "deploy/kubernetes/statefulset.yaml",
    "deploy/kubernetes/service.yaml",
    "deploy/kubernetes/poddisruptionbudget.yaml",
];

const VALIDATE_INSTALL: &str = "install it with `python3 -m venv .tools/kubernetes-validate && \
     .tools/kubernetes-validate/bin/pip install kubernetes-validate==1.37.0` (scripts/test does \
     this)";

/// A program of the `kubernetes-validate` environment in `.tools/`.
fn validate_tool(program: &str) -> Command {
    Command::new(root().join(".tools/kubernetes-validate/bin").join(program))
}

#[test]
fn the_kubernetes_manifests_match_the_api_schemas() {
    let mut validate = validate_tool("kubernetes-validate");
    validate
        .arg("--strict")
        .args(MANIFESTS.map(|m| root().join(m)));
    let out = run(validate, VALIDATE_INSTALL);
    assert!(
        out.status.success(),
        "kubernetes-validate --strict: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout).matches(" passed for resource ").count(),
        MANIFESTS.len(),
        "{}",
        text(&out.stdout)
    );
}

/// Every manifest, by kind, read as JSON by the validator's YAML parser.
fn manifests() -> BTreeMap<String, Value> {
    let mut python = validate_tool("python");
    python
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f))]))",
        ])
        .args(MANIFESTS.map(|m| root().join(m)));
    let out = run(python, VALIDATE_INSTALL);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON from the YAML");
    docs.into_iter()
        .map(|d| (d["kind"].as_str().unwrap_or_default().to_owned(), d))
        .collect()
}

#[test]
fn the_kubernetes_manifests_agree_with_the_config_they_ship() {
    let all = manifests();
    let toml = all["ConfigMap"]["data"]["sluice.toml"]
        .as_str()
        .expect("the ConfigMap holds sluice.toml");
    // The pod's variables: a value as written, one from a Secret as a
    // stand-in naming the Secret and its key.
    let vars: BTreeMap<String, String> =
        all["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                let value = match v["value"].as_str() {
                    Some(value) => value.to_owned(),
                    None => {
                        let from = &v["valueFrom"]["secretKeyRef"];
                        format!("<{}/{}>", from["name"], from["key"])
                    }
                };
                (v["name"].as_str().unwrap_or_default().to_owned(), value)
            })
            .collect();
    let (config, _dir) = parse_shipped(toml, &["uppercase"], "sluice-1", &vars);
    assert_eq!(
        config.kafka.group_instance_id.as_deref(),
        Some("orders-sluice-1"),
        "static membership from the pod's name"
    );
    let port = listen_port(&config);

    let set = &all["StatefulSet"];
    let pod = &set["spec"]["template"];
    let spec = &pod["spec"];
    let container = &spec["containers"][0];
    let grace = spec["terminationGracePeriodSeconds"]
        .as_f64()
        .expect("a grace period");
    let stop = config.processing.drain_timeout_seconds + config.kafka.timeout_seconds as f64;
    assert!(
        grace > stop,
        "grace {grace} s must exceed drain plus flush, {stop} s"
    );

    assert_eq!(container["ports"][0]["containerPort"], port);
    assert_eq!(container["ports"][0]["name"], "http");
    for (probe, path) in [
        ("readinessProbe", "/health/ready"),
        ("livenessProbe", "/health/live"),
        ("startupProbe", "/health/live"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "http", "{probe}");
    }
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // Where the config looks is where the pod mounts: the config read-only,
    // the modules from a volume that is no ConfigMap, the cache writable on
    // a read-only root.
    let mount = |path: &Path| {
        container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("-")))
            .cloned()
            .unwrap_or_else(|| panic!("nothing is mounted at {}", path.display()))
    };
    let volume = |name: &Value| {
        spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == *name)
            .cloned()
            .expect("a mounted volume is declared")
    };
    assert_eq!(container["args"][2], "/etc/sluice/sluice.toml");
    let config_mount = mount(Path::new("/etc/sluice/sluice.toml"));
    assert_eq!(config_mount["readOnly"], true);
    assert_eq!(
        volume(&config_mount["name"])["configMap"]["name"],
        all["ConfigMap"]["metadata"]["name"]
    );
    let plugins = mount(Path::new("/var/lib/sluice/plugins"));
    assert!(volume(&plugins["name"]).get("configMap").is_none());
    let cache = mount(&config.compile_cache_dir().expect("a compile cache"));
    assert_ne!(cache["readOnly"], true, "the compile cache is writable");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);

    // The Kafka credentials come from a Secret: the password as the file
    // kafka.sasl.password_file names, the user as a variable.
    let sasl = config
        .kafka
        .sasl
        .as_ref()
        .expect("the shipped config logs in");
    let password_file = sasl.password_file.as_ref().expect("a password file");
    let credentials = mount(password_file);
    assert_eq!(credentials["readOnly"], true);
    let secret = &volume(&credentials["name"])["secret"];
    let secret_name = secret["secretName"].as_str().expect("a Secret volume");
    let env = container["env"].as_array().expect("variables");
    let user = env
        .iter()
        .find(|v| v["name"] == "KAFKA_SASL_USERNAME")
        .expect("KAFKA_SASL_USERNAME is set");
    assert_eq!(user["valueFrom"]["secretKeyRef"]["name"], secret_name);
    assert!(
        env.iter().all(|v| v.get("value").is_none_or(|value| {
            !v["name"].as_str().unwrap_or("").contains("PASSWORD") && value.is_string()
        })),
        "no password is written in the manifest: {env:?}"
    );

    let labels = &pod["metadata"]["labels"];
    assert_eq!(set["spec"]["selector"]["matchLabels"], *labels);
    assert_eq!(
        all["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        *labels
    );
    assert_eq!(all["Service"]["spec"]["selector"], *labels);
    assert_eq!(
        set["spec"]["serviceName"],
        all["Service"]["metadata"]["name"]
    );
}
