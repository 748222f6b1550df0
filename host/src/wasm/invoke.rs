//! One handler call under hard limits, and the typed outcome of it.
//!
//! An [`Invoker`] belongs to one worker. Depending on [`Isolation`] it builds
//! a new instance for every message or keeps one, and it always throws the
//! instance away after a trap, a timeout or a memory failure, so that a
//! failure never poisons the next message.
//!
//! The call is the last of the wasm modules in line, after the store, the
//! engine and the plugin, so the [`Runtime`]'s methods that need a call are
//! here too: loading a plugin, which makes a first instance of it, and
//! making an [`Invoker`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::{Func, TypedFunc};

use super::bindings::{self, HandlerError, Message, Output};
use super::deadline::Deadline;
use super::engine::{Isolation, Runtime};
use super::guest_io;
use super::outputs::{self, OutputLimits};
use super::packed::{Decoded, NoOutputs};
use super::plugin::{EntryPoint, LoadError, Plugin};
use super::store::{self, StoreState};

mod failure;

use failure::classify;
pub use failure::{Failure, TrapKind};

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
pub type CallOutcome = Result<Vec<Output>, Failure>;

/// What a `handle-batch` call returns: one result per message handled.
type BatchResults = super::packed::Results;

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
    pub fn invoke(&mut self, message: &Message, invocation: &Invocation) -> CallOutcome {
        self.invoke_with_id(message, "", invocation)
    }

    /// [`Invoker::invoke`], with an id (the correlation id) that log lines
    /// written during the call carry along with the message's coordinates.
    pub fn invoke_with_id(
        &mut self,
        message: &Message,
        id: &str,
        invocation: &Invocation,
    ) -> CallOutcome {
        self.runtime.guest_entered();
        let outcome = self.invoke_one(message, id, invocation);
        self.runtime.guest_returned();
        outcome
    }

    fn invoke_one(&mut self, message: &Message, id: &str, invocation: &Invocation) -> CallOutcome {
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
    ) -> Result<Vec<CallOutcome>, Failure> {
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
    ) -> Result<Vec<CallOutcome>, Failure> {
        let mut live = self.prepare(messages, ids.iter().map(String::as_str), invocation)?;
        let limits = &invocation.limits.outputs;
        let result = match live.runs {
            Runs::Packed(func) => call_packed(&mut live, func, messages, &mut self.packed, limits),
            Runs::Batch(func) => {
                // SAFETY: `func` is the instance's `handle-batch`. When the
                // plugin was loaded, its type was checked to be a list of what
                // the component's `handle` takes to a list of what `handle`
                // returns (`exports::batch_export`), and `handle` was checked
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
    ) -> Result<Vec<CallOutcome>, Failure> {
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
            let config = live.store.data().config();
            Arc::ptr_eq(config, &invocation.config) || **config == *invocation.config
        });
        let mut live = match kept {
            Some(live) => live,
            None => self.instantiate(invocation, ticks)?,
        };
        let memory_bytes = invocation.limits.memory_bytes;
        store::start_call(&mut live.store, memory_bytes, messages, ids, ticks);
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
                live.store.data().drain_stdio();
                if self.isolation == Isolation::Reused {
                    self.live = Some(live);
                }
                Ok(returned)
            }
            Err(error) => {
                let limits = invocation.limits;
                let state = live.store.data();
                Err(classify(&error, state, limits.timeout, limits.memory_bytes))
            }
        }
    }

    fn instantiate(&self, invocation: &Invocation, ticks: u64) -> Result<Live, Failure> {
        let config = self.runtime.config();
        let state = StoreState::new(
            config.guest_output_limit,
            invocation.limits.memory_bytes,
            invocation.config.clone(),
            self.plugin.log().clone(),
            Deadline::new(self.runtime.tick_count(), config.epoch_tick),
        );
        let mut store = store::make(self.runtime.engine(), state, ticks);
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
                let limits = invocation.limits;
                let failure = classify(&error, store.data(), limits.timeout, limits.memory_bytes);
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

/// Loading a plugin, which a call's first instance completes, and the
/// workers that call it.
impl Runtime {
    /// Reads, compiles and validates a plugin file. Compiling is CPU-heavy:
    /// call it from a blocking thread, not from an async task.
    pub fn load_file(&self, path: &Path) -> Result<Plugin, LoadError> {
        self.ready(Plugin::from_file(self, path)?)
    }

    /// Compiles and validates a plugin from bytes; `origin` names it in errors.
    pub fn load_bytes(&self, origin: &Path, bytes: &[u8]) -> Result<Plugin, LoadError> {
        self.ready(Plugin::from_bytes(self, origin, bytes)?)
    }

    /// Makes a first instance of a loaded plugin, so that a module every
    /// message would fail on is refused now, and hands the plugin back.
    fn ready(&self, plugin: Plugin) -> Result<Plugin, LoadError> {
        let plugin = Arc::new(plugin);
        self.trial(
            &plugin,
            self.config().max_memory_bytes,
            "processing.max_memory_mb",
        )?;
        // The first instance, the only other holder, is gone.
        Ok(Arc::into_inner(plugin).expect("no instance outlives `try_instantiate`"))
    }

    /// Refuses a loaded plugin for a memory limit below the runtime's (a
    /// route's `memory_limit_mb`) when no instance of it can be made within
    /// that limit, as its load does for the runtime's: every message would
    /// fail. `setting` names the limit in the reason, what the module's
    /// initial memory must fit in.
    pub fn fits_within(
        &self,
        plugin: &Arc<Plugin>,
        memory_bytes: usize,
        setting: &str,
    ) -> Result<(), LoadError> {
        if memory_bytes >= self.config().max_memory_bytes {
            // Its load made an instance within the runtime's limit.
            return Ok(());
        }
        self.trial(plugin, memory_bytes, setting)
    }

    /// Makes one instance of `plugin` within `memory_bytes` (`setting`) and
    /// drops it; a failure refuses the plugin.
    fn trial(
        &self,
        plugin: &Arc<Plugin>,
        memory_bytes: usize,
        setting: &str,
    ) -> Result<(), LoadError> {
        try_instantiate(self, plugin, memory_bytes, setting).map_err(|reason| {
            LoadError::Instantiate {
                path: plugin.path().to_owned(),
                reason,
            }
        })
    }

    /// A worker that invokes `plugin` with the given isolation mode.
    pub fn invoker(&self, plugin: Arc<Plugin>, isolation: Isolation) -> Invoker {
        Invoker::new(self.clone(), plugin, isolation)
    }
}

/// Makes one instance of `plugin` within `memory_bytes` and drops it, as a
/// module's load does before the module serves, and as a route does before
/// it takes a module: a module that cannot be instantiated within the limits
/// (its memory or tables do not fit, its start code traps or does not finish
/// in time) is refused then, with the reason, instead of failing every
/// message; and `handle` is type-checked against the contract. When the
/// memory does not fit, the reason names `setting`, the limit it must fit in.
fn try_instantiate(
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
    // when the plugin was loaded (`exports::packed_export`); checking it
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

/// A result lifted through the component model, checked against the
/// route's output bounds (wasmtime built it from the guest's memory, each
/// part at most a few times its size there).
fn checked(returned: Result<Vec<Output>, HandlerError>, limits: &OutputLimits) -> Decoded {
    match returned {
        Ok(outputs) => match outputs::check(&outputs, limits) {
            Ok(()) => Ok(outputs),
            Err(e) => Err(NoOutputs::Limit(e)),
        },
        Err(error) => Err(NoOutputs::Handler(inert_error(error))),
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

/// The handler's own error with its message, guest text, made inert.
fn inert_error(error: HandlerError) -> HandlerError {
    match error {
        HandlerError::Retryable(message) => HandlerError::Retryable(guest_io::inert(&message)),
        HandlerError::Permanent(message) => HandlerError::Permanent(guest_io::inert(&message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rounds_up_and_adds_a_tick() {
        let ms = Duration::from_millis;
        assert_eq!(deadline_ticks(ms(100), ms(1)), 101);
        assert_eq!(deadline_ticks(Duration::from_micros(1500), ms(1)), 3);
        assert_eq!(deadline_ticks(Duration::ZERO, ms(1)), 1);
    }
}
