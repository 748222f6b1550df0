//! The `sluice` binary: parses the command line, sets up logging, runs the
//! command and prints the whole error chain on failure.

use std::process::ExitCode;

use clap::Parser as _;
use sluice::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    sluice::telemetry::init(cli.log_format, "warn,sluice=info");
    match cli.run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
