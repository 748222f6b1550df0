//! Write Sluice message handlers in Rust.
//!
//! A Sluice handler is a WebAssembly component targeting the `plugin` world of
//! `wit/handler.wit` (`sluice:handler@0.1.0`). Sluice calls it once for every
//! Kafka message of the topics routed to it and produces the records it
//! returns. This crate is the only dependency a handler needs: it carries the
//! generated bindings, a [`Handler`] trait to implement, the [`export!`] macro
//! that turns the implementation into the component's export, and helpers for
//! payloads, configuration and logging that never panic on a bad message.
//!
//! # A complete handler
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "shout"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! # Not on crates.io: point at a checkout of the Sluice repository.
//! sluice-guest = { path = "../sluice/guest-sdk" }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use sluice_guest::{HandlerError, Message, Output};
//!
//! struct Shout;
//!
//! impl sluice_guest::Handler for Shout {
//!     fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
//!         // Invalid UTF-8 is the message's fault: a permanent error sends it
//!         // to the dead-letter topic instead of retrying it.
//!         let text = msg.value_str()?;
//!         let topic = sluice_guest::config_or_else("output_topic", || format!("{}.out", msg.topic));
//!         sluice_guest::debug!("shouting {} bytes to {topic}", text.len());
//!         let out = Output::to(topic).value(text.to_uppercase());
//!         Ok(vec![Output { key: msg.key.clone(), ..out }])
//!     }
//! }
//!
//! sluice_guest::export!(Shout);
//! #
//! # // Off wasm32, `config` answers `None` and logs go to stderr, so a
//! # // handler can be unit-tested with a plain `cargo test`.
//! # use sluice_guest::Handler;
//! # let msg = Message {
//! #     topic: "in".into(), partition: 0, offset: 7, timestamp: None,
//! #     key: Some(b"k".to_vec()), value: Some(b"hi".to_vec()),
//! #     headers: vec![], attempt: 1,
//! # };
//! # let out = Shout::handle(msg).unwrap();
//! # assert_eq!(out[0].topic, "in.out");
//! # assert_eq!(out[0].value.as_deref(), Some(&b"HI"[..]));
//! # assert_eq!(out[0].key.as_deref(), Some(&b"k"[..]));
//! ```
//!
//! Build it as a component and check it against the contract before
//! deploying:
//!
//! ```sh
//! rustup target add wasm32-wasip2   # once
//! cargo build --release --target wasm32-wasip2
//! sluice check target/wasm32-wasip2/release/shout.wasm
//! ```
//!
//! The `.wasm` file cargo writes for `wasm32-wasip2` is already a component;
//! no adapter or post-processing step is needed.
//!
//! # Errors
//!
//! Return [`HandlerError::retryable`] for a passing condition (Sluice delivers
//! the message again, with [`Message::attempt`] increased) and
//! [`HandlerError::permanent`] when the message itself is bad (it is
//! dead-lettered). A panic is neither: it aborts the instance (a trap), which
//! Sluice handles as a failure of the module, distinct from a handler error.
//!
//! # Allocator
//!
//! Declaring [`Allocator`] as the handler's global allocator makes the
//! allocations every call pays for (the message's strings and byte lists,
//! the outputs) cheaper than with the standard allocator:
//!
//! ```
//! #[global_allocator]
//! static ALLOCATOR: sluice_guest::Allocator = sluice_guest::Allocator::new();
//! ```
//!
//! The examples do. It keeps freed memory for reuse by blocks of the same
//! size, so an instance holds on to what its most demanding message needed.
//!
//! # Features
//!
//! - `json` (default): [`Message::value_json`] and [`Output::json`], through
//!   `serde_json`.

mod allocator;
mod helpers;
mod logging;
mod packed;

/// The SDK's side of the packed encoding, for the fuzz targets in `fuzz/`
/// (feature `fuzzing`). Not part of the SDK's interface.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::packed::{decode_all as decode_messages, encode_all as encode_results};
}

pub use allocator::Allocator;
pub use helpers::{config, config_or, config_or_else};
pub use logging::log;

/// Bindings generated from `wit/handler.wit` by `wit-bindgen`.
///
/// Public so that [`export!`] can reach them from the handler's crate; a
/// handler never needs to name anything in here.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "packed-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "::sluice_guest::bindings",
        // So that handlers' unit tests can compare messages and outputs.
        additional_derives: [PartialEq, Eq],
    });
}

/// Why a message could not be handled: retry it, or dead-letter it.
pub use bindings::exports::sluice::handler::handler::HandlerError;
/// One Kafka header: a UTF-8 key and any bytes as value.
pub use bindings::exports::sluice::handler::handler::Header;
/// One consumed Kafka message, as Sluice hands it to [`Handler::handle`].
pub use bindings::exports::sluice::handler::handler::Message;
/// A record for Sluice to produce; build one with [`Output::to`].
pub use bindings::exports::sluice::handler::handler::Output;
/// Severity of a [`log`] line.
pub use bindings::sluice::handler::host::Level;

