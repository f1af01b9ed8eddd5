//! The payment-service's settings (each an env var with a `--flag` twin).

use std::net::SocketAddr;

use clap::Args;

/// Settings specific to the payment-service.
#[derive(Debug, Clone, Args)]
pub struct PaymentSettings {
    /// gRPC listen address of the payment-service.
    #[arg(long, env = "PAYMENT_GRPC_ADDR", default_value = "0.0.0.0:50052")]
    pub payment_grpc_addr: SocketAddr,
    /// Database the payment-service creates and owns on the server.
    #[arg(long, env = "PAYMENT_DATABASE", default_value = "ticketing_payment")]
    pub payment_database: String,
    /// URL of the booking-service gRPC endpoint (admits payments).
    #[arg(long, env = "BOOKING_GRPC_URL", default_value = "http://127.0.0.1:50051")]
    pub booking_grpc_url: String,
    /// How long the mock gateway takes to time out `tok_pgTimeout` (ms).
    #[arg(long, env = "MOCK_PG_TIMEOUT_MS", default_value_t = 3000)]
    pub mock_pg_timeout_ms: u64,
    /// Extra latency of every mock gateway call (ms), to rehearse slow gateways.
    #[arg(long, env = "MOCK_PG_LATENCY_MS", default_value_t = 0)]
    pub mock_pg_latency_ms: u64,
    /// How long an execute waits for an intent that is not created yet (ms).
    #[arg(long, env = "INTENT_WAIT_MS", default_value_t = 5000)]
    pub intent_wait_ms: u64,
}
