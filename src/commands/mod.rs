//! What each `ticketing` subcommand does, one module per command; this
//! module parses, sets up telemetry and dispatches.

mod check;
mod redrive;
mod serve;
mod stores;
mod token;

use std::process::ExitCode;

use clap::Parser;
use shared::telemetry;

use crate::cli::{Cli, Command};

/// Runs a parsed command on a fresh runtime and turns the result into an exit code.
pub fn main_with(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            // Once, on stderr, whatever the log's level and format.
            eprintln!("error: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// `error` and its causes joined with ": ", each said once: many errors
/// already include their cause in their own message, and printing the
/// chain as it is would repeat it ("…: Connection refused: Connection
/// refused").
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if message.is_empty() || text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

/// Runs `ticketing <subcommand> <args…>` for the per-component binaries.
pub fn main_with_subcommand(subcommand: &str) -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    args.insert(1.min(args.len()), subcommand.into());
    main_with(Cli::parse_from(args))
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let service = match &cli.command {
        Command::Dev(_) => "ticketing",
        Command::Gateway(_) => "gateway",
        Command::Booking(_) => "booking-service",
        Command::Payment(_) => "payment-service",
        _ => "ticketing-cli",
    };
    let _telemetry = telemetry::init(cli.log_format, service);
    if let Command::Check(args) = &cli.command {
        return check::run(args).await;
    }
    match cli.command {
        Command::Dev(args) => crate::system::dev(*args).await,
        Command::Gateway(args) => serve::gateway(*args).await,
        Command::Booking(args) => serve::booking(*args).await,
        Command::Payment(args) => serve::payment(*args).await,
        Command::Token(args) => token::run(args),
        Command::Migrate(args) => stores::migrate(&args).await,
        Command::RebuildProjections(args) => stores::rebuild_projections(&args).await,
        Command::Check(_) => Ok(()),
        Command::Bench(args) => crate::bench::run::run(*args).await,
        Command::RedriveDlq(args) => redrive::run(&args).await,
    }
    .map(|()| ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("connecting to the PostgreSQL server: {0}")]
    struct Connecting(#[source] std::io::Error);

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let error = anyhow::Error::new(Connecting(refused)).context("preparing the booking database");
        assert_eq!(
            error_chain(&error),
            "preparing the booking database: connecting to the PostgreSQL server: Connection refused (os error 111)"
        );
        let plain = anyhow::anyhow!("no cause");
        assert_eq!(error_chain(&plain), "no cause");
    }
}
