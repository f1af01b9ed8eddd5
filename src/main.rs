//! `ticketing`: one CLI for the whole system (decisions.md, "Processes").
//! The work is in the library (`src/lib.rs`); this file only parses and runs.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = ticketing::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ticketing::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
