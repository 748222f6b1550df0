//! The consume-handle-produce pipeline. A message's path, file by file:
//!
//! 1. [`consumer`]: the consumer loop takes it from the consumer and hands
//!    it to its partition's worker; its machine (no I/O) decides which
//!    partition has a worker, pauses a partition whose worker's queue is
//!    full, replaces a worker that ended early and keeps the commits'
//!    schedule.
//! 2. [`partition`]: the partition's worker feeds it to the delivery core
//!    and carries out what the core decides.
//! 3. [`core`]: the delivery core decides everything that happens to it:
//!    when it is called, retried, held, dead-lettered or stopped on, when
//!    its records are produced (again), when its offset is stored. Its
//!    failures are judged by [`crate::policy`].
//! 4. [`calls`]: the handler call, on a blocking thread.
//! 5. [`delivery`]: its records go to the producer; the broker's answers
//!    come back on its receipt.
//!
//! Beside the path: [`dlq`] writes dead-letter envelopes
//! ([`crate::policy`] classifies produce errors), [`reload`] applies config reloads, [`topics`]
//! checks the routes' topics against the brokers, [`undecodable`] names the
//! partition a record the client cannot decode holds up, and [`shutdown`]
//! bounds how long a shutdown may take. `docs/architecture.md` draws the
//! threads and channels and where each guarantee is enforced.

mod calls;
mod consumer;
mod core;
mod delivery;
pub mod dlq;
mod events;
#[cfg(feature = "fault-injection")]
pub mod faults;
mod gate;
mod partition;
mod reload;
mod route_env;
mod shared;
pub mod shutdown;
mod topics;
pub mod undecodable;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use self::calls::CORRELATION_HEADER;
use self::consumer::{ConsumerLoop, Parts, RebalanceContext};
use self::shared::Shared;
pub(crate) use self::topics::check_topics;
pub use self::topics::{MissingTopics, all_topics};
pub use crate::breaker::{Admission, Breaker, BreakerView, CircuitState};
use crate::config::Config;
use crate::kafka;
pub use crate::policy::Backoff;
use crate::route::{Route, admit};
use crate::status::ModuleInfo;
pub use crate::status::Status;
use crate::trace::Tracer;
use crate::wasm::{Plugin, Runtime, RuntimeConfig};

/// Loads the module of every route, refusing to start when one is invalid.
fn load_routes(
    config: &Config,
    runtime: &Runtime,
    status: &Status,
) -> anyhow::Result<Vec<Arc<Route>>> {
    let dir = config.plugins_dir();
    let mut plugins: HashMap<&str, (Arc<Plugin>, ModuleInfo)> = HashMap::new();
    let mut routes = Vec::new();
    for route in &config.routes {
        let (plugin, info) = match plugins.get(route.module.as_str()) {
            Some(p) => p.clone(),
            None => {
                let started = Instant::now();
                let loaded = runtime.load_file(&dir.join(format!("{}.wasm", route.module)));
                status.count_plugin_load(&route.module, loaded.is_ok());
                let p = Arc::new(loaded?);
                let info = ModuleInfo::loaded(&p, started.elapsed());
                tracing::info!(
                    module = p.name(),
                    module_hash = p.short_hash(),
                    size = p.size(),
                    load_ms = info.load_time.as_millis() as u64,
                    from_compile_cache = info.from_cache,
                    "module loaded"
                );
                plugins.insert(&route.module, (p.clone(), info.clone()));
                (p, info)
            }
        };
        admit(runtime, &plugin, route)?;
        let route_status = status.upsert_route(config, route);
        route_status.set_module(Some(info));
        routes.push(Arc::new(Route::new(
            config,
            route,
            plugin,
            runtime.clone(),
            route_status,
        )));
    }
    Ok(routes)
}

/// Runs the daemon until `shutdown` completes, then drains and commits.
///
/// With `bootstrap_servers = "embedded"` it starts the in-memory development
/// broker first and logs its address.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let status = Status::new(&config);
    run_with_status(config, status, shutdown).await
}

/// Like [`run`], reporting into `status` (made by [`Status::new`] from the
/// same config).
pub async fn run_with_status(
    config: Config,
    status: Arc<Status>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let embedded = if config.is_embedded() {
        let broker = kafka::EmbeddedBroker::start(&all_topics(&config))?;
        tracing::warn!(
            bootstrap_servers = broker.bootstrap_servers(),
            "embedded development broker started: in memory, keeps only a recent tail of each \
             partition, for development only"
        );
        Some(broker)
    } else {
        None
    };
    let bootstrap = embedded
        .as_ref()
        .map_or(config.kafka.bootstrap_servers.clone(), |b| {
            b.bootstrap_servers().to_owned()
        });
    run_with_bootstrap(config, &bootstrap, status, shutdown).await
}

