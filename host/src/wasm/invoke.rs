//! One handler call under hard limits, and the typed outcome of it.
//!
//! An [`Invoker`] belongs to one worker. Depending on [`Isolation`] it builds
//! a new instance for every message or keeps one, and it always throws the
//! instance away after a trap, a timeout or a memory failure, so that a
//! failure never poisons the next message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Func, ResourceTable, TypedFunc};
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{self, HandlerError, Level, Message, Output};
use super::deadline::{Deadline, Polls};
use super::engine::{Isolation, Runtime};
use super::guest_io::{self, CappedOutput};
use super::outputs::{self, OutputLimitExceeded, OutputLimits};
use super::packed::{Decoded, Refusal};
use super::plugin::Plugin;
use crate::policy::FailureKind;

/// The per-call limits of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time a call may take, instantiation included.
    pub timeout: Duration,
    /// The most linear memory the instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// The bounds on what a call may return for one message.
    pub outputs: OutputLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(1),
            memory_bytes: 64 << 20,
            outputs: OutputLimits::default(),
        }
    }
}

/// Everything about a call except the message itself.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// The limits to enforce.
    pub limits: Limits,
    /// The route's `[routes.config]` table, answered by the guest's `config(key)`.
    pub config: Arc<BTreeMap<String, String>>,
}

/// What became of one call: the outputs to produce, or why there are none.
pub type Outcome = Result<Vec<Output>, Failure>;

/// What a `handle-batch` call returns: one result per message handled.
type BatchResults = super::packed::Results;

/// Which of a module's exports a call goes through. Every one must do what
/// one `handle` call per message would; they differ in cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryPoint {
    /// `handle`: one call per message.
    Handle,
    /// `handle-batch`: several messages of a partition per call, each string
    /// and byte list copied into the guest on its own.
    Batch,
    /// `handle-packed`: several messages per call, copied into the guest as
    /// one buffer, with the results copied back as one buffer.
    Packed,
}

impl EntryPoint {
    /// The export's name.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryPoint::Handle => "handle",
            EntryPoint::Batch => "handle-batch",
            EntryPoint::Packed => "handle-packed",
        }
    }
}

/// How a call failed. The pipeline decides from the variant whether to retry,
/// dead-letter or stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The handler returned `handler-error::retryable` or `::permanent`.
    #[error("handler returned a {} error: {message}", if *.retryable { "retryable" } else { "permanent" })]
    Handler {
        /// Whether the handler said a retry may help.
        retryable: bool,
        /// The handler's own explanation.
        message: String,
    },
    /// The call did not return within the route's timeout and was interrupted.
    #[error("handler did not return within {} ms and was interrupted", .0.as_millis())]
    Timeout(Duration),
    /// The guest trapped: a panic, a stack overflow, a bad memory access...
    #[error("handler trapped ({kind}): {detail}")]
    Trap {
        /// The kind of trap, from a small fixed set.
        kind: TrapKind,
        /// The trap message, or the panic message for a panic.
        detail: String,
    },
    /// The guest tried to grow its memory past the route's limit.
    #[error(
        "handler exceeded its memory limit of {limit_bytes} bytes (its memories and tables would \
         have taken {requested_bytes})"
    )]
    MemoryLimitExceeded {
        /// The route's limit.
        limit_bytes: usize,
        /// What all the instance's memories and tables would have taken
        /// with the growth it asked for.
        requested_bytes: usize,
    },
    /// The host could not create an instance (for example, every pool slot is
    /// in use). Not the handler's fault; a retry may succeed.
    #[error("handler could not be instantiated: {0}")]
    Instantiate(String),
    /// What the handler returned for the message breaks one of the route's
    /// output bounds; nothing of it is produced.
    #[error(transparent)]
    InvalidOutput(OutputLimitExceeded),
}

