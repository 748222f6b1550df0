//! Absolute paths of the guest components that Sluice's tests load.
//!
//! `build.rs` compiles every example (`examples/`) and test fixture
//! (`tests/fixtures/`) for `wasm32-wasip2` in release mode, with one nested
//! `cargo build` into `<workspace>/target/guests`, and generates one constant
//! per guest. Depending on this crate is all a test needs to get fresh
//! components: editing a guest, the SDK or `wit/` rebuilds them.
//!
//! Requires the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`).

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