/// Runs the daemon against the given brokers until `shutdown` completes.
pub async fn run_with_bootstrap(
    config: Config,
    bootstrap: &str,
    status: Arc<Status>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Health and metrics are served from the start, so that an orchestrator
    // sees "not ready" while modules load or no broker answers.
    let k = &config.kafka;
    let broker = Breaker::new(
        "broker",
        k.circuit_breaker_threshold,
        k.circuit_breaker_reset_timeout(),
    );
    status.observe_broker(broker.view());
    let http_stop = CancellationToken::new();
    let _stop_http_on_exit = http_stop.clone().drop_guard();
    let http = if config.http.enabled {
        let server = crate::http::bind(
            &config.http,
            status.clone(),
            broker.clone(),
            http_stop.clone().cancelled_owned(),
        )
        .await?;
        Some(tokio::spawn(server))
    } else {
        None
    };
    let tracer = match &config.telemetry.otlp_endpoint {
        Some(endpoint) => {
            let tracer = Tracer::new(endpoint, config.group_id()).map_err(anyhow::Error::msg)?;
            tracing::info!(otlp_endpoint = endpoint, "exporting message spans");
            Some(Arc::new(tracer))
        }
        None => None,
    };
    let parts = start(&config, bootstrap, &status, broker, tracer.clone()).await?;
    tracing::info!(
        group = %config.group_id(), bootstrap_servers = bootstrap,
        topics = ?parts.live.topics(), "consuming"
    );
    status.set_bootstrap_servers(bootstrap);
    status.set_started(true);
    ConsumerLoop::new(&config, parts).run(shutdown).await;
    tracing::info!("consumer closed");
    status.set_started(false);
    http_stop.cancel();
    if let Some(http) = http {
        let _ = http.await;
    }
    tracing::info!("HTTP endpoint closed");
    if let Some(tracer) = tracer {
        // Sends the spans still batched; it waits for the collector.
        let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Checks the routes' topics, loads their modules, creates the clients and
/// subscribes.
async fn start(
    config: &Config,
    bootstrap: &str,
    status: &Arc<Status>,
    broker: Arc<Breaker>,
    tracer: Option<Arc<Tracer>>,
) -> anyhow::Result<Parts> {
    let p = &config.processing;
    // The clients' settings first: a certificate or secret file that cannot
    // be read stops the daemon before it loads a module.
    let producer_config =
        kafka::producer_config(config, bootstrap).context("configuring the Kafka producer")?;
    let consumer_config =
        kafka::consumer_config(config, bootstrap).context("configuring the Kafka consumer")?;
    let runtime_config = RuntimeConfig {
        max_instances: crate::route::pool_for(config.routes.len(), p.concurrency),
        max_memory_bytes: usize::try_from(p.max_memory_mb << 20).unwrap_or(usize::MAX),
        compile_cache: config.compile_cache_dir(),
        ..RuntimeConfig::default()
    };
    // Compiling modules is CPU-heavy: keep it off the async threads.
    let (runtime, routes) = {
        let config = config.clone();
        let status = status.clone();
        let bootstrap = bootstrap.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            check_topics(&config, &bootstrap, &config.routes)?;
            let runtime = Runtime::new(runtime_config)?;
            let routes = load_routes(&config, &runtime, &status)?;
            Ok((runtime, routes))
        })
        .await??
    };
    let stop_all = CancellationToken::new();
    // The routes in force; their modules are watched for new versions.
    let live = reload::Routes::new(
        config.clone(),
        bootstrap,
        routes,
        runtime,
        status.clone(),
        &stop_all,
    );
    let producer = delivery::Producer::new(&producer_config)
        .map_err(kafka::security::redact)
        .context("creating the Kafka producer")?;
    let (positions_tx, positions_rx) = tokio::sync::mpsc::unbounded_channel();
    let context = RebalanceContext::new(status.clone(), &consumer_config, positions_tx);
    let consumer: Arc<StreamConsumer<RebalanceContext>> = Arc::new(
        consumer_config
            .create_with_context(context)
            .map_err(kafka::security::redact)
            .context("creating the Kafka consumer")?,
    );
    consumer
        .subscribe(&live.topics())
        .context("subscribing to the routed topics")?;
    let shared = Arc::new(Shared {
        producer,
        broker,
        offsets: consumer.clone(),
        slots: Arc::new(Semaphore::new(p.concurrency)),
        batch_size: p.batch_size,
        output_correlation_id: p.output_correlation_id,
        max_record_bytes: usize::try_from(config.kafka.max_record_bytes()).unwrap_or(usize::MAX),
        status: status.clone(),
        tracer,
    });
    if let Some(file) = kafka::security::password_file(config) {
        follow_password(file, &consumer, &shared, &stop_all);
    }
    Ok(Parts {
        consumer,
        shared,
        live,
        stop_all,
        positions_rx,
    })
}

/// Gives both clients the new SASL password each time its file changes.
fn follow_password(
    file: kafka::credentials::PasswordFile,
    consumer: &Arc<StreamConsumer<RebalanceContext>>,
    shared: &Arc<Shared>,
    stop_all: &CancellationToken,
) {
    let (shared, consumer) = (shared.clone(), consumer.clone());
    tokio::spawn(kafka::credentials::follow(
        file,
        stop_all.clone(),
        move |user, password| {
            use rdkafka::producer::Producer as _;
            for set in [
                kafka::credentials::set_credentials(consumer.client(), user, password),
                kafka::credentials::set_credentials(shared.producer.client(), user, password),
            ] {
                if let Err(e) = set {
                    tracing::error!("cannot give the Kafka clients the new SASL password: {e}");
                }
            }
        },
    ));
}

/// The committed offset of each partition of `topic` for `group`, for tests
/// and tools.
pub fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> KafkaResult<Vec<Option<i64>>> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(list, timeout)?;
    Ok((0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            },
        )
        .collect())
}
