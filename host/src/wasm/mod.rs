//! The WebAssembly runtime: one engine, plugin loading and validation, and the
//! sandboxed invocation of a handler for one message.
//!
//! Owns everything wasmtime: the [`Engine`](wasmtime::Engine) and its epoch
//! ticker, the [`Linker`](wasmtime::component::Linker) with the host imports,
//! compiled plugins ([`Plugin`]) and per-call stores. It knows nothing about
//! Kafka: a message comes in as a [`Message`], and what comes back is a
//! [`CallOutcome`]: the outputs, or a typed [`Failure`] that the pipeline turns
//! into a retry or a dead-letter record.
//!
//! The modules of a call depend on each other in one line, each only on
//! those before it: `store` (a store's data: WASI, the memory limiter, the
//! host functions), `engine` (the engine, its linker and the deadline clock),
//! `plugin` (loading and checking a component) and `invoke` (the call).

mod cache;
mod deadline;
mod engine;
mod guest_io;
pub(crate) mod invoke;
pub(crate) mod outputs;
pub(crate) mod packed;
mod plugin;
mod store;

pub use cache::CacheError;
pub use engine::{
    CORE_INSTANCES_PER_COMPONENT, Isolation, MEMORIES_PER_COMPONENT, MEMORIES_PER_CORE_MODULE,
    Runtime, RuntimeConfig, TABLE_ELEMENTS, TABLES_PER_COMPONENT, TABLES_PER_CORE_MODULE,
};
pub use guest_io::{MAX_GUEST_TEXT, MAX_LOG_MESSAGE};
pub use invoke::{CallOutcome, Failure, Invocation, Invoker, Limits, TrapKind};
pub use outputs::{MAX_TOPIC_BYTES, OutputLimitExceeded, OutputLimits};
pub use plugin::{EntryPoint, LoadError, Plugin, PluginInfo};

/// Types generated from the WIT contract in `wit/`, the one source of truth.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        additional_derives: [PartialEq, Eq],
    });

    pub use self::exports::sluice::handler::handler::{HandlerError, Header, Message, Output};
    pub use self::sluice::handler::host::Level;
}

pub use bindings::{HandlerError, Header, Level, Message, Output};

/// The WIT package this host implements, and the versions it accepts.
pub mod contract {
    /// The package name of the handler contract.
    pub const PACKAGE: &str = "sluice:handler";
    /// The version of the contract this host speaks.
    pub const VERSION: &str = "0.1.0";
    /// The interface a handler must export.
    pub const HANDLER_EXPORT: &str = "sluice:handler/handler@0.1.0";
    /// The interface the host provides to handlers.
    pub const HOST_IMPORT: &str = "sluice:handler/host@0.1.0";
    /// The world a handler targets.
    pub const WORLD: &str = "sluice:handler/plugin@0.1.0";

    /// Whether a component built for `version` of the contract can run on this
    /// host: the same major version, and for 0.x the same minor version, as
    /// semantic versioning prescribes.
    pub fn is_compatible(version: &str) -> bool {
        let mut ours = VERSION.split('.');
        let mut theirs = version.split('.');
        let (our_major, their_major) = (ours.next(), theirs.next());
        if our_major != their_major {
            return false;
        }
        our_major != Some("0") || ours.next() == theirs.next()
    }

    #[cfg(test)]
    mod tests {
        use super::is_compatible;

        #[test]
        fn same_minor_of_zero_major_is_compatible() {
            assert!(is_compatible("0.1.0"));
            assert!(is_compatible("0.1.7"));
        }

        #[test]
        fn other_minor_of_zero_major_or_other_major_is_not() {
            assert!(!is_compatible("0.2.0"));
            assert!(!is_compatible("1.0.0"));
            assert!(!is_compatible("1.1.0"));
            assert!(!is_compatible(""));
        }
    }
}
