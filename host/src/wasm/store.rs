//! The data of a handler instance's [`Store`]: the WASI context with nothing
//! granted, the memory limiter, the host functions the guest calls, and the
//! guest's log lines, attributed to the message being handled.
//!
//! It knows nothing of the engine, of plugins or of calls, so that all of
//! them can name it: the engine's linker links the host functions to this
//! data, a plugin is made ready to instantiate with it, and a call makes a
//! store of it and sets it up for each message. The wasm modules therefore
//! depend on each other in one line: store, engine, plugin, call.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{self, Level, Message};
use super::deadline::{Deadline, Polls};
use super::guest_io::{self, CappedOutput, LogBudget};

/// The data every store carries.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    /// The route's config table, fixed for the life of the instance.
    config: Arc<BTreeMap<String, String>>,
    /// The module, for its name and its log budget.
    module: Arc<ModuleLog>,
    stdout: CappedOutput,
    stderr: CappedOutput,
    /// The messages of the current call, to attribute log lines to.
    attribution: Attribution,
    /// The current call's deadline, for host calls that wait.
    deadline: Deadline,
}

impl StoreState {
    /// The data of a new store: WASI with nothing granted, stdout and
    /// stderr each kept up to `output_limit` bytes, the memory of the
    /// instance limited to `memory_bytes`, the route's `config` and the
    /// module's `module` log. The deadline is armed by [`make`].
    pub(super) fn new(
        output_limit: usize,
        memory_bytes: usize,
        config: Arc<BTreeMap<String, String>>,
        module: Arc<ModuleLog>,
        deadline: Deadline,
    ) -> Self {
        let stdout = CappedOutput::new(output_limit);
        let stderr = CappedOutput::new(output_limit);
        // Nothing is granted: no preopened directories, no environment, no
        // arguments, no sockets, no name lookups. Clocks and randomness stay.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        StoreState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_bytes),
            config,
            module,
            stdout,
            stderr,
            attribution: Attribution::default(),
            deadline,
        }
    }

    /// `wasi:io/poll` for this store, bounded by the call's deadline.
    pub(crate) fn polls(&mut self) -> Polls<'_> {
        Polls {
            table: &mut self.table,
            deadline: &self.deadline,
        }
    }

    /// The route's config table the instance was made with.
    pub(super) fn config(&self) -> &Arc<BTreeMap<String, String>> {
        &self.config
    }

    /// The size the instance's memories and tables would have had with the
    /// growth the limiter refused during the call, if it refused one.
    pub(super) fn refused_memory(&self) -> Option<usize> {
        self.limiter.refused
    }

    /// Logs what the guest wrote to stdout and stderr during the call, as the
    /// message being handled.
    pub(super) fn drain_stdio(&self) {
        if self.stdout.is_empty() && self.stderr.is_empty() {
            return;
        }
        let _span = self.attribution.span(&self.module).entered();
        let (module, budget) = (self.module.name.as_str(), &self.module.budget);
        self.stdout.drain_to_log(module, "stdout", budget);
        self.stderr.drain_to_log(module, "stderr", budget);
    }

    /// Logs what the guest wrote during a call that failed, stderr first, as
    /// the message being handled, and returns what it wrote to stderr, where
    /// a panic's message is.
    pub(super) fn drain_failed(&self) -> Vec<u8> {
        let _span = self.attribution.span(&self.module).entered();
        let (stderr, _) = self.stderr.take();
        // Put the captured output back so it is logged with the failure.
        let (module, budget) = (self.module.name.as_str(), &self.module.budget);
        guest_io::log_lines(&stderr, module, "stderr", budget);
        self.stdout.drain_to_log(module, "stdout", budget);
        stderr
    }
}

/// A new store for `state`, its memory growth checked by the state's
/// limiter, with a deadline (for the instantiation) `ticks` from now.
pub(super) fn make(engine: &Engine, mut state: StoreState, ticks: u64) -> Store<StoreState> {
    state.deadline.arm(ticks);
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(ticks);
    store
}

/// Sets `store` up for a call on `messages` (with their ids, in order): the
/// memory limit `memory_bytes`, with no growth refused yet, the messages its
/// log lines are attributed to, and a deadline `ticks` from now.
pub(super) fn start_call<'a>(
    store: &mut Store<StoreState>,
    memory_bytes: usize,
    messages: &[Message],
    ids: impl Iterator<Item = &'a str>,
    ticks: u64,
) {
    let state = store.data_mut();
    state.limiter.limit = memory_bytes;
    state.limiter.refused = None;
    state.attribution.set(messages, ids);
    state.deadline.arm(ticks);
    store.set_epoch_deadline(ticks);
}

/// The module an instance runs, as its log lines name it, and the module's
/// log budget. A plugin has one, shared by the stores of all its instances,
/// so that the log rate limit is per module.
pub(crate) struct ModuleLog {
    name: String,
    short_hash: String,
    budget: LogBudget,
}

