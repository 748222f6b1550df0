//! Connecting to a secured Kafka: the daemon against a broker whose listener
//! speaks only TLS (certificates made by the test), with and without SCRAM
//! users; every way a start can go wrong ends the daemon within about 30 s
//! with one line that says what to fix; a password rotated while it runs; and
//! no secret in anything the daemon shows.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use sluice_tests::broker::{Broker, Certificate, Scram, User};
use sluice_tests::daemon::{DaemonProcess, config_text, module_route};

const PROGRAM: &str = env!("CARGO_BIN_EXE_sluice-test-daemon");
const LONG: Duration = Duration::from_secs(60);
/// How long a start that cannot connect may take to fail.
const FAILS_WITHIN: Duration = Duration::from_secs(30);
/// The password of every test user: a value that no log line, health
/// answer or error may contain.
const PASSWORD: &str = "s3cret-Pa55word-7f4e";

fn users() -> Vec<User> {
    vec![
        User::new("orders-256", PASSWORD, Scram::Sha256),
        User::new("orders-512", PASSWORD, Scram::Sha512),
    ]
}

/// Produces `values` to partition 0 of `topic` through `client`'s
/// settings, in one batch, and waits for the acknowledgements.
async fn produce(client: ClientConfig, topic: &str, values: &[String]) {
    let producer: FutureProducer = client
        .clone()
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let mut deliveries = Vec::new();
    for value in values {
        let record = FutureRecord::<(), str>::to(topic)
            .partition(0)
            .payload(value);
        deliveries.push(producer.send_result(record).expect("queued"));
    }
    for delivery in deliveries {
        assert!(
            matches!(delivery.await, Ok(Ok(_))),
            "a record is acknowledged"
        );
    }
}

/// Reads partition 0 of `topic` from its start through `client`'s settings
/// until `want` records arrived or `LONG` passed: each as its value and
/// its headers' values, as text.
fn read_records(client: ClientConfig, topic: &str, want: usize) -> Vec<(String, Vec<String>)> {
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + LONG;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let mut records = Vec::new();
    while records.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(sluice::kafka::headers::read)
                .unwrap_or_default()
                .into_iter()
                .map(|h| text(&h.value.unwrap_or_default()))
                .collect();
            records.push((text(m.payload().unwrap_or_default()), headers));
        }
    }
    records
}

/// The values of [`read_records`].
fn read(client: ClientConfig, topic: &str, want: usize) -> Vec<String> {
    read_records(client, topic, want)
        .into_iter()
        .map(|(value, _)| value)
        .collect()
}

/// The `[kafka]` lines for a broker's TLS (trusting `ca_file`) and, with
/// `user`, a SCRAM login whose password is read from `password_file`.
fn security(ca_file: &Path, user: Option<&User>, password_file: &Path) -> String {
    let mut text = format!(
        "\n[kafka.tls]\nca_file = {:?}\n",
        ca_file.display().to_string()
    );
    if let Some(user) = user {
        text.push_str(&format!(
            "\n[kafka.sasl]\nmechanism = {:?}\nusername = {:?}\npassword_file = {:?}\n",
            user.mechanism.mechanism(),
            user.name,
            password_file.display().to_string()
        ));
    }
    text
}

/// A file holding `password`, as Kubernetes mounts a Secret.
fn password_file(dir: &Path, password: &str) -> PathBuf {
    let path = dir.join("kafka-password");
    std::fs::write(&path, format!("{password}\n")).expect("password file");
    path
}

/// Runs the daemon on `config` with its log at debug level in `log`;
/// waits up to `within` for it to exit. Its exit status and log.
fn run_until_exit(config: &str, within: Duration, log: &Path) -> (Option<ExitStatus>, String) {
    let file = log.with_extension("toml");
    std::fs::write(&file, config).expect("config file");
    let mut child = Command::new(PROGRAM)
        .args(["run", "--config"])
        .arg(&file)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).expect("log file")))
        .spawn()
        .expect("start the daemon binary");
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    (status, std::fs::read_to_string(log).unwrap_or_default())
}

