//! The gateway's settings (each an env var with a `--flag` twin). Secrets
//! are never shown as defaults or echoed in logs.

use std::net::SocketAddr;

use clap::Args;
use edge::config::SecurityArgs;

/// What `gateway` (and `ticketing gateway`) takes: how it stops, and the
/// gateway's own settings.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub lifecycle: edge::config::ShutdownArgs,
    /// `/metrics` listens here, never on the public port.
    #[command(flatten)]
    pub metrics: edge::config::MetricsArgs,
    #[command(flatten)]
    pub gateway: GatewaySettings,
}

/// Settings of the REST gateway.
#[derive(Debug, Clone, Args)]
pub struct GatewaySettings {
    /// HTTP listen address of the gateway.
    #[arg(long, env = "GATEWAY_ADDR", default_value = "0.0.0.0:8080")]
    pub gateway_addr: SocketAddr,
    /// URL of the booking-service gRPC endpoint.
    #[arg(long, env = "BOOKING_GRPC_URL", default_value = "http://127.0.0.1:50051")]
    pub booking_grpc_url: String,
    /// URL of the payment-service gRPC endpoint.
    #[arg(long, env = "PAYMENT_GRPC_URL", default_value = "http://127.0.0.1:50052")]
    pub payment_grpc_url: String,
    #[command(flatten)]
    pub security: SecurityArgs,
    #[command(flatten)]
    pub edge: EdgeLimits,
    /// A token the identity provider issued to the gateway itself, for the
    /// reads it shares between callers (seat maps). Unset, the gateway signs
    /// its own with JWT_SECRET; with neither, each read uses its caller's token.
    #[arg(long, env = "GATEWAY_SERVICE_TOKEN", hide_env_values = true)]
    pub gateway_service_token: Option<edge::auth::Secret>,
    #[command(flatten)]
    pub cors: CorsArgs,
    /// `ticketing dev` sets this: the box-office page may ask
    /// `POST /dev/token` for a token, and any localhost origin may call the
    /// API. Never a flag or an env var.
    #[arg(skip)]
    pub dev_tokens: bool,
}

/// Which browser origins may call the API.
#[derive(Debug, Clone, Default, Args)]
pub struct CorsArgs {
    /// Browser origins that may call the API (CORS), comma-separated, e.g.
    /// `https://tickets.example.com`. None by default; `dev` also allows
    /// any localhost origin.
    #[arg(long, env = "GATEWAY_CORS_ORIGINS", value_delimiter = ',')]
    pub gateway_cors_origins: Vec<String>,
}

/// What the edge sheds before it reaches the services.
#[derive(Debug, Clone, Copy, Args)]
pub struct EdgeLimits {
    /// Requests handled at once; beyond that they wait in line for up to
    /// `GATEWAY_QUEUE_WAIT_MS`, then are shed with 503 and `Retry-After`
    /// (health and metrics are exempt).
    #[arg(long, env = "GATEWAY_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub gateway_max_in_flight: u32,
    /// How long (ms) a request beyond the in-flight limit waits for a slot
    /// before it is shed; an on-sale spike is served in turn instead of
    /// refused. 0 sheds at once.
    #[arg(long, env = "GATEWAY_QUEUE_WAIT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub gateway_queue_wait_ms: u64,
    /// Longest a request may take (ms) before it is answered 504.
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub gateway_request_timeout_ms: u64,
    /// Longest a client may take to send a request's headers (ms); then the connection is closed.
    #[arg(long, env = "GATEWAY_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub gateway_header_read_timeout_ms: u64,
    /// Requests and streams at once on one HTTP/2 connection (a load
    /// balancer speaking h2c carries many people over one connection).
    #[arg(long, env = "GATEWAY_HTTP2_MAX_STREAMS", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub gateway_http2_max_streams: u32,
    /// Sustained `POST /bookings` and `POST /payments/execute` per user and
    /// route, per second; beyond it (and the burst) 429 with `Retry-After`. 0 turns it off.
    #[arg(long, env = "GATEWAY_USER_RATE_PER_SEC", default_value_t = 10)]
    pub gateway_user_rate_per_sec: u32,
    /// Requests a user may send at once on each of those routes before the rate applies.
    #[arg(long, env = "GATEWAY_USER_BURST", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub gateway_user_burst: u32,
    /// Longest a client may take to send a request's body (ms), before the
    /// request takes an in-flight slot; then it is answered 408.
    #[arg(long, env = "GATEWAY_BODY_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub gateway_body_read_timeout_ms: u64,
    /// How often a watched performance's seat map is looked at for the
    /// seat streams (ms); a write through this gateway is shown at once.
    #[arg(long, env = "GATEWAY_SEAT_STREAM_EVERY_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub gateway_seat_stream_every_ms: u64,
    /// Seat streams this gateway serves at once; beyond, 503 with `Retry-After`.
    #[arg(long, env = "GATEWAY_MAX_STREAMS", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub gateway_max_streams: u32,
    /// Seat streams one user may hold open at once; beyond, 429 with `Retry-After`.
    #[arg(long, env = "GATEWAY_MAX_STREAMS_PER_USER", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub gateway_max_streams_per_user: u32,
    /// After a successful payment, how long (ms) the answer waits for the
    /// booking to show it (confirmed or refunded), so the client's next read
    /// sees its own payment; 0 answers at once.
    #[arg(long, env = "GATEWAY_READ_YOUR_WRITES_MS", default_value_t = 3_000, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub gateway_read_your_writes_ms: u32,
}
