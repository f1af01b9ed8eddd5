//! The booking-service's settings (each an env var with a `--flag` twin).

use std::net::SocketAddr;

use clap::Args;

/// Settings specific to the booking-service.
#[derive(Debug, Clone, Args)]
pub struct BookingSettings {
    /// gRPC listen address of the booking-service.
    #[arg(long, env = "BOOKING_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub booking_grpc_addr: SocketAddr,
    /// Database the booking-service creates and owns on the server.
    #[arg(long, env = "BOOKING_DATABASE", default_value = "ticketing_booking")]
    pub booking_database: String,
    /// How long a booking holds its seats before payment, in seconds.
    #[arg(long, env = "SEAT_HOLD_SECS", default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..))]
    pub seat_hold_secs: u32,
    /// Most seats one user may hold or own per performance.
    #[arg(long, env = "MAX_SEATS_PER_USER", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub max_seats_per_user: u32,
    /// Longest a payment admission protects a hold (seconds).
    #[arg(long, env = "PAYMENT_ADMISSION_SECS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub payment_admission_secs: u32,
    /// How often the sweeper looks for lapsed holds (milliseconds).
    #[arg(long, env = "SWEEP_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub sweep_interval_ms: u64,
    /// Load the demo catalog (perf_001, perf_002) on start.
    #[arg(long, env = "LOAD_DEMO_CATALOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub load_demo_catalog: bool,
}
