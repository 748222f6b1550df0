//! Live configuration: the routes in force, the config file watched (and
//! SIGHUP), and reloads that add, remove or alter routes without a restart.
//! Settings that cannot change live are named in the log and wait for a
//! restart; an invalid file keeps the running configuration.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer as _, StreamConsumer};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::RebalanceContext;
use super::route::{Route, RouteSlot};
use crate::config::{Config, RouteConfig};
use crate::status::{ModuleInfo, Status};
use crate::wasm::{Plugin, Runtime};

/// How often the config file is looked at.
const CONFIG_POLL: Duration = Duration::from_millis(250);

/// The routes in force and what keeps them current.
pub(crate) struct Routes {
    /// The configuration in force.
    pub config: Config,
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

    /// Applies a new configuration: routes added, removed or changed (the
    /// change reaches each partition at its next batch); anything else is
    /// logged as needing a restart. A module that does not load refuses the
    /// whole reload.
    pub async fn apply(&mut self, new: Config, consumer: &StreamConsumer<RebalanceContext>) {
        let old = &self.config;
        let restart: Vec<&str> = [
            ("[kafka]", old.kafka != new.kafka),
            ("[processing]", old.processing != new.processing),
            ("[plugins]", old.plugins != new.plugins),
            ("[http]", old.http != new.http),
            ("[logging]", old.logging != new.logging),
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

        // The instance pool was sized at start: more routes than it can
        // serve would fail their messages for want of an instance.
        let concurrency = self.config.processing.concurrency;
        let needed = super::route::instances_for(new.routes.len(), concurrency);
        let pool = self.runtime.config().max_instances;
        if self.runtime.config().pooling && needed > pool {
            self.status.count_config_reload(false);
            tracing::error!(
                "config reload refused, the running routes stay: {} routes need up to {needed} \
                 handler instances, but the instance pool holds {pool} (sized at start for up to \
                 {} more routes than there were); restart the daemon to apply this configuration",
                new.routes.len(),
                super::route::SPARE_ROUTES
            );
            return;
        }

        // Modules already serving are reused; others are loaded first, so a
        // module that does not load leaves everything as it was.
        let mut plugins: HashMap<String, Arc<Plugin>> = HashMap::new();
        for slot in self.slots.values() {
            let route = slot.borrow();
            if let Some(p) = route.current() {
                plugins.insert(route.module_name().to_owned(), p);
            }
        }
        let mut loaded: HashMap<String, ModuleInfo> = HashMap::new();
        let dir = self.config.plugins_dir();
        for rc in &new.routes {
            if plugins.contains_key(&rc.module) {
                continue;
            }
            match load(&self.runtime, &dir, &rc.module).await {
                Ok((plugin, info)) => {
                    self.status.count_plugin_load(&rc.module, true);
                    plugins.insert(rc.module.clone(), plugin);
                    loaded.insert(rc.module.clone(), info);
                }
                Err(e) => {
                    self.status.count_plugin_load(&rc.module, false);
                    self.status.count_config_reload(false);
                    tracing::error!(
                        module = rc.module,
                        "config reload refused, the running routes stay: {e:#}"
                    );
                    return;
                }
            }
        }

        // The routes added or changed, with their modules; each takes its
        // module only if an instance of it fits in the route's memory limit.
        let fresh: Vec<(RouteConfig, Arc<Plugin>)> = new
            .routes
            .iter()
            .filter(|rc| {
                !self
                    .slots
                    .get(&rc.topic)
                    .is_some_and(|slot| slot.borrow().config == **rc)
            })
            .filter_map(|rc| Some((rc.clone(), plugins.get(&rc.module)?.clone())))
            .collect();
        let runtime = self.runtime.clone();
        // The check hands the routes back for the swap below.
        let admitted = tokio::task::spawn_blocking(move || {
            for (rc, plugin) in &fresh {
                super::admit(&runtime, plugin, rc)?;
            }
            Ok(fresh)
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|checked| checked);
        let fresh = match admitted {
            Ok(fresh) => fresh,
            Err(e) => {
                self.status.count_config_reload(false);
                tracing::error!("config reload refused, the running routes stay: {e:#}");
                return;
            }
        };

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
