//! Live configuration: the routes in force, the config file watched (and
//! SIGHUP), and reloads that add, remove or alter routes without a restart.
//! A reload is prepared (its modules compiled and tried) on a task of its
//! own beside the consumer loop, which installs it when it is ready.
//! Settings that cannot change live are named in the log and wait for a
//! restart; an invalid file keeps the running configuration.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer as _, ConsumerContext, StreamConsumer};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RouteConfig};
use crate::route::{Route, RouteSlot};
use crate::status::{ModuleInfo, Status};
use crate::wasm::{Plugin, Runtime};

/// How often the config file is looked at.
const CONFIG_POLL: Duration = Duration::from_millis(250);

/// The routes in force and what keeps them current.
pub(crate) struct Routes {
    /// The configuration in force.
    pub config: Config,
    /// The brokers, to check that new routes' topics exist.
    bootstrap: String,
    /// Looked up for every message; topic names come from the config, so
    /// a fast hash is safe.
    slots: HashMap<String, RouteSlot, rustc_hash::FxBuildHasher>,
    runtime: Runtime,
    status: Arc<Status>,
    /// Stops the plugin watcher of the current routes.
    watcher: CancellationToken,
    stop: CancellationToken,
}

impl Routes {
    /// The routes loaded at startup; starts watching their modules.
    pub fn new(
        config: Config,
        bootstrap: &str,
        routes: Vec<Arc<Route>>,
        runtime: Runtime,
        status: Arc<Status>,
        stop: &CancellationToken,
    ) -> Routes {
        let slots = routes
            .into_iter()
            .map(|r| (r.topic().to_owned(), Arc::new(watch::Sender::new(r))))
            .collect();
        let mut routes = Routes {
            config,
            bootstrap: bootstrap.to_owned(),
            slots,
            runtime,
            status,
            watcher: stop.child_token(),
            stop: stop.clone(),
        };
        routes.watch_plugins();
        routes
    }

    /// The route consuming `topic`.
    pub fn get(&self, topic: &str) -> Option<&RouteSlot> {
        self.slots.get(topic)
    }

    /// The topics consumed.
    pub fn topics(&self) -> Vec<&str> {
        self.slots.keys().map(String::as_str).collect()
    }

    /// (Re)starts the plugin watcher on the current routes.
    fn watch_plugins(&mut self) {
        self.watcher.cancel();
        self.watcher = self.stop.child_token();
        let mut by_module: HashMap<String, Vec<Arc<Route>>> = HashMap::new();
        for slot in self.slots.values() {
            let route = slot.borrow().clone();
            by_module
                .entry(route.module_name().to_owned())
                .or_default()
                .push(route);
        }
        tokio::spawn(crate::plugins::watch(
            self.config.plugins_dir(),
            self.runtime.clone(),
            by_module,
            self.status.clone(),
            self.watcher.clone(),
        ));
    }

    /// Starts preparing a new configuration beside the consumer loop:
    /// its new modules are loaded and every added or changed route tries
    /// an instance of its module within its limits, on other threads, so
    /// messages keep flowing, revocations are handled and shutdown is not
    /// held meanwhile. [`prepared`] yields the result for [`Routes::install`];
    /// a module that does not load, or a route it does not fit, refuses the
    /// whole reload, and the running routes stay.
    pub fn prepare(&self, new: Config) -> PendingReload {
        let old = &self.config;
        let restart: Vec<&str> = [
            ("[kafka]", old.kafka != new.kafka),
            ("[processing]", old.processing != new.processing),
            ("[plugins]", old.plugins != new.plugins),
            ("[http]", old.http != new.http),
            ("[logging]", old.logging != new.logging),
            ("[telemetry]", old.telemetry != new.telemetry),
        ]
        .into_iter()
        .filter_map(|(section, changed)| changed.then_some(section))
        .collect();
        if !restart.is_empty() {
            tracing::warn!(
                sections = ?restart,
                "config changes that take effect only after a restart: the running values stay \
                 until then (routes are applied now)"
            );
        }
        // Modules already serving are reused; the routes added or changed
        // are those whose configuration differs from the running one.
        let mut plugins: HashMap<String, Arc<Plugin>> = HashMap::new();
        for slot in self.slots.values() {
            let route = slot.borrow();
            if let Some(p) = route.current() {
                plugins.insert(route.module_name().to_owned(), p);
            }
        }
        let fresh: Vec<RouteConfig> = new
            .routes
            .iter()
            .filter(|rc| {
                !self
                    .slots
                    .get(&rc.topic)
                    .is_some_and(|slot| slot.borrow().config == **rc)
            })
            .cloned()
            .collect();
        let preparation = Preparation {
            runtime: self.runtime.clone(),
            status: self.status.clone(),
            dir: self.config.plugins_dir(),
            concurrency: self.config.processing.concurrency,
            plugins,
            bootstrap: self.bootstrap.clone(),
        };
        Some(tokio::spawn(preparation.run(new, fresh)))
    }