impl Failure {
    /// The failure's kind: what `retry_on` names and the retry policy
    /// decides on (see [`crate::policy`]). An instance that could not be
    /// created is the host's problem (a full pool), so it counts as
    /// retryable.
    pub fn kind(&self) -> FailureKind {
        match self {
            Failure::Handler {
                retryable: true, ..
            }
            | Failure::Instantiate(_) => FailureKind::Retryable,
            Failure::Handler {
                retryable: false, ..
            } => FailureKind::Permanent,
            Failure::Timeout(_) => FailureKind::Timeout,
            Failure::Trap { .. } => FailureKind::Trap,
            Failure::MemoryLimitExceeded { .. } => FailureKind::MemoryLimit,
            Failure::InvalidOutput(_) => FailureKind::InvalidOutput,
        }
    }
}

/// The kinds of trap, as a fixed set of labels for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrapKind {
    /// The guest panicked (Rust's `panic!` aborts with `unreachable`).
    Panic,
    /// An `unreachable` instruction without a panic message.
    Unreachable,
    /// The guest's call stack exceeded the host's stack limit.
    StackOverflow,
    /// An out-of-bounds or misaligned memory or table access.
    MemoryOutOfBounds,
    /// Integer overflow, division by zero or a bad float-to-int conversion.
    Arithmetic,
    /// A call through a null or mistyped function reference.
    IndirectCall,
    /// A host function refused the call, or the component model's rules were
    /// broken (for example, an invalid string or a reentrant call).
    Host,
    /// Any other trap.
    Other,
}

impl TrapKind {
    /// The label used in logs, metrics and dead-letter records.
    pub fn as_str(self) -> &'static str {
        match self {
            TrapKind::Panic => "panic",
            TrapKind::Unreachable => "unreachable",
            TrapKind::StackOverflow => "stack_overflow",
            TrapKind::MemoryOutOfBounds => "memory_out_of_bounds",
            TrapKind::Arithmetic => "arithmetic",
            TrapKind::IndirectCall => "indirect_call",
            TrapKind::Host => "host",
            TrapKind::Other => "other",
        }
    }
}

impl std::fmt::Display for TrapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The data every store carries.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    /// The route's config table, fixed for the life of the instance.
    config: Arc<BTreeMap<String, String>>,
    /// The plugin, for the module name and its log budget.
    plugin: Arc<Plugin>,
    stdout: CappedOutput,
    stderr: CappedOutput,
    /// The messages of the current call, to attribute log lines to.
    attribution: Attribution,
    /// The current call's deadline, for host calls that wait.
    deadline: Deadline,
}

