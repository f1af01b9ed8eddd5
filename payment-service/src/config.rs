//! The payment-service's settings (each an env var with a `--flag` twin).

use std::net::SocketAddr;

use clap::Args;

/// The payment service providers this build can call (`PSP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PspKind {
    /// The simulated PSP (`psp.rs`): answers by token, keeps its records in
    /// the payment database's `psp` schema, and moves no money.
    Simulated,
}

/// Settings specific to the payment-service.
#[derive(Debug, Clone, Args)]
pub struct PaymentSettings {
    /// gRPC listen address of the payment-service.
    #[arg(long, env = "PAYMENT_GRPC_ADDR", default_value = "0.0.0.0:50052")]
    pub payment_grpc_addr: SocketAddr,
    /// Database the payment-service creates and owns on the server.
    #[arg(long, env = "PAYMENT_DATABASE", default_value = "ticketing_payment")]
    pub payment_database: String,
    /// The payment service provider. Required outside `ticketing dev` (which
    /// uses `simulated`): a production deployment names its real adapter,
    /// and running the simulated one is an explicit choice, logged at start.
    #[arg(long, env = "PSP", value_enum)]
    pub psp: Option<PspKind>,
    /// How long the simulated PSP takes to time out `tok_pgTimeout` (ms).
    #[arg(long, env = "MOCK_PG_TIMEOUT_MS", default_value_t = 3000)]
    pub mock_pg_timeout_ms: u64,
    /// Extra latency of every simulated PSP call (ms), to rehearse a slow PSP.
    #[arg(long, env = "MOCK_PG_LATENCY_MS", default_value_t = 0)]
    pub mock_pg_latency_ms: u64,
    /// The simulated PSP fails the first this-many refund attempts of each intent.
    #[arg(long, env = "MOCK_PG_REFUND_FAILURES", default_value_t = 0)]
    pub mock_pg_refund_failures: u32,
    /// Failed refund attempts after which a refund is left for review.
    #[arg(long, env = "REFUND_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub refund_max_attempts: u32,
    /// How often the refund worker looks for due refunds (ms).
    #[arg(long, env = "REFUND_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub refund_interval_ms: u64,
    /// How long an execute waits for an intent that is not created yet (ms).
    #[arg(long, env = "INTENT_WAIT_MS", default_value_t = 5000)]
    pub intent_wait_ms: u64,
    /// A charge attempt this old without a recorded outcome is settled with
    /// the PSP by the reconciler (s). Longer than an execute can take, and
    /// shorter than an Idempotency-Key's 60 s lease.
    #[arg(long, env = "PAYMENT_RECONCILE_AFTER_SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=50))]
    pub payment_reconcile_after_secs: u64,
}