    /// Applies a prepared configuration: routes added, removed or changed
    /// (the change reaches each partition at its next batch).
    pub fn install<C: ConsumerContext + 'static>(
        &mut self,
        prepared: Prepared,
        consumer: &StreamConsumer<C>,
    ) {
        let Prepared { new, fresh, loaded } = prepared;
        let mut added = Vec::new();
        let mut changed = Vec::new();
        for (rc, plugin) in fresh {
            let route_status = self.status.upsert_route(&new, &rc);
            if let Some(info) = loaded.get(&rc.module) {
                route_status.set_module(Some(info.clone()));
            }
            let route = Arc::new(Route::new(
                &new,
                &rc,
                plugin,
                self.runtime.clone(),
                route_status,
            ));
            match self.slots.get(&rc.topic) {
                Some(slot) => {
                    slot.send_replace(route);
                    changed.push(rc.topic.clone());
                }
                None => {
                    self.slots
                        .insert(rc.topic.clone(), Arc::new(watch::Sender::new(route)));
                    added.push(rc.topic.clone());
                }
            }
        }
        let wanted: BTreeSet<&str> = new.routes.iter().map(|r| r.topic.as_str()).collect();
        let removed: Vec<String> = self
            .slots
            .keys()
            .filter(|t| !wanted.contains(t.as_str()))
            .cloned()
            .collect();
        for topic in &removed {
            self.slots.remove(topic);
            self.status.remove_route(topic);
        }
        if !added.is_empty() || !removed.is_empty() {
            let topics = self.topics();
            if let Err(e) = consumer.subscribe(&topics) {
                tracing::error!(topics = ?topics, "cannot change the subscription: {e}");
            }
        }
        let old_dir = self.config.plugins_dir();
        let dir_kept = old_dir == new.plugins_dir();
        self.config = Config {
            // The plugins directory changes only with a restart.
            plugins: if dir_kept {
                new.plugins.clone()
            } else {
                self.config.plugins.clone()
            },
            base_dir: if dir_kept {
                new.base_dir.clone()
            } else {
                self.config.base_dir.clone()
            },
            ..new
        };
        self.watch_plugins();
        self.status.count_config_reload(true);
        tracing::info!(
            added = ?added, removed = ?removed, changed = ?changed,
            "config reloaded"
        );
    }
}

/// A reload being prepared beside the consumer loop, if any.
pub(crate) type PendingReload = Option<JoinHandle<Option<Prepared>>>;

/// Waits for the reload being prepared, and yields it once it is ready to
/// install (`None` if it was refused); while none is pending it never
/// returns, so it can sit in the consumer loop's `select!`.
pub(crate) async fn prepared(pending: &mut PendingReload) -> Option<Prepared> {
    let Some(task) = pending.as_mut() else {
        return std::future::pending().await;
    };
    let finished = task.await;
    *pending = None;
    finished
        .inspect_err(|e| tracing::error!("config reload failed: {e}"))
        .ok()
        .flatten()
}

/// A configuration whose new modules are loaded and whose added and
/// changed routes each fit their module: ready to install.
pub(crate) struct Prepared {
    new: Config,
    /// The routes added or changed, with their modules.
    fresh: Vec<(RouteConfig, Arc<Plugin>)>,
    /// What is known about each module loaded for this reload.
    loaded: HashMap<String, ModuleInfo>,
}

/// What preparing a reload needs from the running routes.
struct Preparation {
    runtime: Runtime,
    status: Arc<Status>,
    dir: PathBuf,
    concurrency: usize,
    /// The modules serving now, by name.
    plugins: HashMap<String, Arc<Plugin>>,
    /// The brokers, to check that the new routes' topics exist.
    bootstrap: String,
}

