//! Sluice: a Kafka consumer daemon that hands every message to a sandboxed
//! WebAssembly handler.
//!
//! # Layout
//!
//! A message's life, module by module:
//!
//! 1. [`config`] reads `sluice.toml` and its `KAFKA_*` overrides and refuses
//!    a bad value with the field, the value and what is allowed.
//! 2. [`wasm`] loads each plugin file once: it checks that the component
//!    targets the `sluice:handler/plugin` world at a compatible version,
//!    compiles it and keeps it ready to instantiate. For every message, an
//!    [`wasm::Invoker`] calls the handler's `handle` under a deadline, a
//!    memory limit and a stack limit, and returns a typed [`wasm::CallOutcome`]:
//!    the outputs, or a [`wasm::Failure`] saying exactly what went wrong.
//! 3. [`kafka`] configures every client (the consumer, the producer and the
//!    tools' clients), TLS and SASL included, reading the certificate and
//!    secret files the config names, and starts the embedded development
//!    broker.
//! 4. [`pipeline`] consumes the routed topics. A message's path reads in
//!    five places, in this order: `pipeline/consumer/` (the consumer loop
//!    hands it to its partition's worker as its machine decides: which
//!    partition has a worker, pauses, restarts, commits, with no I/O in
//!    `consumer/machine.rs`), `pipeline/partition.rs` (the
//!    worker carries out what the core decides), `pipeline/core.rs` (the
//!    delivery core: calls, retries, holds, dead letters, stops, what is
//!    produced and when an offset is stored, as a state machine with no
//!    I/O), `pipeline/calls.rs` (the handler call) and
//!    `pipeline/delivery.rs` (the producer and the broker's answers).
//!    [`policy`] decides what a failure means, [`route`] is a route at run
//!    time with its module, and [`breaker`] holds the circuit breakers that
//!    guard the broker and each route's handler. `docs/architecture.md`
//!    draws the threads and channels and where each guarantee is enforced.
//! 5. [`plugins`] watches the plugins directory and swaps new module
//!    versions into their routes.
//! 6. [`status`] is what the running daemon knows about itself; [`http`]
//!    serves it as health, readiness, [`metrics`], plugins and an admin API.
//! 7. [`replay`] is the dead-letter tool's work (`sluice dlq`): it reads the
//!    dead-letter topics without joining a group, filters and counts the
//!    records, and replays them to their original topics.
//! 8. [`rewind`] is the offsets tool's work (`sluice offsets`): it reads
//!    where the daemon's group stands on each routed partition and, while
//!    the group has no live member, moves its committed offsets.
//! 9. [`cli`] is the command line (`run`, `check`, `demo`, `dlq`,
//!    `offsets`), and [`telemetry`] sets up logging.
//! 10. [`trace`] reads an input's W3C trace context, gives its outputs and
//!     dead letter a child of it, and exports each message's span over OTLP
//!     when `telemetry.otlp_endpoint` is set.
//!
//! The WIT contract in `wit/` is the one source of truth for the types that
//! cross the sandbox boundary; both this crate and the guest SDK generate
//! their bindings from it.

pub mod breaker;
pub mod cli;
pub mod config;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod policy;
pub mod replay;
pub mod rewind;
pub mod route;
pub mod status;
pub mod telemetry;
pub mod trace;
pub mod wasm;

pub use pipeline::run;

#[cfg(feature = "mimalloc")]
/// The memory allocator the `sluice` binary declares as its global allocator.
///
/// Per message, the daemon allocates and frees a handful of short-lived
/// buffers on several threads (the consumer loop, the handler workers, the
/// acknowledgers); with glibc's allocator that was about a fifth of the
/// daemon's CPU time in the end-to-end bench. With the `mimalloc` feature
/// (on by default) it also takes over `malloc` and `free` for the whole
/// process, so the Kafka client's allocations are served by it too. An
/// embedder that builds its own binary on this library declares it the same
/// way:
///
/// ```
/// #[global_allocator]
/// static ALLOCATOR: sluice::Allocator = sluice::Allocator;
/// ```
pub use mimalloc::MiMalloc as Allocator;
