//! The `sluice` command, built inside the test crate so that tests can run it
//! as a child process (and kill it).

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
