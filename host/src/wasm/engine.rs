//! The process-wide wasmtime [`Engine`], its [`Linker`] and the epoch ticker
//! that enforces handler deadlines.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
    ProfilingStrategy,
};

use super::bindings;
use super::cache::CompileCache;
use super::deadline::{self, TickCount};
use super::store::StoreState;

/// How handler instances are reused between messages.
///
/// The default is [`Isolation::Reused`]: `host/benches/dispatch.rs` measured a
/// call on a kept instance at a fraction of the cost of instantiating one per
/// message (see the README's performance section for the figures), and a kept
/// instance is thrown away after any trap, timeout or memory failure, so a
/// failure never leaks into the next message. [`Isolation::Fresh`] is for
/// handlers that must not carry any state from one message to the next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Isolation {
    /// A new instance for every message: no state survives a message.
    Fresh,
    /// One instance per worker, kept across messages and replaced after any
    /// failure that could have left it in a bad state.
    #[default]
    Reused,
}

impl Isolation {
    /// The name used in configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Fresh => "fresh",
            Isolation::Reused => "reused",
        }
    }
}

/// The core instances one handler instance may hold in the pool: a Python
/// component (componentize-py) instantiates 14 modules, libc and libpython
/// among them.
pub const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
/// The linear memories one handler instance may hold in the pool.
pub const MEMORIES_PER_COMPONENT: u32 = 2;
/// The tables one handler instance may hold in the pool.
pub const TABLES_PER_COMPONENT: u32 = 8;
/// The linear memories one core module may define (wasmtime's pool default,
/// set here so that the refusal can name it): toolchains give a module one.
pub const MEMORIES_PER_CORE_MODULE: u32 = 1;
/// The tables one core module may define (wasmtime's pool default).
pub const TABLES_PER_CORE_MODULE: u32 = 1;
/// The elements a table may start with (wasmtime's pool default).
pub const TABLE_ELEMENTS: usize = 20_000;

/// Sizing of the runtime: fixed for the life of the process.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// How many handler instances may be alive at once; it sizes the pooling
    /// allocator, so every worker of every route needs one slot.
    pub max_instances: u32,
    /// The largest linear memory any handler may be given, in bytes. Per-route
    /// limits must not exceed it.
    pub max_memory_bytes: usize,
    /// The largest native stack a handler may use, in bytes; deeper recursion
    /// traps with a stack overflow.
    pub max_stack_bytes: usize,
    /// How often the deadline clock advances: the resolution of timeouts.
    pub epoch_tick: Duration,
    /// How many bytes of a guest's stdout and of its stderr are kept (and
    /// logged) per invocation; the rest is dropped and counted.
    pub guest_output_limit: usize,
    /// Use the pooling instance allocator (fast instantiation from
    /// pre-reserved, copy-on-write memory slots). Off only for tools that load
    /// a plugin once, such as `sluice check`.
    pub pooling: bool,
    /// Where compiled modules are kept between runs (see
    /// `plugins.cache_dir`); `None` compiles every module at every load.
    pub compile_cache: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_instances: 256,
            max_memory_bytes: 256 << 20,
            max_stack_bytes: 512 << 10,
            epoch_tick: Duration::from_millis(1),
            guest_output_limit: 16 << 10,
            pooling: true,
            compile_cache: None,
        }
    }
}

/// Errors setting up the runtime itself (not a plugin's fault).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime refused the engine configuration.
    #[error("cannot create the WebAssembly engine: {0:#}")]
    Engine(wasmtime::Error),
    /// The host imports could not be registered.
    #[error("cannot register host functions: {0:#}")]
    Linker(wasmtime::Error),
    /// The thread that enforces deadlines could not be started.
    #[error("cannot start the deadline clock thread: {0}")]
    Ticker(std::io::Error),
}

/// The WebAssembly runtime: one per process, cheap to clone.
///
/// Its methods that load a plugin or make an [`Invoker`](super::Invoker)
/// are with the call, in `invoke.rs`: a plugin is taken only once a first
/// instance of it has been made, which is a call's work.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<StoreState>,
    config: RuntimeConfig,
    cache: Option<CompileCache>,
    /// Advances the engine's epoch; stopped when the runtime is dropped.
    ticker: EpochTicker,
}

impl Runtime {
    /// Creates the engine, links WASI (with nothing granted) and the Sluice
    /// host interface, and starts the deadline clock.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .max_wasm_stack(config.max_stack_bytes)
            .cranelift_opt_level(OptLevel::Speed)
            .memory_init_cow(true);
        // For profiling: perf names guest functions from /tmp/perf-PID.map.
        if std::env::var_os("SLUICE_PERF_MAP").is_some_and(|v| v == "1") {
            wasm.profiler(ProfilingStrategy::PerfMap);
        }
        if config.pooling {
            let n = config.max_instances.max(1);
            let mut pool = PoolingAllocationConfig::new();
            // A Rust component holds a handful of core instances (the program,
            // the WASI adapter and small shims) with one memory; a Python one
            // 14, with one memory shared by its dynamically linked modules,
            // and a JavaScript one 4. Each
            // component may take only its share of the totals, so one module
            // with many memories or instances cannot take the slots other
            // routes' instances need; a module that needs more is refused
            // when it is loaded, with wasmtime's reason.
            pool.total_component_instances(n)
                .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
                .total_memories(n.saturating_mul(MEMORIES_PER_COMPONENT))
                .total_tables(n.saturating_mul(TABLES_PER_COMPONENT))
                .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
                .max_memories_per_component(MEMORIES_PER_COMPONENT)
                .max_tables_per_component(TABLES_PER_COMPONENT)
                .max_memories_per_module(MEMORIES_PER_CORE_MODULE)
                .max_tables_per_module(TABLES_PER_CORE_MODULE)
                .table_elements(TABLE_ELEMENTS)
                .max_memory_size(config.max_memory_bytes)
                // Keep the pages an instance dirtied mapped when its slot is
                // reused, resetting only those (found with PAGEMAP_SCAN where
                // the kernel has it) instead of unmapping them and taking a
                // page fault for each on the next use: instantiation cost
                // in `host/benches/dispatch.rs` dropped by about half.
                .linear_memory_keep_resident(2 << 20)
                .table_keep_resident(64 << 10)
                .pagemap_scan(Enabled::Auto);
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wasm).map_err(RuntimeError::Engine)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(RuntimeError::Linker)?;
        // Waiting imports that give up at the call's deadline.
        deadline::add_to_linker(&mut linker, StoreState::polls).map_err(RuntimeError::Linker)?;
        bindings::Plugin::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(RuntimeError::Linker)?;

