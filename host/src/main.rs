//! The `sluice` binary; everything happens in [`sluice::cli::main`].

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
