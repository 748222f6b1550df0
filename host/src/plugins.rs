//! The plugins directory, watched: a new or changed `.wasm` file of a routed
//! module is compiled and checked off the async threads, then swapped into
//! its routes; a file that does not load leaves the working version serving;
//! a deleted file pauses its routes until it returns.
//!
//! Owns file watching and the decision to swap; compiling belongs to
//! [`crate::wasm`], and how a swap reaches the partitions to
//! [`crate::pipeline`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::route::Route;

type RouteHandle = Arc<Route>;
use crate::status::{ModuleInfo, Status};
use crate::wasm::{LoadError, Plugin, Runtime};

/// How often the directory is looked at. A file is loaded once it was the
/// same at two looks in a row, so a copy in progress is not read half-way
/// (usually: one that stalls longer is refused, then loaded when complete).
pub const POLL: Duration = Duration::from_millis(50);

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// One routed module's file, as last seen.
#[derive(Default)]
struct Tracked {
    /// At the previous look.
    seen: Option<Stamp>,
    /// The version last loaded or refused.
    handled: Option<Stamp>,
    /// The last version loaded, kept to restore a deleted file without
    /// compiling it again.
    last: Option<Arc<Plugin>>,
}

/// Watches `dir` until `stop` is cancelled, swapping module versions into
/// `routes` (grouped by module name).
pub(crate) async fn watch(
    dir: PathBuf,
    runtime: Runtime,
    routes: HashMap<String, Vec<RouteHandle>>,
    status: Arc<Status>,
    stop: CancellationToken,
) {
    let mut tracked: HashMap<String, Tracked> = routes
        .iter()
        .map(|(module, routes)| {
            // The file is compared with the version serving at the first
            // look: it may have changed since that version was loaded.
            let t = Tracked {
                last: routes.first().and_then(|r| r.current()),
                ..Tracked::default()
            };
            (module.clone(), t)
        })
        .collect();
    tracing::debug!(dir = %dir.display(), modules = ?tracked.keys().collect::<Vec<_>>(), "watching the plugins directory");
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        for (module, routes) in &routes {
            let Some(t) = tracked.get_mut(module) else {
                continue;
            };
            let path = dir.join(format!("{module}.wasm"));
            let now = stamp(&path);
            let stable = now == t.seen;
            t.seen = now;
            if !stable || now == t.handled {
                continue;
            }
            t.handled = now;
            match now {
                None => deleted(module, routes, &status),
                Some(_) => load(module, &path, routes, t, &runtime, &status).await,
            }
        }
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

fn deleted(module: &str, routes: &[RouteHandle], status: &Status) {
    let topics: Vec<String> = routes.iter().map(|r| r.topic().to_owned()).collect();
    tracing::warn!(
        module,
        routes = ?topics,
        "module file deleted: its routes are paused and their messages held (nothing is \
         dead-lettered or committed) until a {module}.wasm is back in the plugins directory"
    );
    for route in routes {
        route.set_module(None);
        if let Some(r) = status.route(route.topic()) {
            r.set_module(None);
        }
    }
    status.plugin_event();
}

/// Loads a new version of `module`'s file at `path` into its `routes`, or
/// refuses it and leaves the version serving; a file whose content is the
/// version serving is left alone.
async fn load(
    module: &str,
    path: &Path,
    routes: &[RouteHandle],
    t: &mut Tracked,
    runtime: &Runtime,
    status: &Status,
) {
    let started = Instant::now();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(module, path = %path.display(), "cannot read the module file: {e}");
            return;
        }
    };
    let hash = hex::encode(Sha256::digest(&bytes));
    let serving = routes.first().and_then(|r| r.current());
    if serving.as_ref().is_some_and(|p| p.hash() == hash) {
        tracing::debug!(module, "module file touched, content unchanged");
        return;
    }
    // A version already loaded (a deleted file restored) is not compiled
    // again.
    let last = t.last.clone().filter(|last| last.hash() == hash);
    match compile(path, bytes, last, routes, runtime).await {
        Ok(plugin) => {
            let info = ModuleInfo::loaded(&plugin, started.elapsed());
            swap_in(&plugin, &info, routes, status);
            tracing::info!(
                module,
                module_hash = plugin.short_hash(),
                previous = serving.as_ref().map_or("none", |p| p.short_hash()),
                load_ms = info.load_time.as_millis() as u64,
                from_compile_cache = info.from_cache,
                "new module version serving"
            );
            t.last = Some(plugin);
            status.count_plugin_load(module, true);
        }
        Err(e) => refused(module, path, serving.as_deref(), &e, status),
    }
}

/// Compiles `bytes` (unless `last` is that version already) on a blocking
/// thread, and checks that every route can make an instance of it within
/// its memory limit.
async fn compile(
    path: &Path,
    bytes: Vec<u8>,
    last: Option<Arc<Plugin>>,
    routes: &[RouteHandle],
    runtime: &Runtime,
) -> Result<Arc<Plugin>, LoadError> {
    let routes_to_check = routes.to_vec();
    let runtime = runtime.clone();
    let origin = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let plugin = match last {
            Some(plugin) => plugin,
            None => Arc::new(runtime.load_bytes(&origin, &bytes)?),
        };
        for route in &routes_to_check {
            crate::route::admit(&runtime, &plugin, &route.config)?;
        }
        Ok(plugin)
    })
    .await
    .unwrap_or_else(|e| {
        Err(LoadError::Read {
            path: path.to_owned(),
            source: std::io::Error::other(format!("compilation was interrupted: {e}")),
        })
    })
}

/// Makes `plugin` serve every one of `routes`, and reports it in their
/// status.
fn swap_in(plugin: &Arc<Plugin>, info: &ModuleInfo, routes: &[RouteHandle], status: &Status) {
    for route in routes {
        route.set_module(Some(plugin.clone()));
        if let Some(r) = status.route(route.topic()) {
            r.set_module(Some(info.clone()));
        }
    }
}

/// Counts and logs a module file refused; the version `serving` keeps
/// serving.
fn refused(module: &str, path: &Path, serving: Option<&Plugin>, e: &LoadError, status: &Status) {
    status.count_plugin_load(module, false);
    // A file seen half-written is the usual cause of these.
    let partial = matches!(
        e,
        LoadError::Read { .. } | LoadError::Empty { .. } | LoadError::Invalid { .. }
    );
    tracing::error!(
        module,
        path = %path.display(),
        serving = serving.map_or("none", |p| p.short_hash()),
        "module file refused; the version serving keeps serving{}: {e}",
        if partial {
            " (write the new file elsewhere and rename it into the directory)"
        } else {
            ""
        }
    );
}