/// A Sluice message handler: implement it, then [`export!`] the type.
///
/// Sluice calls [`Handler::handle`] once per message, in partition order, and
/// produces the returned outputs before it commits the message's offset.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a Sluice handler",
    label = "this type does not implement `sluice_guest::Handler`",
    note = "implement it: `impl sluice_guest::Handler for {Self} {{ fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {{ .. }} }}`"
)]
pub trait Handler {
    /// Handles one message, returning the records to produce (possibly none).
    fn handle(msg: Message) -> Result<Vec<Output>, HandlerError>;
}

/// Calls `handle` for each message in order and passes each result to
/// `done`, stopping after the first error (the host hands the messages after
/// it over again later): what `handle-batch` and `handle-packed` both do.
pub(crate) fn handle_in_order(
    messages: impl Iterator<Item = Message>,
    mut handle: impl FnMut(Message) -> Result<Vec<Output>, HandlerError>,
    mut done: impl FnMut(Result<Vec<Output>, HandlerError>),
) {
    for (index, msg) in messages.enumerate() {
        if index > 0 {
            // Log lines from here on are attributed to this message.
            helpers::handling(index);
        }
        let result = handle(msg);
        let failed = result.is_err();
        done(result);
        if failed {
            break;
        }
    }
}

/// The `handle-batch` export behind [`export!`]: `handle` for each message in
/// order, stopping after the first error.
#[doc(hidden)]
pub fn __handle_batch<H: Handler>(msgs: Vec<Message>) -> Vec<Result<Vec<Output>, HandlerError>> {
    let mut results = Vec::with_capacity(msgs.len());
    handle_in_order(msgs.into_iter(), H::handle, |result| results.push(result));
    results
}

/// The `handle-packed` export behind [`export!`]: [`__handle_batch`] on
/// messages encoded in one byte list, returning the results encoded in
/// another.
#[doc(hidden)]
pub fn __handle_packed<H: Handler>(messages: Vec<u8>) -> Vec<u8> {
    packed::handle_packed(&messages, H::handle)
}

/// Exports a [`Handler`] as the component's `sluice:handler/handler`
/// interface, and its `batch` and `packed` interfaces (several messages in
/// one call) built from the same `handle`. Use it once per crate, at the top level.
///
/// ```
/// struct Echo;
///
/// impl sluice_guest::Handler for Echo {
///     fn handle(msg: sluice_guest::Message) -> Result<Vec<sluice_guest::Output>, sluice_guest::HandlerError> {
///         let out = sluice_guest::Output::to("echo");
///         Ok(vec![sluice_guest::Output { value: msg.value, ..out }])
///     }
/// }
///
/// sluice_guest::export!(Echo);
/// ```
///
/// A type that does not implement [`Handler`] is rejected, and the error
/// points at it:
///
/// ```compile_fail,E0277
/// struct NotAHandler;
///
/// sluice_guest::export!(NotAHandler);
/// ```
///
/// So is a `handle` with another signature than the trait's:
///
/// ```compile_fail,E0053
/// use sluice_guest::{HandlerError, Message, Output};
///
/// struct Wrong;
///
/// impl sluice_guest::Handler for Wrong {
///     fn handle(msg: Message) -> Vec<Output> {
///         Vec::new()
///     }
/// }
///
/// sluice_guest::export!(Wrong);
/// ```
///
/// And only a type can be exported, not a value:
///
/// ```compile_fail
/// struct Echo;
/// # impl sluice_guest::Handler for Echo {
/// #     fn handle(_: sluice_guest::Message) -> Result<Vec<sluice_guest::Output>, sluice_guest::HandlerError> {
/// #         Ok(Vec::new())
/// #     }
/// # }
///
/// sluice_guest::export!(Echo {});
/// ```
#[macro_export]
macro_rules! export {
    ($handler:ty $(,)?) => {
        const _: () = {
            /// The export glue: forwards the interface to the user's handler.
            struct __SluiceExport;

            impl $crate::bindings::exports::sluice::handler::handler::Guest for __SluiceExport {
                fn handle(
                    msg: $crate::Message,
                ) -> ::core::result::Result<::std::vec::Vec<$crate::Output>, $crate::HandlerError>
                {
                    <$handler as $crate::Handler>::handle(msg)
                }
            }

            impl $crate::bindings::exports::sluice::handler::batch::Guest for __SluiceExport {
                fn handle_batch(
                    msgs: ::std::vec::Vec<$crate::Message>,
                ) -> ::std::vec::Vec<
                    ::core::result::Result<::std::vec::Vec<$crate::Output>, $crate::HandlerError>,
                > {
                    $crate::__handle_batch::<$handler>(msgs)
                }
            }

            impl $crate::bindings::exports::sluice::handler::packed::Guest for __SluiceExport {
                fn handle_packed(messages: ::std::vec::Vec<u8>) -> ::std::vec::Vec<u8> {
                    $crate::__handle_packed::<$handler>(messages)
                }
            }

    $crate::bindings::__export_plugin!(__SluiceExport with_types_in $crate::bindings);
        };
    };
}
