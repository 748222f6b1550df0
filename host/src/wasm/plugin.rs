//! Loading a plugin file: checks that it is a component of the `plugin` world
//! at a compatible contract version, compiles it once and keeps it ready to
//! instantiate.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, ComponentExportIndex};

use super::bindings::{PluginIndices, PluginPre};
use super::contract;
use super::engine::{
    CORE_INSTANCES_PER_COMPONENT, MEMORIES_PER_COMPONENT, MEMORIES_PER_CORE_MODULE, Runtime,
    TABLE_ELEMENTS, TABLES_PER_COMPONENT, TABLES_PER_CORE_MODULE,
};
use super::store::{ModuleLog, StoreState};

mod exports;

pub use exports::EntryPoint;

/// The fix we suggest whenever a file is not a handler component at all.
const BUILD_HINT: &str = "build the handler with the sluice-guest SDK \
     (`cargo build --release --target wasm32-wasip2`) and copy the .wasm from \
     target/wasm32-wasip2/release/";

/// The imports a handler may have, for error messages.
const ALLOWED_IMPORTS: &str = "sluice:handler/host and the WASI 0.2 interfaces";

/// Why a plugin file was refused. Every message names the file and says what
/// to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file has no content, as happens while a copy is still in progress.
    #[error(
        "plugin {path} is empty (0 bytes): if it is still being copied it will load when complete; \
         copy it under another name and rename it into place to avoid this"
    )]
    Empty {
        /// The plugin file.
        path: PathBuf,
    },
    /// The file does not start with the WebAssembly magic number.
    #[error(
        "plugin {path} is not a WebAssembly file (it starts with {found}, not \\0asm); {BUILD_HINT}"
    )]
    NotWasm {
        /// The plugin file.
        path: PathBuf,
        /// The first bytes, in hex.
        found: String,
    },
    /// A core module where a component is needed.
    #[error(
        "plugin {path} is a core WebAssembly module, not a component: build it for the \
         wasm32-wasip2 target (not wasm32-unknown-unknown or wasm32-wasip1); {BUILD_HINT}"
    )]
    CoreModule {
        /// The plugin file.
        path: PathBuf,
    },
    /// The bytes do not form a valid component (truncated, corrupt or from an
    /// unsupported toolchain).
    #[error(
        "plugin {path} is not a valid WebAssembly component ({reason}); \
         if it was truncated or is still being written, copy it again"
    )]
    Invalid {
        /// The plugin file.
        path: PathBuf,
        /// What the validator said.
        reason: String,
    },
    /// The component does not export the handler interface.
    #[error(
        "plugin {path} does not export `handle` from interface {} (world {}); it exports: {exports}; \
         {BUILD_HINT} and export your type with `sluice_guest::export!`",
        contract::HANDLER_EXPORT,
        contract::WORLD
    )]
    NotAHandler {
        /// The plugin file.
        path: PathBuf,
        /// What it exports instead.
        exports: String,
    },
    /// The component was built for an incompatible contract version.
    #[error(
        "plugin {path} was built for {found} but this Sluice speaks {}@{}: \
         rebuild it against a sluice-guest release for contract {}",
        contract::PACKAGE,
        contract::VERSION,
        contract::VERSION
    )]
    IncompatibleVersion {
        /// The plugin file.
        path: PathBuf,
        /// The interface and version the component uses.
        found: String,
    },
    /// The component imports something the host does not grant.
    #[error(
        "plugin {path} imports `{import}`, which Sluice does not provide: a handler may import \
         only {ALLOWED_IMPORTS}; remove the dependency that pulls it in"
    )]
    UnknownImport {
        /// The plugin file.
        path: PathBuf,
        /// The import's name.
        import: String,
    },
    /// The imports have the right names but the wrong shapes.
    #[error(
        "plugin {path} cannot be linked: {reason}; a handler may import only {ALLOWED_IMPORTS} \
         at versions this host provides"
    )]
    Link {
        /// The plugin file.
        path: PathBuf,
        /// What the linker said.
        reason: String,
    },
    /// A first instance could not be made, or its `handle` is not the
    /// contract's: every message would fail the same way.
    #[error("plugin {path} cannot be instantiated: {reason}")]
    Instantiate {
        /// The plugin file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// What a plugin declares, for `sluice check` and the admin API.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// The contract version of the handler interface it exports.
    pub contract_version: String,
    /// Its exports, each with the functions inside.
    pub exports: Vec<String>,
    /// Its imports, each with the functions inside.
    pub imports: Vec<String>,
}