impl Preparation {
    /// Loads what `new` needs and tries the routes in `fresh`; `None`
    /// (logged and counted) refuses the reload.
    async fn run(self, new: Config, fresh: Vec<RouteConfig>) -> Option<Prepared> {
        #[cfg(feature = "fault-injection")]
        super::faults::reload_preparation().await;
        let refused = |status: &Status, reason: &str| {
            status.count_config_reload(false);
            tracing::error!("config reload refused, the running routes stay: {reason}");
        };
        // The instance pool was sized at start: more routes than it can
        // serve would fail their messages for want of an instance.
        let needed = crate::route::instances_for(new.routes.len(), self.concurrency);
        let pool = self.runtime.config().max_instances;
        if self.runtime.config().pooling && needed > pool {
            refused(
                &self.status,
                &format!(
                    "{} routes need up to {needed} handler instances, but the instance pool \
                     holds {pool} (sized at start for up to {} more routes than there were); \
                     restart the daemon to apply this configuration",
                    new.routes.len(),
                    crate::route::SPARE_ROUTES
                ),
            );
            return None;
        }
        let mut plugins = self.plugins;
        let mut loaded: HashMap<String, ModuleInfo> = HashMap::new();
        for rc in &new.routes {
            if plugins.contains_key(&rc.module) {
                continue;
            }
            match load(&self.runtime, &self.dir, &rc.module).await {
                Ok((plugin, info)) => {
                    self.status.count_plugin_load(&rc.module, true);
                    plugins.insert(rc.module.clone(), plugin);
                    loaded.insert(rc.module.clone(), info);
                }
                Err(e) => {
                    self.status.count_plugin_load(&rc.module, false);
                    refused(&self.status, &format!("module {}: {e:#}", rc.module));
                    return None;
                }
            }
        }
        // Each added or changed route takes its module only if an instance
        // of it fits in the route's memory limit.
        let fresh: Vec<(RouteConfig, Arc<Plugin>)> = fresh
            .into_iter()
            .filter_map(|rc| {
                let plugin = plugins.get(&rc.module)?.clone();
                Some((rc, plugin))
            })
            .collect();
        let (runtime, bootstrap) = (self.runtime.clone(), self.bootstrap);
        let checked = new.clone();
        // The checks hand the routes back.
        let admitted = tokio::task::spawn_blocking(move || {
            let routes: Vec<RouteConfig> = fresh.iter().map(|(rc, _)| rc.clone()).collect();
            super::topics::check_topics(&checked, &bootstrap, &routes)?;
            for (rc, plugin) in &fresh {
                crate::route::admit(&runtime, plugin, rc)?;
            }
            Ok(fresh)
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|checked| checked);
        match admitted {
            Ok(fresh) => Some(Prepared { new, fresh, loaded }),
            Err(e) => {
                refused(&self.status, &format!("{e:#}"));
                None
            }
        }
    }
}

async fn load(
    runtime: &Runtime,
    dir: &Path,
    module: &str,
) -> anyhow::Result<(Arc<Plugin>, ModuleInfo)> {
    let runtime = runtime.clone();
    let path = dir.join(format!("{module}.wasm"));
    let started = Instant::now();
    let plugin = tokio::task::spawn_blocking(move || runtime.load_file(&path)).await??;
    let info = ModuleInfo::loaded(&plugin, started.elapsed());
    Ok((Arc::new(plugin), info))
}

/// Watches the config file (and SIGHUP) until `stop`, sending every valid
/// new version; an invalid one is logged and counted, and the running
/// configuration stays.
pub(crate) async fn watch_config(
    path: PathBuf,
    updates: mpsc::Sender<Config>,
    status: Arc<Status>,
    stop: CancellationToken,
) {
    let stamp = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    let mut last = stamp(&path);
    let mut seen = last;
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut ticker = tokio::time::interval(CONFIG_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hangup.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<()>();
        let forced = tokio::select! {
            () = stop.cancelled() => return,
            () = sighup => true,
            _ = ticker.tick() => false,
        };
        let now = stamp(&path);
        // Reloaded once the file is the same at two looks in a row.
        let settled = now == seen && now != last;
        seen = now;
        if !forced && !settled {
            continue;
        }
        last = now;
        if forced {
            tracing::info!(path = %path.display(), "SIGHUP: reading the config file again");
        }
        match Config::load(&path) {
            Ok(config) => {
                if updates.send(config).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                status.count_config_reload(false);
                tracing::error!(
                    path = %path.display(),
                    "the changed config file is invalid; the running configuration stays: {e}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;

    use super::*;

    #[tokio::test]
    async fn nothing_is_yielded_while_no_reload_is_prepared() {
        let mut pending: PendingReload = None;
        assert!(prepared(&mut pending).now_or_never().is_none());
    }

    #[tokio::test]
    async fn a_finished_preparation_is_yielded_once_and_leaves_room_for_the_next() {
        let mut pending: PendingReload = Some(tokio::spawn(async { None }));
        assert!(prepared(&mut pending).await.is_none(), "a refused reload");
        assert!(pending.is_none(), "the next reload may start");
        assert!(prepared(&mut pending).now_or_never().is_none());
    }
}
