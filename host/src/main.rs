//! The `sluice` binary; everything happens in [`sluice::cli::main`].

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: sluice::Allocator = sluice::Allocator;

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