/// A compiled, validated plugin, ready to instantiate any number of times.
pub struct Plugin {
    name: String,
    path: PathBuf,
    hash: String,
    /// Whether the machine code came from the compile cache.
    from_cache: bool,
    size: usize,
    info: PluginInfo,
    pre: PluginPre<StoreState>,
    indices: PluginIndices,
    /// Where `handle-batch` is, if the component exports it with the
    /// contract's type.
    batch: Option<ComponentExportIndex>,
    /// Where `handle-packed` is, if the component exports it with the
    /// contract's type.
    packed: Option<ComponentExportIndex>,
    /// Shared by every instance's store, so the log rate limit is per
    /// module.
    log: Arc<ModuleLog>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("hash", &self.hash)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// The module name: the file stem.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether loading took the machine code from the compile cache instead
    /// of compiling.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sha256 of the file's content, in hex: the module's version.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The first 12 hex digits of the hash, for logs.
    pub fn short_hash(&self) -> &str {
        self.log.short_hash()
    }

    /// The file's size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// What the component imports and exports.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The module's name, hash and log budget, as its instances log.
    pub(crate) fn log(&self) -> &Arc<ModuleLog> {
        &self.log
    }

    pub(crate) fn pre(&self) -> &PluginPre<StoreState> {
        &self.pre
    }

    pub(crate) fn indices(&self) -> &PluginIndices {
        &self.indices
    }

    pub(crate) fn batch_export(&self) -> Option<&ComponentExportIndex> {
        self.batch.as_ref()
    }

    pub(crate) fn packed_export(&self) -> Option<&ComponentExportIndex> {
        self.packed.as_ref()
    }

    /// The fastest way into the component that it exports.
    pub fn entry_point(&self) -> EntryPoint {
        if self.packed.is_some() {
            EntryPoint::Packed
        } else if self.batch.is_some() {
            EntryPoint::Batch
        } else {
            EntryPoint::Handle
        }
    }

    /// How many of the module's log lines (its `log` calls and the lines of
    /// its stdout and stderr) the per-module rate limit dropped since it
    /// was loaded.
    pub fn log_lines_dropped(&self) -> u64 {
        self.log.budget().dropped()
    }

    /// The counter behind [`Plugin::log_lines_dropped`], for the metrics.
    pub(crate) fn log_lines_dropped_counter(&self) -> Arc<AtomicU64> {
        self.log.budget().dropped_counter()
    }

    /// Whether the component exports `handle-batch` (the `batched-plugin`
    /// world) with the contract's type, so that several messages can be
    /// handed to one call.
    pub fn has_batch_export(&self) -> bool {
        self.batch.is_some()
    }

    pub(crate) fn from_file(runtime: &Runtime, path: &Path) -> Result<Plugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(runtime, path, &bytes)
    }

    pub(crate) fn from_bytes(
        runtime: &Runtime,
        path: &Path,
        bytes: &[u8],
    ) -> Result<Plugin, LoadError> {
        let path_buf = || path.to_owned();
        check_header(path, bytes)?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hash = hex::encode(Sha256::digest(bytes));
        let (component, from_cache) = runtime.compile(&name, &hash, bytes).map_err(|e| {
            let reason = format!("{e:#}");
            // With the pooling allocator, wasmtime checks when compiling that
            // the memories and tables fit in its slots: such a file is whole
            // and valid, but no instance of it can be made.
            if reason.contains("pooling allocator") {
                LoadError::Instantiate {
                    path: path_buf(),
                    reason: format!(
                        "{reason} ({}); a module must fit in one slot of the instance pool: each \
                         core module may define at most {MEMORIES_PER_CORE_MODULE} memory and \
                         {TABLES_PER_CORE_MODULE} table of at most {TABLE_ELEMENTS} elements, \
                         and a handler instance may hold at most \
                         {CORE_INSTANCES_PER_COMPONENT} core module instances, \
                         {MEMORIES_PER_COMPONENT} memories and {TABLES_PER_COMPONENT} tables in \
                         all, each memory within processing.max_memory_mb",
                        limit_hit(&reason)
                    ),
                }
            } else {
                LoadError::Invalid {
                    path: path_buf(),
                    reason,
                }
            }
        })?;
        let info = inspect(runtime, path, &component)?;
        let instance_pre =
            runtime
                .linker()
                .instantiate_pre(&component)
                .map_err(|e| LoadError::Link {
                    path: path_buf(),
                    reason: format!("{e:#}"),
                })?;
        let not_a_handler = |e: wasmtime::Error| LoadError::NotAHandler {
            path: path_buf(),
            exports: format!("{} ({e:#})", info.exports.join(", ")),
        };
        let indices = PluginIndices::new(&instance_pre).map_err(not_a_handler)?;
        let pre = PluginPre::new(instance_pre).map_err(not_a_handler)?;
        let batch = exports::batch_export(path, &component);
        let packed = exports::packed_export(path, &component);
        // Log lines name the module by its name and short hash.
        let log = Arc::new(ModuleLog::new(&name, &hash[..12]));
        Ok(Plugin {
            name,
            path: path_buf(),
            hash,
            from_cache,
            size: bytes.len(),
            info,
            pre,
            indices,
            batch,
            packed,
            log,
        })
    }
}