impl ModuleLog {
    /// The log of module `name`, whose hash starts with `short_hash`, with
    /// a full budget.
    pub(super) fn new(name: &str, short_hash: &str) -> Self {
        ModuleLog {
            name: name.to_owned(),
            short_hash: short_hash.to_owned(),
            budget: LogBudget::new(),
        }
    }

    /// The first 12 hex digits of the module's hash.
    pub(super) fn short_hash(&self) -> &str {
        &self.short_hash
    }

    /// The rate limit the module's log lines share.
    pub(super) fn budget(&self) -> &LogBudget {
        &self.budget
    }
}

/// Which message(s) a call is handling: log lines written during the call
/// (the guest's own, and its captured output) carry that message's
/// coordinates. The span is made only when a line is written, so a call
/// that logs nothing costs nothing here; the buffers are reused from call
/// to call.
#[derive(Default)]
struct Attribution {
    topic: String,
    partition: i32,
    offsets: Vec<i64>,
    ids: Vec<String>,
    /// The index of the message being handled.
    current: usize,
}

impl Attribution {
    fn set<'a>(&mut self, messages: &[Message], ids: impl Iterator<Item = &'a str>) {
        self.topic.clear();
        if let Some(first) = messages.first() {
            self.topic.push_str(&first.topic);
            self.partition = first.partition;
        }
        self.offsets.clear();
        self.offsets.extend(messages.iter().map(|m| m.offset));
        let mut n = 0;
        for id in ids {
            match self.ids.get_mut(n) {
                Some(kept) => {
                    kept.clear();
                    kept.push_str(id);
                }
                None => self.ids.push(id.to_owned()),
            }
            n += 1;
        }
        self.ids.truncate(n);
        self.current = 0;
    }

    /// The span for the message being handled.
    fn span(&self, module: &ModuleLog) -> tracing::Span {
        tracing::info_span!(
            "message",
            topic = %self.topic,
            partition = self.partition,
            offset = self.offsets.get(self.current).copied().unwrap_or(-1),
            module = module.name.as_str(),
            module_hash = module.short_hash.as_str(),
            correlation_id = self.ids.get(self.current).map_or("", String::as_str),
        )
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::sluice::handler::host::Host for StoreState {
    fn log(&mut self, level: Level, message: String) {
        let module = &self.module;
        self.attribution
            .span(module)
            .in_scope(|| module.budget.log(&module.name, level, &message));
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn handling(&mut self, index: u32) {
        let index = index as usize;
        if index < self.attribution.offsets.len() {
            // What the guest wrote so far belongs to the previous message.
            self.drain_stdio();
            self.attribution.current = index;
        }
    }
}

/// Enforces the route's memory limit on the whole instance, and remembers a
/// refusal, so that the trap that usually follows (an allocator aborting)
/// is reported as what it is.
///
/// A component holds several core modules, each with its own memories and
/// tables: the limit bounds their sum (table slots counted at
/// [`TABLE_SLOT_BYTES`] each), not each on its own, so splitting a handler
/// into more modules does not multiply what it may take.
struct MemoryLimiter {
    limit: usize,
    /// Bytes of all the instance's memories and tables now.
    used: usize,
    /// The size a refused growth asked for: the instance's total with it.
    refused: Option<usize>,
}

/// What one table slot is counted as: a function reference (a pointer, and
/// a type check word beside it).
const TABLE_SLOT_BYTES: usize = 16;

impl MemoryLimiter {
    fn new(limit: usize) -> Self {
        MemoryLimiter {
            limit,
            used: 0,
            refused: None,
        }
    }

    /// Admits growing something of the instance from `current` to `desired`
    /// bytes if the instance's total stays within the limit.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.limit {
            self.refused = Some(total);
            return false;
        }
        self.used = total;
        true
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let bytes = |slots: usize| slots.saturating_mul(TABLE_SLOT_BYTES);
        Ok(self.grow(bytes(current), bytes(desired)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_limit_bounds_the_sum_of_an_instances_memories_and_tables() {
        let mut limiter = MemoryLimiter::new(10 << 20);
        // Two memories of 4 MiB fit; a third does not, though it alone would.
        assert!(matches!(limiter.memory_growing(0, 4 << 20, None), Ok(true)));
        assert!(matches!(limiter.memory_growing(0, 4 << 20, None), Ok(true)));
        assert!(matches!(
            limiter.memory_growing(0, 4 << 20, None),
            Ok(false)
        ));
        assert_eq!(
            limiter.refused,
            Some(12 << 20),
            "the total it would have made"
        );
        // Growing one of them counts only the growth.
        assert!(matches!(
            limiter.memory_growing(4 << 20, 5 << 20, None),
            Ok(true)
        ));
        // Table slots count too: 1 MiB is 65536 slots of 16 bytes.
        assert!(matches!(limiter.table_growing(0, 65_536, None), Ok(true)));
        assert!(matches!(
            limiter.table_growing(65_536, 65_537, None),
            Ok(false)
        ));
        assert_eq!(limiter.used, 10 << 20);
    }
}
