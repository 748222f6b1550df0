//! Sluice: a Kafka consumer daemon that hands every message to a sandboxed
//! WebAssembly handler.
//!
//! # Layout
//!
//! A message's life, module by module:
//!
//! 1. [`wasm`] loads each plugin file once: it checks that the component
//!    targets the `sluice:handler/plugin` world at a compatible version,
//!    compiles it and keeps it ready to instantiate. For every message, an
//!    [`wasm::Invoker`] calls the handler's `handle` under a deadline, a
//!    memory limit and a stack limit, and returns a typed [`wasm::Outcome`]:
//!    the outputs, or a [`wasm::Failure`] saying exactly what went wrong.
//! 2. [`cli`] is the command line: `sluice check` loads a plugin, describes it
//!    and optionally invokes it once.
//! 3. [`telemetry`] sets up logging.
//! 4. [`replay`] is the dead-letter tool's work (`sluice dlq`): it reads the
//!    dead-letter topics without joining a group, filters and counts the
//!    records, and replays them to their original topics.
//!
//! The WIT contract in `wit/` is the one source of truth for the types that
//! cross the sandbox boundary; both this crate and the guest SDK generate
//! their bindings from it.

pub mod cli;
pub mod config;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod replay;
pub mod status;
pub mod telemetry;
pub mod wasm;

pub use pipeline::run;
