//! The `sluice` command, built inside the test crate so that tests can run it
//! as a child process (and kill it).

#[global_allocator]
static ALLOCATOR: sluice::Allocator = sluice::Allocator;

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
