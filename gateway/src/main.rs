//! The `gateway` binary: the REST gateway alone, the same as `ticketing
//! gateway` but built from this crate only, so it links neither the
//! services' database code nor librdkafka.

use std::process::ExitCode;

use clap::Parser;
use edge::telemetry::{self, LogFormat};

/// The ticketing REST gateway.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    args: gateway::GatewayArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    edge::process::run_main(async move {
        let _telemetry = telemetry::init(cli.log_format, "gateway");
        gateway::run(cli.args).await.map(|()| ExitCode::SUCCESS)
    })
}