/// The daemon, configured with `kafka_security`, handles every message of
/// `orders` into `orders.out` on `broker`.
async fn handles_everything(broker: &Broker, kafka_security: &str) {
    broker.create_topic("orders", 1);
    broker.create_topic("orders.out", 1);
    let values: Vec<String> = (0..50).map(|i| format!("order-{i}")).collect();
    produce(broker.client_config(), "orders", &values).await;
    let text = config_text(
        &broker.bootstrap(),
        "secure",
        kafka_security,
        &module_route("uppercase", "orders", "orders.out", ""),
    );
    let daemon = DaemonProcess::start(PROGRAM, &text);
    let out = read(broker.client_config(), "orders.out", values.len());
    assert_eq!(daemon.terminate(), Some(0), "SIGTERM drains and exits 0");
    let expected: Vec<String> = values.iter().map(|v| v.to_uppercase()).collect();
    assert_eq!(out, expected, "every message handled, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_every_message_is_handled() {
    let broker = Broker::start_secure(&[]);
    let tls = broker.tls().expect("tls").clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let unused = password_file(dir.path(), "");
    handles_everything(&broker, &security(&tls.ca_file, None, &unused)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_scram_sha_256_and_sha_512_every_message_is_handled() {
    for user in users() {
        // Each login against a broker whose own clients use it.
        let broker = Broker::start_secure(std::slice::from_ref(&user));
        let tls = broker.tls().expect("tls").clone();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = password_file(dir.path(), PASSWORD);
        handles_everything(&broker, &security(&tls.ca_file, Some(&user), &file)).await;
    }
}

/// A start that cannot connect: the daemon exits non-zero within
/// `FAILS_WITHIN`, with a line that names the brokers and contains every one
/// of `says`; the password appears nowhere in its log.
fn refused_at_start(broker: &Broker, kafka_security: &str, case: &str, says: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(
        &broker.bootstrap(),
        "refused",
        kafka_security,
        &module_route("uppercase", "orders", "orders.out", ""),
    );
    let started = Instant::now();
    let (status, log) = run_until_exit(
        &text,
        FAILS_WITHIN + Duration::from_secs(15),
        &dir.path().join("log"),
    );
    let took = started.elapsed();
    assert!(
        status.is_some_and(|s| !s.success()) && took <= FAILS_WITHIN,
        "{case}: the daemon exits non-zero within {FAILS_WITHIN:?} ({status:?} after {took:?}); \
         its log:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("cannot connect to Kafka"))
        .unwrap_or_else(|| panic!("{case}: a line says why; the log:\n{log}"));
    for part in std::iter::once(broker.bootstrap().as_str()).chain(says.iter().copied()) {
        assert!(line.contains(part), "{case}: {part:?} in {line}");
    }
    assert!(
        !log.contains(PASSWORD),
        "{case}: the password is in the log:\n{log}"
    );
}

#[test]
fn a_start_with_a_wrong_login_or_certificate_ends_with_what_to_fix() {
    let broker = Broker::start_secure(&users());
    let tls = broker.tls().expect("tls").clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = password_file(dir.path(), PASSWORD);
    let wrong_dir = tempfile::tempdir().expect("tempdir");
    let wrong = password_file(wrong_dir.path(), "not-the-password");
    let user = &users()[0];
    let nobody = User::new("nobody", PASSWORD, Scram::Sha512);
    refused_at_start(
        &broker,
        &security(&tls.ca_file, Some(user), &wrong),
        "a wrong password",
        &[
            "SCRAM-SHA-256",
            "\"orders-256\"",
            "kafka.sasl.password_file",
        ],
    );
    refused_at_start(
        &broker,
        &security(&tls.ca_file, Some(&nobody), &good),
        "an unknown user",
        &["SCRAM-SHA-512", "\"nobody\""],
    );
    refused_at_start(
        &broker,
        &security(&tls.other_ca_file, Some(user), &good),
        "a CA that did not sign the broker's certificate",
        &[
            &format!("{:?}", tls.other_ca_file.display().to_string()),
            "kafka.tls.ca_file",
        ],
    );
    refused_at_start(
        &broker,
        "",
        "plaintext at a TLS listener",
        &["expects TLS", "[kafka.tls]"],
    );
}

#[test]
fn a_start_against_an_expired_or_misnamed_certificate_or_a_plaintext_listener_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unused = password_file(dir.path(), "");
    // OpenSSL 3 does not tell librdkafka why a certificate failed, so one
    // message names the CA file and every likely cause.
    for (certificate, case, says) in [
        (
            Certificate::Expired,
            "an expired certificate",
            "has expired",
        ),
        (
            Certificate::OtherName,
            "a certificate for another name",
            "not for the name",
        ),
    ] {
        let broker = Broker::start_secure_as(&[], certificate);
        let tls = broker.tls().expect("tls").clone();
        let ca = format!("{:?}", tls.ca_file.display().to_string());
        refused_at_start(
            &broker,
            &security(&tls.ca_file, None, &unused),
            case,
            &[says, &ca, "kafka.tls.ca_file", "kafka.tls.verify_hostname"],
        );
    }
    let plaintext = Broker::start();
    let other = Broker::start_secure(&[]);
    let tls = other.tls().expect("tls");
    refused_at_start(
        &plaintext,
        &security(&tls.ca_file, None, &unused),
        "TLS at a plaintext listener",
        &["does not speak TLS"],
    );
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a reader of `topic` sees: every value and header, as text.
fn everything_in(client: ClientConfig, topic: &str, want: usize) -> String {
    let records = read_records(client, topic, want);
    assert_eq!(records.len(), want, "{topic} holds {want} records");
    records
        .into_iter()
        .flat_map(|(value, headers)| std::iter::once(value).chain(headers))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_log_health_metrics_plugins_dead_letters_or_check() {
    let user = users()[1].clone();
    let broker = Broker::start_secure(std::slice::from_ref(&user));
    let tls = broker.tls().expect("tls").clone();
    for topic in ["orders", "orders.out", "dlq"] {
        broker.create_topic(topic, 1);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = password_file(dir.path(), PASSWORD);
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], sluice_tests::broker::free_port()));
    let text = config_text(
        &broker.bootstrap(),
        "audited",
        &format!(
            "dead_letter_topic = \"dlq\"\n{}",
            security(&tls.ca_file, Some(&user), &file)
        ),
        &format!(
            "[http]\nlisten = \"{http}\"\n{}",
            module_route("misbehave", "orders", "orders.out", "")
        ),
    );
    // Debug level: every line the daemon can write.
    let log = dir.path().join("sluice.log");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, &text).expect("config");
    let daemon = Command::new(PROGRAM)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
        .spawn()
        .expect("the daemon starts");
    let mut daemon = KillOnDrop(daemon);
    // One message handled, one failing for good: a dead letter.
    let producer: FutureProducer = broker.client_config().create().expect("producer");
    for value in [&b"ok:fine"[..], &b"permanent"[..]] {
        producer
            .send(
                FutureRecord::<(), [u8]>::to("orders")
                    .partition(0)
                    .payload(value),
                Duration::from_secs(10),
            )
            .await
            .expect("acknowledged");
    }
    let mut shown = everything_in(broker.client_config(), "orders.out", 1);
    shown.push_str(&everything_in(broker.client_config(), "dlq", 1));
    for path in [
        "/health/live",
        "/health/ready",
        "/health/event-bus",
        "/metrics",
        "/plugins",
    ] {
        shown.push_str(&sluice_tests::http::get(http, path).await.body);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status();
    let _ = daemon.0.wait();
    shown.push_str(&std::fs::read_to_string(&log).expect("the log"));
    let check = Command::new(PROGRAM)
        .arg("check")
        .arg(sluice_tests::artifacts::UPPERCASE)
        .args(["--value", "hi", "--config", "output_topic=x"])
        .env("KAFKA_SASL_PASSWORD", PASSWORD)
        .output()
        .expect("sluice check runs");
    shown.push_str(&String::from_utf8_lossy(&check.stdout));
    shown.push_str(&String::from_utf8_lossy(&check.stderr));
    assert!(
        shown.contains("FINE") || shown.contains("fine"),
        "the daemon handled the message"
    );
    assert!(
        shown.contains("asked to fail permanently"),
        "the dead letter was read"
    );
    assert!(
        !shown.contains(PASSWORD),
        "the password appears in what the daemon shows"
    );
}

/// The offset `group` committed on partition 0 of `topic`, read through
/// `client`'s settings.
fn committed(client: ClientConfig, group: &str, topic: &str) -> Option<i64> {
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", group)
        .create()
        .expect("offsets reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    match consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .ok()?
        .find_partition(topic, 0)?
        .offset()
    {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// Waits until `done` holds for the answer to `GET path`, or panics.
async fn until_http(
    http: std::net::SocketAddr,
    path: &str,
    what: &str,
    done: impl Fn(&sluice_tests::http::Response) -> bool,
) -> sluice_tests::http::Response {
    let deadline = Instant::now() + LONG;
    loop {
        let response = sluice_tests::http::get(http, path).await;
        if done(&response) {
            return response;
        }
        assert!(
            Instant::now() < deadline,
            "{what}; last answer: {response:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_rotated_while_running_holds_consumption_until_the_secret_file_has_the_new_one()
{
    let user = users()[0].clone();
    let mut broker = Broker::start_secure(std::slice::from_ref(&user));
    let tls = broker.tls().expect("tls").clone();
    broker.create_topic("orders", 1);
    broker.create_topic("orders.out", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = password_file(dir.path(), PASSWORD);
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], sluice_tests::broker::free_port()));
    let text = config_text(
        &broker.bootstrap(),
        "rotated",
        &security(&tls.ca_file, Some(&user), &file),
        &format!(
            "[http]\nlisten = \"{http}\"\n{}",
            module_route("uppercase", "orders", "orders.out", "")
        ),
    );
    let daemon = DaemonProcess::start_logging_to(PROGRAM, &text, Some(&dir.path().join("log")));
    let first: Vec<String> = (0..20).map(|i| format!("before-{i}")).collect();
    produce(broker.client_config(), "orders", &first).await;
    assert_eq!(read(broker.client_config(), "orders.out", 20).len(), 20);
    let group = "test.rotated";
    let deadline = Instant::now() + LONG;
    while committed(broker.client_config(), group, "orders") != Some(20) {
        assert!(Instant::now() < deadline, "the first 20 are committed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The password changes on the broker (which restarts to change it); the
    // daemon still has the old one.
    let rotated = User::new(&user.name, "rotated-Pa55word-91c2", user.mechanism);
    broker.change_password(&rotated);
    let second: Vec<String> = (0..20).map(|i| format!("after-{i}")).collect();
    produce(broker.client_config(), "orders", &second).await;
    until_http(http, "/health/ready", "readiness turns false", |r| {
        r.status == 503
    })
    .await;
    let health = until_http(http, "/health/event-bus", "health says why", |r| {
        r.json()["broker_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused the SCRAM-SHA-256 login"))
    })
    .await;
    assert_eq!(health.json()["healthy"], false);
    assert_eq!(
        committed(broker.client_config(), group, "orders"),
        Some(20),
        "nothing is committed while the login is refused"
    );

    // The new password reaches the daemon through its secret file.
    std::fs::write(&file, format!("{}\n", rotated.password)).expect("new secret");
    let out = read(broker.client_config(), "orders.out", 40);
    assert_eq!(out.len(), 40, "the messages held meanwhile are handled");
    until_http(http, "/health/ready", "readiness comes back", |r| {
        r.status == 200
    })
    .await;
    let deadline = Instant::now() + LONG;
    while committed(broker.client_config(), group, "orders") != Some(40) {
        assert!(Instant::now() < deadline, "all 40 are committed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(daemon.terminate(), Some(0));
}
