//! The compiled-module cache: machine code from earlier compilations, so a
//! restart (or a reload of a version seen before) skips the compiler.
//!
//! An entry is named after the module, the sha256 of the `.wasm` file and a
//! hash of everything about the engine that machine code depends on (the
//! wasmtime version, the compiler settings, the CPU features), so a new
//! module version, a new Sluice or another machine never reads a stale
//! entry. Each entry ends with the sha256 of what precedes it: a torn or
//! damaged file is recompiled, never loaded.
//!
//! Loading an entry runs the machine code in it, so the directory must be
//! writable by the daemon's user only; one that others may write to is not
//! used.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Length of the checksum at the end of an entry.
const CHECKSUM: usize = 32;

/// Makes temporary file names unique within the process.
static TEMPORARY: AtomicU64 = AtomicU64::new(0);

/// A directory of compiled components for one engine configuration.
pub(crate) struct CompileCache {
    dir: PathBuf,
    /// Hex of the engine's compatibility hash: part of every entry's name.
    engine: String,
}

/// Why the cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot create the compile cache directory {dir}: {source}")]
    Create {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the compile cache directory {dir} may be written by other users (mode {mode:o}); \
         since its entries are run as machine code it is not used: make it writable by the \
         daemon's user only (chmod go-w) or point plugins.cache_dir elsewhere"
    )]
    Shared { dir: PathBuf, mode: u32 },
}

impl CompileCache {
    /// Opens (creating if needed) the cache in `dir` for `engine`.
    pub(crate) fn open(dir: &Path, engine: &Engine) -> Result<CompileCache, CacheError> {
        let create = |source| CacheError::Create {
            dir: dir.to_owned(),
            source,
        };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(create)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir).map_err(create)?.permissions().mode();
            if mode & 0o022 != 0 {
                return Err(CacheError::Shared {
                    dir: dir.to_owned(),
                    mode: mode & 0o777,
                });
            }
        }
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(CompileCache {
            dir: dir.to_owned(),
            engine: format!("{:016x}", hasher.finish()),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, module: &str, hash: &str) -> PathBuf {
        self.dir
            .join(format!("{module}-{hash}-{}.cwasm", self.engine))
    }

    /// The compiled `module` whose file has sha256 `hash`, if an intact
    /// entry for this engine exists.
    pub(crate) fn get(&self, engine: &Engine, module: &str, hash: &str) -> Option<Component> {
        let path = self.entry(module, hash);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read a compile cache entry; compiling instead: {e}");
                return None;
            }
        };
        let intact = bytes.len() > CHECKSUM && {
            let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
            Sha256::digest(body).as_slice() == sum
        };
        if !intact {
            tracing::warn!(path = %path.display(), "compile cache entry is damaged; compiling again and replacing it");
            return None;
        }
        let body = &bytes[..bytes.len() - CHECKSUM];
        // SAFETY: the bytes were written by `put` from `Component::serialize`
        // for an engine with the same compatibility hash (the entry's name),
        // and are unchanged since (the checksum). Only the daemon's user may
        // write to the directory (checked in `open`).
        match unsafe { Component::deserialize(engine, body) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), "compile cache entry refused by the engine; compiling again: {e:#}");
                None
            }
        }
    }

    /// Stores `component` as the compiled `module` with sha256 `hash`, and
    /// removes the module's other entries (earlier versions). Failing to
    /// store costs only a compilation at the next start, so it is logged,
    /// not returned.
    pub(crate) fn put(&self, module: &str, hash: &str, component: &Component) {
        let path = self.entry(module, hash);
        let written = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
            .and_then(|body| {
                let n = TEMPORARY.fetch_add(1, Ordering::Relaxed);
                let temporary = self
                    .dir
                    .join(format!(".{module}-{}-{n}.tmp", std::process::id()));
                let write = || {
                    let mut file = std::fs::File::create(&temporary)?;
                    file.write_all(&body)?;
                    file.write_all(&Sha256::digest(&body))?;
                    file.sync_all()?;
                    std::fs::rename(&temporary, &path)
                };
                write().inspect_err(|_| {
                    let _ = std::fs::remove_file(&temporary);
                })
            });
        if let Err(e) = written {
            tracing::warn!(
                path = %path.display(),
                "cannot write the compile cache entry; the module will be compiled again at the \
                 next start (check that plugins.cache_dir is writable): {e}"
            );
            return;
        }
        self.prune(module, &path);
    }

    /// Removes `module`'s entries other than `keep`.
    fn prune(&self, module: &str, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!("{module}-");
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // `{module}-{64 hex}-{16 hex}.cwasm`: another module whose name
            // starts with this one's has a different length after the prefix.
            let ours = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".cwasm"))
                .is_some_and(|rest| rest.len() == 64 + 1 + 16);
            if ours && path != keep {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}