        // The cache only saves compilations: without it the daemon still runs.
        let cache = config.compile_cache.as_deref().and_then(|dir| {
            CompileCache::open(dir, &engine)
                .inspect_err(|e| tracing::warn!("compiling every module at every load: {e}"))
                .ok()
        });
        let ticker =
            EpochTicker::start(engine.clone(), config.epoch_tick).map_err(RuntimeError::Ticker)?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                linker,
                config,
                cache,
                ticker,
            }),
        })
    }

    /// The configuration this runtime was built with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn linker(&self) -> &Linker<StoreState> {
        &self.inner.linker
    }

    /// Notes that guest code is about to run (an instantiation or a call),
    /// waking the deadline clock if it sleeps. Every call must be followed
    /// by [`Runtime::guest_returned`].
    pub(crate) fn guest_entered(&self) {
        self.inner.ticker.entered();
    }

    /// Notes that guest code started with [`Runtime::guest_entered`] is no
    /// longer running.
    pub(crate) fn guest_returned(&self) {
        self.inner.ticker.returned();
    }

    /// The count of deadline clock ticks, for deadlines inside host calls.
    pub(crate) fn tick_count(&self) -> TickCount {
        self.inner.ticker.state.ticks.clone()
    }

    /// Whether the deadline clock is advancing: it sleeps once no guest code
    /// has run for 100 ticks in a row (a tenth of a second at the default
    /// tick), and wakes when guest code runs.
    pub fn deadline_clock_running(&self) -> bool {
        !self.inner.ticker.state.asleep.load(Ordering::SeqCst)
    }

    /// The directory compiled modules are kept in, if the cache is in use.
    pub fn compile_cache_dir(&self) -> Option<&Path> {
        self.inner.cache.as_ref().map(CompileCache::dir)
    }

    /// Compiles the component in `bytes` (module `module`, sha256 `hash`),
    /// or takes its machine code from the compile cache. Returns whether it
    /// came from the cache.
    pub(crate) fn compile(
        &self,
        module: &str,
        hash: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, bool)> {
        let engine = &self.inner.engine;
        let cache = self.inner.cache.as_ref();
        if let Some(component) = cache.and_then(|c| c.get(engine, module, hash)) {
            return Ok((component, true));
        }
        let component = Component::from_binary(engine, bytes)?;
        if let Some(cache) = cache {
            cache.put(module, hash, &component);
        }
        Ok((component, false))
    }
}

/// How many ticks in a row with no guest code running before the deadline
/// clock sleeps: an idle daemon then wakes for nothing.
const IDLE_TICKS: u32 = 100;

/// A thread that advances the engine's epoch every tick while guest code
/// runs, so a store's epoch deadline becomes a wall-clock deadline.
///
/// A deadline is set relative to the epoch when a call starts, so the epoch
/// standing still while nothing runs changes no deadline.
struct EpochTicker {
    state: Arc<TickerState>,
    /// Taken when the ticker is stopped.
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct TickerState {
    stop: AtomicBool,
    /// Instantiations and calls running now.
    running: AtomicUsize,
    /// Set by the ticker before it checks `running` one last time and
    /// sleeps; whoever then makes `running` non-zero sees it and wakes it.
    asleep: AtomicBool,
    /// The epoch, as a number host calls can read for their deadlines.
    ticks: TickCount,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let state = Arc::new(TickerState::default());
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                let mut idle = 0;
                while !shared.stop.load(Ordering::Acquire) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                    shared.ticks.advance();
                    if shared.running.load(Ordering::SeqCst) > 0 {
                        idle = 0;
                        continue;
                    }
                    idle += 1;
                    if idle < IDLE_TICKS {
                        continue;
                    }
                    // Both sides write their flag before reading the
                    // other's (all sequentially consistent), so either this
                    // thread sees the call, or the call sees it asleep.
                    shared.asleep.store(true, Ordering::SeqCst);
                    while shared.running.load(Ordering::SeqCst) == 0
                        && !shared.stop.load(Ordering::SeqCst)
                    {
                        std::thread::park();
                    }
                    shared.asleep.store(false, Ordering::SeqCst);
                    idle = 0;
                }
            })?;
        Ok(EpochTicker {
            state,
            thread: Some(thread),
        })
    }

    fn entered(&self) {
        self.state.running.fetch_add(1, Ordering::SeqCst);
        if self.state.asleep.load(Ordering::SeqCst)
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
    }

    fn returned(&self) {
        self.state.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
