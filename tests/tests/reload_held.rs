//! A config reload is prepared (its modules compiled and tried) beside the
//! consumer loop: while a preparation is held, as a slow compile would hold
//! it, the running routes keep flowing and shutdown is not delayed; once it
//! is released, the new routes apply.
//!
//! The hold is an injected fault that is global to the process, so this
//! file has one test and no other reloads.

use std::time::Duration;

use sluice::pipeline::faults;
use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text};
use sluice_tests::kafka::{Record, produce_values, read_topic};

const LONG: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(1);

fn route(topic: &str) -> String {
    format!(
        "[[routes]]\ntopic = \"{topic}\"\nmodule = \"uppercase\"\noutput_topics = [\"{topic}.out\"]\n"
    )
}

fn texts(bootstrap: &str, topic: &str, n: usize) -> Vec<String> {
    read_topic(bootstrap, topic, 1, n, LONG, SETTLE)
        .iter()
        .map(Record::text)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_and_shutdown_answers_while_a_reload_is_prepared() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in ["a", "a.out", "b", "b.out", "c", "c.out"] {
        broker.create_topic(topic, 1);
    }
    let dir = tempfile::tempdir().expect("config dir");
    let path = dir.path().join("sluice.toml");
    let write = |routes: &str| {
        let tmp = dir.path().join("sluice.toml.partial");
        std::fs::write(&tmp, config_text(&bootstrap, "held", "", routes)).expect("write config");
        std::fs::rename(&tmp, &path).expect("rename config");
    };
    write(&route("a"));
    let config = sluice::config::Config::load_with(&path, &|_| None).expect("valid config");
    let daemon = Daemon::start(config);
    let mut reloads = daemon.status.config_reloads();
    // Once route a has handled a message, the config file is watched.
    produce_values(&bootstrap, "a", 1, &["first".to_owned()]).await;
    assert_eq!(texts(&bootstrap, "a.out", 1), ["FIRST"]);

    // Route b is added by an edit whose preparation is held.
    let held = faults::hold_next_reload();
    write(&(route("a") + &route("b")));
    tokio::time::timeout(LONG, held.started)
        .await
        .expect("the reload starts preparing")
        .expect("the hold is armed");
    let values: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    produce_values(&bootstrap, "a", 1, &values).await;
    produce_values(&bootstrap, "b", 1, &["early".to_owned()]).await;
    let upper: Vec<String> = ["FIRST".to_owned()]
        .into_iter()
        .chain(values.iter().map(|v| v.to_uppercase()))
        .collect();
    assert_eq!(
        texts(&bootstrap, "a.out", upper.len()),
        upper,
        "route a flows while the reload is prepared"
    );
    assert_eq!(*reloads.borrow(), (0, 0), "the reload is not applied yet");
    assert!(daemon.status.route("b").is_none());

    // Released, the reload applies and route b takes what waited for it.
    held.release.send(()).expect("the preparation waits");
    tokio::time::timeout(LONG, reloads.wait_for(|r| *r == (1, 0)))
        .await
        .expect("the reload applies once prepared")
        .expect("status lives");
    assert_eq!(texts(&bootstrap, "b.out", 1), ["EARLY"]);

    // A reload still being prepared does not hold shutdown.
    let held = faults::hold_next_reload();
    write(&(route("a") + &route("b") + &route("c")));
    tokio::time::timeout(LONG, held.started)
        .await
        .expect("the reload starts preparing")
        .expect("the hold is armed");
    // drain_timeout_seconds is 5 in the test config.
    let drain = Duration::from_secs(10);
    tokio::time::timeout(drain, daemon.stop())
        .await
        .expect("the daemon stops while a reload is held in preparation");
    drop(held.release);
}
