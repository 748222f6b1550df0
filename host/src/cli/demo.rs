//! `sluice demo`: the daemon on the embedded broker with a sample stream, its
//! outputs and dead letters printed as they arrive.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _};
use tokio_util::sync::CancellationToken;

use super::check::show_bytes;
use crate::config::{Config, EMBEDDED_BROKER};
use crate::kafka::{self, EmbeddedBroker};
use crate::pipeline::{self, CORRELATION_HEADER};

#[derive(Debug, Args)]
pub(super) struct DemoArgs {
    /// The configuration file; its bootstrap_servers is replaced by the
    /// embedded broker.
    #[arg(long, short, default_value = "examples/demo.toml")]
    config: PathBuf,

    /// Exit once every sample message has an output or a dead letter,
    /// instead of running until Ctrl-C.
    #[arg(long)]
    exit_when_done: bool,
}

/// Sample values for a module of the examples; other modules get text.
fn samples(module: &str) -> &'static [&'static str] {
    match module {
        "uppercase" => &[
            "hello, sluice",
            "every message handled in order",
            "bytes in, bytes out",
        ],
        "json-router" => &[
            r#"{"priority":"high","order":1001,"item":"pager"}"#,
            r#"{"priority":"low","order":1002,"item":"stapler"}"#,
            "this is not JSON",
        ],
        "misbehave" => &[
            "ok:all good",
            "retry:2",
            "fanout:3",
            "slow:50",
            "permanent",
            "panic",
            "loop",
            "oom",
            "stack",
        ],
        _ => &["hello from the sluice demo"],
    }
}

pub(super) fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let mut config = super::load_config_with(&args.config, |var| {
        // The demo always runs on the embedded broker.
        (var == "KAFKA_BOOTSTRAP_SERVERS")
            .then(|| EMBEDDED_BROKER.to_owned())
            .or_else(|| std::env::var(var).ok())
    })?;
    config.kafka.bootstrap_servers = EMBEDDED_BROKER.to_owned();
    super::tokio_runtime()?.block_on(run_demo(config, args.exit_when_done))
}

async fn run_demo(config: Config, exit_when_done: bool) -> anyhow::Result<ExitCode> {
    let broker = EmbeddedBroker::start(&pipeline::all_topics(&config))?;
    let bootstrap = broker.bootstrap_servers().to_owned();
    println!("embedded broker at {bootstrap} (in memory, for development only)");
    println!("  produce to it with any client, e.g. kcat -b {bootstrap} -t <topic> -P");

    let stop = CancellationToken::new();
    let daemon = {
        let stop = stop.clone();
        let config = config.clone();
        let bootstrap = bootstrap.clone();
        let status = pipeline::Status::new(&config);
        tokio::spawn(async move {
            pipeline::run_with_bootstrap(config, &bootstrap, status, stop.cancelled_owned()).await
        })
    };

    // Everything the routes can write to.
    let mut watched: Vec<String> = pipeline::all_topics(&config);
    let inputs: HashSet<&str> = config.routes.iter().map(|r| r.topic.as_str()).collect();
    watched.retain(|t| !inputs.contains(t.as_str()));
    let viewer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "sluice-demo-viewer")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("creating the demo viewer")?;
    let watched_refs: Vec<&str> = watched.iter().map(String::as_str).collect();
    viewer.subscribe(&watched_refs)?;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .context("creating the demo producer")?;
    let mut expected = HashSet::new();
    for route in &config.routes {
        for (i, value) in samples(&route.module).iter().enumerate() {
            let id = format!("demo-{}-{i}", route.topic);
            let headers = OwnedHeaders::new().insert(KafkaHeader {
                key: CORRELATION_HEADER,
                value: Some(&id),
            });
            let key = format!("sample-{i}");
            let record = FutureRecord::to(&route.topic)
                .key(&key)
                .payload(*value)
                .headers(headers);
            match producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => {
                    println!("← {} key={key:?} value={value:?}", route.topic);
                    expected.insert(id);
                }
                Err((e, _)) => println!("could not produce a sample to {}: {e}", route.topic),
            }
        }
    }
    println!("watching {} (Ctrl-C to stop)", watched.join(", "));

    let mut seen = HashSet::new();
    loop {
        tokio::select! {
            () = super::shutdown_signal() => break,
            received = viewer.recv() => {
                let Ok(m) = received else { continue };
                // Read as bytes: a record on a watched topic may carry a
                // header key that is not UTF-8.
                let headers = m.headers().map(kafka::headers::read).unwrap_or_default();
                let header = |name: &str| kafka::headers::text(&headers, name);
                if let Some(error_type) = header("error_type") {
                    println!(
                        "✗ {} {error_type} from {}@{}/{}: {}",
                        m.topic(),
                        header("original_topic").unwrap_or_default(),
                        header("original_partition").unwrap_or_default(),
                        header("original_offset").unwrap_or_default(),
                        header("failure_reason").unwrap_or_default(),
                    );
                } else {
                    println!(
                        "→ {} key={} value={}",
                        m.topic(),
                        show_bytes(m.key()),
                        show_bytes(m.payload()),
                    );
                }
                if let Some(id) = header(CORRELATION_HEADER) {
                    seen.insert(id);
                }
                if exit_when_done && expected.is_subset(&seen) {
                    println!("every sample message has its output or dead letter");
                    break;
                }
            }
        }
    }
    stop.cancel();
    daemon.await.context("the daemon task failed")??;
    // Clients first: a consumer closing without its broker would wait for it.
    drop((viewer, producer));
    drop(broker);
    Ok(ExitCode::SUCCESS)
}