impl StoreState {
    /// `wasi:io/poll` for this store, bounded by the call's deadline.
    pub(crate) fn polls(&mut self) -> Polls<'_> {
        Polls {
            table: &mut self.table,
            deadline: &self.deadline,
        }
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
    fn span(&self, plugin: &Plugin) -> tracing::Span {
        tracing::info_span!(
            "message",
            topic = %self.topic,
            partition = self.partition,
            offset = self.offsets.get(self.current).copied().unwrap_or(-1),
            module = plugin.name(),
            module_hash = plugin.short_hash(),
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
        let plugin = &self.plugin;
        self.attribution
            .span(plugin)
            .in_scope(|| plugin.log_budget.log(plugin.name(), level, &message));
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn handling(&mut self, index: u32) {
        let index = index as usize;
        if index < self.attribution.offsets.len() {
            // What the guest wrote so far belongs to the previous message.
            drain_stdio(self);
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

/// A live instance and the store that owns it.
struct Live {
    store: Store<StoreState>,
    instance: wasmtime::component::Instance,
    /// The typed `handle`, looked up on first use: an instance called
    /// through `handle-packed` never needs it, and looking it up type-checks
    /// it again, a few per cent of a fresh instance's cost.
    handler: Option<bindings::Plugin>,
    /// The export a run of messages goes through.
    runs: Runs,
}

impl Live {
    /// The typed `handle`, and the store to call it with.
    fn handler(
        &mut self,
        plugin: &Plugin,
    ) -> wasmtime::Result<(&bindings::Plugin, &mut Store<StoreState>)> {
        let handler = match self.handler.take() {
            Some(handler) => handler,
            None => plugin.indices().load(&mut self.store, &self.instance)?,
        };
        Ok((self.handler.insert(handler), &mut self.store))
    }
}

/// How an instance is handed a run of messages.
#[derive(Clone, Copy)]
enum Runs {
    /// Through `handle-packed`, which single messages go through too.
    Packed(Func),
    /// Through `handle-batch`.
    Batch(Func),
    /// One `handle` call per message.
    Singly,
}

/// Invokes one plugin for one worker.
pub struct Invoker {
    runtime: Runtime,
    plugin: Arc<Plugin>,
    isolation: Isolation,
    /// The export calls go through.
    entry: EntryPoint,
    /// The kept instance in [`Isolation::Reused`] mode.
    live: Option<Live>,
    /// The encoded messages of a `handle-packed` call, kept between calls.
    packed: Vec<u8>,
}

impl Invoker {
    pub(crate) fn new(runtime: Runtime, plugin: Arc<Plugin>, isolation: Isolation) -> Self {
        let entry = plugin.entry_point();
        Invoker {
            runtime,
            plugin,
            isolation,
            entry,
            live: None,
            packed: Vec::new(),
        }
    }

    /// The export calls go through: the fastest one the module has.
    pub fn entry_point(&self) -> EntryPoint {
        self.entry
    }

    /// Makes calls go through `entry` or a slower export, to compare them.
    /// Each export must behave the same, so this changes only the cost.
    pub fn limit_entry_point(&mut self, entry: EntryPoint) {
        self.entry = self.entry.min(entry);
        // An instance looks up only the export it is called through.
        self.live = None;
    }

    /// The plugin this invoker calls.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Calls the handler for one message. Blocks the thread for up to the
    /// timeout: call it from a blocking thread, not from an async task.
    pub fn invoke(&mut self, message: &Message, invocation: &Invocation) -> Outcome {
        self.invoke_with_id(message, "", invocation)
    }

    /// [`Invoker::invoke`], with an id (the correlation id) that log lines
    /// written during the call carry along with the message's coordinates.
    pub fn invoke_with_id(
        &mut self,
        message: &Message,
        id: &str,
        invocation: &Invocation,
    ) -> Outcome {
        self.runtime.guest_entered();
        let outcome = self.invoke_one(message, id, invocation);
        self.runtime.guest_returned();
        outcome
    }

    fn invoke_one(&mut self, message: &Message, id: &str, invocation: &Invocation) -> Outcome {
        let messages = std::slice::from_ref(message);
        let mut live = self.prepare(messages, [id].into_iter(), invocation)?;
        let limits = &invocation.limits.outputs;
        let result = match live.runs {
            Runs::Packed(func) => call_packed(&mut live, func, messages, &mut self.packed, limits)
                .and_then(|results| {
                    results.into_iter().next().ok_or_else(|| {
                        wasmtime::format_err!("handle-packed returned no result for the message")
                    })
                }),
            Runs::Batch(_) | Runs::Singly => live
                .handler(&self.plugin)
                .and_then(|(handler, store)| {
                    handler.sluice_handler_handler().call_handle(store, message)
                })
                .map(|returned| checked(returned, limits)),
        };
        let returned = self.finish(live, result, invocation)?;
        returned.map_err(Failure::from)
    }

    /// Whether [`Invoker::invoke_batch`] can hand several messages to one
    /// call: the module exports `handle-batch`, and instances are reused
    /// (a fresh instance per message rules out sharing one between them).
    pub fn batches(&self) -> bool {
        self.isolation == Isolation::Reused && self.entry >= EntryPoint::Batch
    }

    /// Calls the handler's `handle-batch` once for `messages` (consecutive
    /// messages of one partition, with their ids), within one timeout for
    /// the whole call. Returns one outcome per message handled, in order;
    /// there may be fewer than messages when the handler stopped after a
    /// failure. A trap, timeout or memory failure is the whole call's: the
    /// caller then hands each message to [`Invoker::invoke_with_id`] to find
    /// the one at fault. Without a batch export it calls `handle` for each.
    pub fn invoke_batch(
        &mut self,
        messages: &[Message],
        ids: &[String],
        invocation: &Invocation,
    ) -> Result<Vec<Outcome>, Failure> {
        if !self.batches() {
            return self.invoke_batch_singly(messages, ids, invocation);
        }
        self.runtime.guest_entered();
        let outcomes = self.invoke_run(messages, ids, invocation);
        self.runtime.guest_returned();
        outcomes
    }

    /// One `handle-packed` or `handle-batch` call for `messages`.
    fn invoke_run(
        &mut self,
        messages: &[Message],
        ids: &[String],
        invocation: &Invocation,
    ) -> Result<Vec<Outcome>, Failure> {
        let mut live = self.prepare(messages, ids.iter().map(String::as_str), invocation)?;
        let limits = &invocation.limits.outputs;
        let result = match live.runs {
            Runs::Packed(func) => call_packed(&mut live, func, messages, &mut self.packed, limits),
            Runs::Batch(func) => {
                // SAFETY: `func` is the instance's `handle-batch`. When the
                // plugin was loaded, its type was checked to be a list of what
                // the component's `handle` takes to a list of what `handle`
                // returns (`plugin::batch_export`), and `handle` was checked
                // against the contract, which makes exactly this signature,
                // on a first instance (`try_instantiate`); every instance of
                // a component has the same types.
                let batch =
                    unsafe { TypedFunc::<(&[Message],), (BatchResults,)>::new_unchecked(func) };
                batch
                    .call(&mut live.store, (messages,))
                    .map(|(results,)| batch_decoded(results, messages.len(), limits))
            }
            Runs::Singly => {
                // No usable batch export after all: one call per message.
                self.live = Some(live);
                return self.invoke_batch_singly(messages, ids, invocation);
            }
        };
        let results = self.finish(live, result, invocation)?;
        Ok(results
            .into_iter()
            .map(|r| r.map_err(Failure::from))
            .collect())
    }

    /// One `handle` call per message, stopping after the first failure.
    fn invoke_batch_singly(
        &mut self,
        messages: &[Message],
        ids: &[String],
        invocation: &Invocation,
    ) -> Result<Vec<Outcome>, Failure> {
        let mut outcomes = Vec::with_capacity(messages.len());
        for (message, id) in messages.iter().zip(ids) {
            let outcome = self.invoke_with_id(message, id, invocation);
            let failed = outcome.is_err();
            outcomes.push(outcome);
            if failed {
                break;
            }
        }
        Ok(outcomes)
    }

    /// The instance for a call, with the call's limits, config and
    /// attribution set.
    fn prepare<'a>(
        &mut self,
        messages: &[Message],
        ids: impl Iterator<Item = &'a str>,
        invocation: &Invocation,
    ) -> Result<Live, Failure> {
        let ticks = deadline_ticks(invocation.limits.timeout, self.runtime.config().epoch_tick);
        // An instance keeps the config table it was made with (guests may
        // cache what they read): another table needs another instance.
        let kept = self.live.take().filter(|live| {
            let config = &live.store.data().config;
            Arc::ptr_eq(config, &invocation.config) || **config == *invocation.config
        });
        let mut live = match kept {
            Some(live) => live,
            None => self.instantiate(invocation, ticks)?,
        };
        let state = live.store.data_mut();
        state.limiter.limit = invocation.limits.memory_bytes;
        state.limiter.refused = None;
        state.attribution.set(messages, ids);
        state.deadline.arm(ticks);
        live.store.set_epoch_deadline(ticks);
        Ok(live)
    }

    /// Keeps the instance after a call that returned (in reused mode) and
    /// logs what the guest wrote; after a trap the instance is dropped, since
    /// its state is unknown.
    fn finish<R>(
        &mut self,
        live: Live,
        result: wasmtime::Result<R>,
        invocation: &Invocation,
    ) -> Result<R, Failure> {
        match result {
            Ok(returned) => {
                drain_stdio(live.store.data());
                if self.isolation == Isolation::Reused {
                    self.live = Some(live);
                }
                Ok(returned)
            }
            Err(error) => Err(classify(&error, live.store.data(), invocation.limits)),
        }
    }

    fn instantiate(&self, invocation: &Invocation, ticks: u64) -> Result<Live, Failure> {
        let limit = self.runtime.config().guest_output_limit;
        let stdout = CappedOutput::new(limit);
        let stderr = CappedOutput::new(limit);
        // Nothing is granted: no preopened directories, no environment, no
        // arguments, no sockets, no name lookups. Clocks and randomness stay.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut state = StoreState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(invocation.limits.memory_bytes),
            config: invocation.config.clone(),
            plugin: self.plugin.clone(),
            stdout,
            stderr,
            attribution: Attribution::default(),
            deadline: Deadline::new(self.runtime.tick_count(), self.runtime.config().epoch_tick),
        };
        state.deadline.arm(ticks);
        let mut store = Store::new(self.runtime.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(ticks);
        match self.plugin.pre().instance_pre().instantiate(&mut store) {
            Ok(instance) => {
                // Only the export calls go through is looked up; without a
                // usable `handle-packed`, `handle-batch` stands in for it.
                // The types of both were checked when the plugin was loaded.
                let packed = (self.entry == EntryPoint::Packed)
                    .then(|| self.plugin.packed_export())
                    .flatten()
                    .and_then(|index| instance.get_func(&mut store, index));
                let runs = match packed {
                    Some(func) => Runs::Packed(func),
                    None => (self.entry >= EntryPoint::Batch)
                        .then(|| self.plugin.batch_export())
                        .flatten()
                        .and_then(|index| instance.get_func(&mut store, index))
                        .map_or(Runs::Singly, Runs::Batch),
                };
                Ok(Live {
                    store,
                    instance,
                    handler: None,
                    runs,
                })
            }
            Err(error) => {
                let failure = classify(&error, store.data(), invocation.limits);
                Err(match failure {
                    Failure::Trap {
                        kind: TrapKind::Host,
                        detail,
                    } => Failure::Instantiate(detail),
                    other => other,
                })
            }
        }
    }
}

/// Makes one instance of `plugin` within `memory_bytes` and drops it, as a
/// module's load does before the module serves, and as a route does before
/// it takes a module: a module that cannot be instantiated within the limits
/// (its memory or tables do not fit, its start code traps or does not finish
/// in time) is refused then, with the reason, instead of failing every
/// message; and `handle` is type-checked against the contract. When the
/// memory does not fit, the reason names `setting`, the limit it must fit in.
pub(crate) fn try_instantiate(
    runtime: &Runtime,
    plugin: &Arc<Plugin>,
    memory_bytes: usize,
    setting: &str,
) -> Result<(), String> {
    let invoker = Invoker::new(runtime.clone(), plugin.clone(), Isolation::Fresh);
    let invocation = Invocation {
        limits: Limits {
            timeout: TRIAL_TIMEOUT,
            memory_bytes,
            outputs: OutputLimits::default(),
        },
        config: Arc::default(),
    };
    let ticks = deadline_ticks(TRIAL_TIMEOUT, runtime.config().epoch_tick);
    runtime.guest_entered();
    let made = invoker.instantiate(&invocation, ticks);
    runtime.guest_returned();
    let mut live = made.map_err(|failure| match failure {
        Failure::Instantiate(detail) => detail,
        Failure::MemoryLimitExceeded { .. } => {
            format!("{failure}; its initial memory must fit in {setting}")
        }
        other => format!(
            "{other}; making an instance must neither trap nor take {} s",
            TRIAL_TIMEOUT.as_secs()
        ),
    })?;
    live.handler(plugin).map(drop).map_err(|e| {
        format!(
            "`handle` does not have the contract's type ({e:#}); rebuild the module with the \
             current sluice-guest SDK"
        )
    })
}

/// How long a module's first instance may take to be made when it is loaded.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls `handle-packed` with `messages`, encoded in `buffer` (kept from
/// call to call), and decodes the results within `limits`.
fn call_packed(
    live: &mut Live,
    func: Func,
    messages: &[Message],
    buffer: &mut Vec<u8>,
    limits: &OutputLimits,
) -> wasmtime::Result<Vec<Decoded>> {
    buffer.clear();
    super::packed::encode(messages, buffer);
    // SAFETY: `func` is the instance's `handle-packed`, whose type was
    // checked to be `func(list<u8>) -> list<u8>`, exactly this signature,
    // when the plugin was loaded (`plugin::packed_export`); checking it
    // again costs a walk of the types per call.
    let typed = unsafe { TypedFunc::<(&[u8],), (Vec<u8>,)>::new_unchecked(func) };
    let returned = typed.call(&mut live.store, (buffer.as_slice(),));
    // A run of large messages must not keep its memory for good.
    if buffer.capacity() > KEPT_BUFFER_BYTES {
        *buffer = Vec::new();
    }
    let (returned,) = returned?;
    Ok(super::packed::decode(&returned, messages.len(), limits)?)
}

/// A result lifted through the component model, checked against the
/// route's output bounds (wasmtime built it from the guest's memory, each
/// part at most a few times its size there).
/// What `handle-batch`'s `results` for `expected` messages become: one
/// result per message at most (results past the last message are ignored),
/// each checked against `limits`.
pub(crate) fn batch_decoded(
    results: BatchResults,
    expected: usize,
    limits: &OutputLimits,
) -> Vec<Decoded> {
    results
        .into_iter()
        .take(expected)
        .map(|returned| checked(returned, limits))
        .collect()
}

fn checked(returned: Result<Vec<Output>, HandlerError>, limits: &OutputLimits) -> Decoded {
    match returned {
        Ok(outputs) => match outputs::check(&outputs, limits) {
            Ok(()) => Ok(outputs),
            Err(e) => Err(Refusal::Limit(e)),
        },
        Err(error) => Err(Refusal::Handler(inert_error(error))),
    }
}

/// The most memory a worker keeps for encoding messages between calls.
const KEPT_BUFFER_BYTES: usize = 1 << 20;

/// How many epoch ticks make `timeout`: rounded up, plus one because the next
/// tick may come at once.
fn deadline_ticks(timeout: Duration, tick: Duration) -> u64 {
    let tick = tick.as_nanos().max(1);
    let ticks = timeout.as_nanos().div_ceil(tick) + 1;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

impl From<HandlerError> for Failure {
    fn from(error: HandlerError) -> Failure {
        let (retryable, message) = match error {
            HandlerError::Retryable(message) => (true, message),
            HandlerError::Permanent(message) => (false, message),
        };
        Failure::Handler { retryable, message }
    }
}

/// The handler's own error with its message, guest text, made inert.
fn inert_error(error: HandlerError) -> HandlerError {
    match error {
        HandlerError::Retryable(message) => HandlerError::Retryable(guest_io::inert(&message)),
        HandlerError::Permanent(message) => HandlerError::Permanent(guest_io::inert(&message)),
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Failure {
        match refusal {
            Refusal::Handler(error) => Failure::from(error),
            Refusal::Limit(e) => Failure::InvalidOutput(e),
        }
    }
}

/// Logs what the guest wrote to stdout and stderr during the call, as the
/// message being handled.
fn drain_stdio(state: &StoreState) {
    if state.stdout.is_empty() && state.stderr.is_empty() {
        return;
    }
    let _span = state.attribution.span(&state.plugin).entered();
    let (module, budget) = (state.plugin.name(), &state.plugin.log_budget);
    state.stdout.drain_to_log(module, "stdout", budget);
    state.stderr.drain_to_log(module, "stderr", budget);
}

/// Turns a wasmtime error from a call into a [`Failure`].
fn classify(error: &wasmtime::Error, state: &StoreState, limits: Limits) -> Failure {
    let _span = state.attribution.span(&state.plugin).entered();
    let (stderr, _) = state.stderr.take();
    let panic = panic_message(&String::from_utf8_lossy(&stderr));
    // Put the captured output back so it is logged with the failure.
    let (module, budget) = (state.plugin.name(), &state.plugin.log_budget);
    guest_io::log_lines(&stderr, module, "stderr", budget);
    state.stdout.drain_to_log(module, "stdout", budget);

    if let Some(requested_bytes) = state.limiter.refused {
        return Failure::MemoryLimitExceeded {
            limit_bytes: limits.memory_bytes,
            requested_bytes,
        };
    }
    let Some(trap) = error.downcast_ref::<Trap>() else {
        return Failure::Trap {
            kind: TrapKind::Host,
            detail: guest_io::inert(&format!("{error:#}")),
        };
    };
    let kind = match trap {
        Trap::Interrupt => return Failure::Timeout(limits.timeout),
        Trap::StackOverflow => TrapKind::StackOverflow,
        Trap::UnreachableCodeReached if panic.is_some() => TrapKind::Panic,
        Trap::UnreachableCodeReached => TrapKind::Unreachable,
        Trap::MemoryOutOfBounds | Trap::HeapMisaligned | Trap::TableOutOfBounds => {
            TrapKind::MemoryOutOfBounds
        }
        Trap::IntegerOverflow | Trap::IntegerDivisionByZero | Trap::BadConversionToInteger => {
            TrapKind::Arithmetic
        }
        Trap::IndirectCallToNull | Trap::BadSignature => TrapKind::IndirectCall,
        _ => TrapKind::Other,
    };
    let detail = match (kind, panic) {
        (TrapKind::Panic, Some(message)) => guest_io::inert(&message),
        _ => trap.to_string(),
    };
    Failure::Trap { kind, detail }
}

/// Extracts the message of a Rust panic from what the guest wrote to stderr:
/// the lines after `panicked at FILE:LINE:COL:` up to the `note:` line.
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.find("panicked at ")?;
    let rest = &stderr[start..];
    let (location_line, after) = rest.split_once('\n').unwrap_or((rest, ""));
    let location = location_line
        .trim_start_matches("panicked at ")
        .trim_end_matches(':');
    let message: Vec<&str> = after
        .lines()
        .take_while(|l| !l.starts_with("note:"))
        .collect();
    Some(format!("{} (at {location})", message.join("\n").trim()))
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

    #[test]
    fn deadline_rounds_up_and_adds_a_tick() {
        let ms = Duration::from_millis;
        assert_eq!(deadline_ticks(ms(100), ms(1)), 101);
        assert_eq!(deadline_ticks(Duration::from_micros(1500), ms(1)), 3);
        assert_eq!(deadline_ticks(Duration::ZERO, ms(1)), 1);
    }

    #[test]
    fn panic_message_is_extracted_from_rust_stderr() {
        let stderr = "thread '<unnamed>' panicked at src/lib.rs:12:9:\nmisbehave: asked to panic\n\
                      note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("misbehave: asked to panic (at src/lib.rs:12:9)")
        );
        assert_eq!(panic_message("just a log line\n"), None);
    }

    #[test]
    fn each_failure_has_the_kind_retry_on_names() {
        let trap = Failure::Trap {
            kind: TrapKind::Panic,
            detail: String::new(),
        };
        let handler = |retryable| Failure::Handler {
            retryable,
            message: String::new(),
        };
        assert_eq!(trap.kind(), FailureKind::Trap);
        assert_eq!(
            Failure::Timeout(Duration::from_secs(1)).kind(),
            FailureKind::Timeout
        );
        assert_eq!(handler(true).kind(), FailureKind::Retryable);
        assert_eq!(handler(false).kind(), FailureKind::Permanent);
        assert_eq!(
            Failure::Instantiate(String::new()).kind(),
            FailureKind::Retryable
        );
    }
}
