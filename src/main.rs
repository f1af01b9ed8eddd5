//! `ticketing`: one CLI for the whole system (README, "The CLI").
//! The work is in the library (`src/lib.rs`); this file only parses and runs.

fn main() -> std::process::ExitCode {
    ticketing::main_with(ticketing::cli::parse())
}
