//! What each `ticketing` subcommand does, one module per command; this
//! module parses, sets up telemetry and dispatches.

mod check;
mod events;
mod redrive;
mod refunds;
mod serve;
mod stores;
mod token;

use std::process::ExitCode;

use clap::Parser;
use edge::telemetry;

use crate::cli::{Cli, Command};

/// Runs a parsed command on a fresh runtime and turns the result into an exit code.
pub fn main_with(cli: Cli) -> ExitCode {
    edge::process::run_main(run(cli))
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
        Command::Gateway(args) => gateway::run(*args).await,
        Command::Booking(args) => serve::booking(*args).await,
        Command::Payment(args) => serve::payment(*args).await,
        Command::Token(args) => token::run(args),
        Command::Migrate(args) => stores::migrate(&args).await,
        Command::RebuildProjections(args) => stores::rebuild_projections(&args).await,
        Command::Check(_) => Ok(()),
        Command::Bench(args) => crate::bench::run::run(*args).await,
        Command::RedriveDlq(args) => redrive::run(&args).await,
        Command::Refunds(args) => refunds::run(args).await,
        Command::Events(command) => events::run(command).await,
        Command::Openapi => print_openapi(),
    }
    .map(|()| ExitCode::SUCCESS)
}

/// `ticketing openapi`: the document as the gateway serves it, pretty-printed
/// (docs/openapi.json is this output; a test keeps them equal).
fn print_openapi() -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&gateway::openapi::document())?);
    Ok(())
}