/// Tells apart the common ways a file is not a component before the
/// validator gives a less direct answer.
fn check_header(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_VERSION: &[u8] = &[1, 0, 0, 0];
    if bytes.is_empty() {
        return Err(LoadError::Empty {
            path: path.to_owned(),
        });
    }
    if !bytes.starts_with(MAGIC) {
        let found = bytes.iter().take(4).fold(String::from("0x"), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        return Err(LoadError::NotWasm {
            path: path.to_owned(),
            found,
        });
    }
    if bytes.get(4..8) == Some(CORE_VERSION) {
        return Err(LoadError::CoreModule {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Checks the component's exports and imports against the contract and
/// describes them.
fn inspect(runtime: &Runtime, path: &Path, component: &Component) -> Result<PluginInfo, LoadError> {
    let engine = runtime.engine();
    let ty = component.component_type();
    let describe = |name: &str, item: &ComponentItem| match item {
        ComponentItem::ComponentInstance(instance) => {
            let funcs: Vec<&str> = instance
                .exports(engine)
                .filter(|(_, e)| matches!(e.ty, ComponentItem::ComponentFunc(_)))
                .map(|(n, _)| n)
                .collect();
            format!("{name} {{ {} }}", funcs.join(", "))
        }
        _ => name.to_owned(),
    };

    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, e)| describe(name, &e.ty))
        .collect();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, e)| describe(name, &e.ty))
        .collect();

    let handler_prefix = format!("{}/handler@", contract::PACKAGE);
    let Some(version) = ty
        .exports(engine)
        .find_map(|(name, _)| name.strip_prefix(&handler_prefix).map(str::to_owned))
    else {
        let exports = if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.join(", ")
        };
        return Err(LoadError::NotAHandler {
            path: path.to_owned(),
            exports,
        });
    };
    if !contract::is_compatible(&version) {
        return Err(LoadError::IncompatibleVersion {
            path: path.to_owned(),
            found: format!("{handler_prefix}{version}"),
        });
    }

    let host_prefix = format!("{}/host@", contract::PACKAGE);
    for (name, _) in ty.imports(engine) {
        if let Some(version) = name.strip_prefix(&host_prefix) {
            if !contract::is_compatible(version) {
                return Err(LoadError::IncompatibleVersion {
                    path: path.to_owned(),
                    found: name.to_owned(),
                });
            }
        } else if !name.starts_with("wasi:") {
            return Err(LoadError::UnknownImport {
                path: path.to_owned(),
                import: name.to_owned(),
            });
        }
    }

    Ok(PluginInfo {
        contract_version: version,
        exports,
        imports,
    })
}

/// Which of the pool's limits wasmtime's refusal is about, in Sluice's
/// words.
fn limit_hit(reason: &str) -> &'static str {
    if reason.contains("defined memories count") {
        "the limit hit: memories defined by one core module"
    } else if reason.contains("defined tables count") {
        "the limit hit: tables defined by one core module"
    } else if reason.contains("minimum element size") {
        "the limit hit: elements of one table"
    } else if reason.contains("minimum byte size") || reason.contains("maximum memory size") {
        "the limit hit: the size of one memory"
    } else if reason.contains("core module instances") {
        "the limit hit: core module instances per handler instance"
    } else if reason.contains("linear memories") {
        "the limit hit: memories per handler instance"
    } else if reason.contains("tables, which exceeds") {
        "the limit hit: tables per handler instance"
    } else {
        "a limit of the instance pool"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_error(bytes: &[u8]) -> String {
        check_header(Path::new("plugins/x.wasm"), bytes)
            .map(|()| "accepted".to_owned())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn header_checks_name_the_file_and_the_problem() {
        assert!(header_error(b"").contains("plugins/x.wasm is empty"));
        assert!(
            header_error(b"\x7fELF\x02\x01")
                .contains("not a WebAssembly file (it starts with 0x7f454c46")
        );
        assert!(
            header_error(b"\0asm\x01\0\0\0").contains("core WebAssembly module, not a component")
        );
        assert_eq!(header_error(b"\0asm\x0d\0\x01\0"), "accepted");
    }
}
