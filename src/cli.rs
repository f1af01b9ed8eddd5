//! The `ticketing` command line: every subcommand and its settings (each an
//! env var with a `--flag` twin). Only types; what each command does is in
//! `commands/`.

use std::path::PathBuf;

use agreements::PaymentPolicy;
use booking_service::BookingSettings;
use clap::{Args, Parser, Subcommand};
use edge::config::MetricsArgs;
use edge::config::SecurityArgs;
use edge::config::ShutdownArgs;
use edge::telemetry::LogFormat;
use gateway::GatewayArgs;
use messaging::config::KafkaArgs;
use payment_service::PaymentSettings;
use runtime::config::DatabaseArgs;

/// The ticketing platform.
#[derive(Debug, Parser)]
#[command(name = "ticketing", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run gateway, booking-service and payment-service in one process
    /// (real gRPC on loopback, real Kafka: an embedded broker unless KAFKA_BROKERS is set).
    Dev(Box<DevArgs>),
    /// Run the REST gateway.
    Gateway(Box<GatewayArgs>),
    /// Run the booking-service.
    Booking(Box<BookingArgs>),
    /// Run the payment-service.
    Payment(Box<PaymentArgs>),
    /// Print a signed HS256 dev JWT for a user.
    Token(TokenArgs),
    /// Create the service databases if missing and run their migrations.
    Migrate(StoresArgs),
    /// Rebuild the booking read models from the event store (blue/green swap).
    RebuildProjections(StoresArgs),
    /// Check both stores for broken invariants; exits 1 if any is found.
    Check(StoresArgs),
    /// Re-publish the dead letters of a topic to it (after fixing their cause).
    RedriveDlq(RedriveArgs),
    /// Refunds the PSP kept refusing: list them, retry one, or record one made by hand.
    Refunds(RefundsArgs),
    /// Read a service's event feed: history from a position, then live.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Print the REST API's OpenAPI document (what `/openapi.json` serves).
    Openapi,
    /// Load-test the whole system (started in-process on fresh databases) beside a pgbench baseline.
    Bench(Box<BenchArgs>),
}

/// What every process that runs a service takes: its lifecycle, metrics
/// listener, database, Kafka, the payment policy both services apply, and
/// who may call it (tokens, gRPC TLS).
#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub lifecycle: ShutdownArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub policy: PaymentPolicy,
    #[command(flatten)]
    pub security: SecurityArgs,
    #[command(flatten)]
    pub feed: runtime::feed::FeedSettings,
}

/// `ticketing dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub booking: BookingSettings,
    #[command(flatten)]
    pub payment: PaymentSettings,
    /// HTTP listen address of the gateway. `dev` hands out tokens, so it
    /// listens on loopback only, as do its gRPC and metrics listeners, unless
    /// their address settings say otherwise.
    #[arg(long, env = "GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    pub gateway_addr: std::net::SocketAddr,
    #[command(flatten)]
    pub edge: gateway::config::EdgeLimits,
    #[command(flatten)]
    pub cors: gateway::config::CorsArgs,
    /// Run a private PostgreSQL cluster from the installed server binaries
    /// even where one answers on localhost:5432 (without this, `dev` does so
    /// only when DATABASE_URL is unset and nothing answers there).
    #[arg(long, env = "DEV_PRIVATE_POSTGRES", conflicts_with = "database_url",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub private_postgres: bool,
    /// Data directory of the private cluster [default: ~/.local/share/ticketing/pg;
    /// /var/lib/ticketing/pg as root]. It is reused on the next run.
    #[arg(long, env = "DEV_POSTGRES_DIR")]
    pub private_postgres_dir: Option<std::path::PathBuf>,
    /// Set by `dev` itself (never a flag): the gateway serves `POST /dev/token`.
    #[arg(skip)]
    pub dev_tokens: bool,
    /// Set by `dev` itself (never a flag): the broker is the embedded one,
    /// new with this process, so offsets stored by an earlier run are void.
    #[arg(skip)]
    pub fresh_broker: bool,
}

impl DevArgs {
    /// The gRPC and metrics listeners on loopback, each unless its setting
    /// was given (their defaults, 0.0.0.0, are for the separate processes).
    pub fn listen_on_loopback_unless_set(&mut self, matches: &clap::ArgMatches) {
        let listeners = [
            ("booking_grpc_addr", &mut self.booking.booking_grpc_addr),
            ("payment_grpc_addr", &mut self.payment.payment_grpc_addr),
            ("metrics_addr", &mut self.service.metrics.metrics_addr),
        ];
        for (id, addr) in listeners {
            if matches.value_source(id) == Some(clap::parser::ValueSource::DefaultValue) {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
        }
    }
}

/// Parses the command line as `ticketing` does (for `dev`: loopback
/// listeners unless set); exits with clap's message on an error.
pub fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    if let (Command::Dev(args), Some(("dev", dev))) = (&mut cli.command, matches.subcommand()) {
        args.listen_on_loopback_unless_set(dev);
    }
    cli
}

/// `ticketing booking`.
#[derive(Debug, Args)]
pub struct BookingArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub booking: BookingSettings,
}

/// `ticketing payment`.
#[derive(Debug, Args)]
pub struct PaymentArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub payment: PaymentSettings,
    /// URL of the booking-service gRPC endpoint (admits payments).
    #[arg(long, env = "BOOKING_GRPC_URL", default_value = "http://127.0.0.1:50051")]
    pub booking_grpc_url: String,
}

/// `ticketing token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (the `sub` claim).
    pub user_id: String,
    /// Add `role: admin`.
    #[arg(long, conflicts_with = "role")]
    pub admin: bool,
    /// Add this `role` instead, e.g. `events` for a reader of the event feed.
    #[arg(long)]
    pub role: Option<String>,
    /// Lifetime, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = runtime::config::parse_duration)]
    pub ttl: std::time::Duration,
    /// HS256 secret; defaults to the one `ticketing dev` generated.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// `ticketing events`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print a service's events as JSON lines, with each payload decoded:
    /// from `--from`, then live until interrupted (or `--count` events).
    Tail(EventsTailArgs),
}

/// Whose feed `ticketing events tail` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FeedService {
    /// The booking-service (`booking.events.v1`).
    Booking,
    /// The payment-service (`payment.events.v1`).
    Payment,
}

/// `ticketing events tail`.
#[derive(Debug, Args)]
pub struct EventsTailArgs {
    /// Whose events.
    #[arg(long, value_enum, default_value_t = FeedService::Booking)]
    pub service: FeedService,
    /// The service's gRPC URL [default: http://127.0.0.1:50051 for the
    /// booking-service, :50052 for the payment-service].
    #[arg(long)]
    pub url: Option<String>,
    /// Start after this position (a `position` printed earlier); 0: from
    /// the first event ever recorded.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub from: i64,
    /// Only events of this `ce_type` (repeatable), e.g.
    /// `ticketing.booking.v1.SeatLocked`.
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// A bearer token with role `events` or `admin`; without it one is
    /// signed with JWT_SECRET (or the secret `ticketing dev` generated).
    #[arg(long, env = "FEED_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// HS256 secret to sign a token with.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    #[command(flatten)]
    pub tls: edge::tls::GrpcTlsSettings,
}

/// `ticketing bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Kafka bootstrap servers; an embedded broker when unset.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Concurrent clients of `distinct`, `flow`, the HTTP ceiling and
    /// pgbench [default: 64]; people joining at once in `onsale-queue`
    /// [default: 20000].
    #[arg(long)]
    pub clients: Option<usize>,
    /// In `onsale-queue`, people reach the gateway as through a load
    /// balancer that speaks HTTP/2 to it: over this many connections
    /// [default: one per 500 people]; 0 gives each person their own
    /// HTTP/1.1 connection (two open files per person, one on each side).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub h2_connections: Option<u32>,
    /// In `onsale-queue`, people arrive evenly spread over this time (the
    /// n-th of N at n/N of it) instead of all at once; at most 1h.
    #[arg(long, default_value = "0s", value_parser = parse_arrivals)]
    pub arrivals_over: std::time::Duration,
    /// Seats on sale in `onsale-queue` [default: 500].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub seats: Option<u64>,
    /// Length of each timed scenario.
    #[arg(long, default_value = "10s", value_parser = runtime::config::parse_duration)]
    pub duration: std::time::Duration,
    /// Clients racing in `onsale`.
    #[arg(long, default_value_t = 2000)]
    pub onsale_clients: usize,
    /// Seats they race for (1-500).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=500))]
    pub onsale_seats: u64,
    /// Where the JSON report goes.
    #[arg(long, default_value = "bench.json")]
    pub output: PathBuf,
    /// What to run: the load scenarios (`all`), or one of the runs over
    /// time, each on the system as separate processes: `idle` (CPU of an
    /// idle system over `--duration`), `viewers` (`--viewers` seat streams
    /// beside `distinct`), `soak` (a mixed run of `--duration`),
    /// `onsale-queue` (`--clients` people queue for `--seats` seats),
    /// `feed` (the event feed's catch-up rate and live latency), `cost`
    /// (CPU per booking by process).
    #[arg(long, value_enum, default_value_t = BenchScenario::All)]
    pub scenario: BenchScenario,
    /// Bookings made before the `feed` scenario's subscriber catches up.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub feed_history: u64,
    /// Bookings per second while the `feed` scenario's subscriber is live (for `--duration`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub feed_rate: u32,
    /// Seat-stream viewers of the `viewers` scenario.
    #[arg(long, default_value_t = 10_000)]
    pub viewers: usize,
    /// Drive an already running gateway instead (e.g. separate processes, to
    /// measure each one's memory); tokens are signed with JWT_SECRET, and the
    /// pgbench baseline and store checks are skipped.
    #[arg(long)]
    pub gateway: Option<String>,
    /// HS256 secret of the external gateway.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// What `ticketing bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchScenario {
    /// warm-up, flow, distinct, onsale, and the pgbench baseline.
    All,
    /// An idle system's CPU per process.
    Idle,
    /// Seat-stream viewers beside bookings.
    Viewers,
    /// A long mixed run.
    Soak,
    /// An on-sale through the waiting room (`--clients`, `--seats`).
    OnsaleQueue,
    /// The event feed: catch-up from position 0 over `--feed-history`
    /// bookings, then live latency at `--feed-rate` bookings/s.
    Feed,
    /// CPU per booking by process (`distinct`, pipeline drained, idle
    /// subtracted) beside the essential-writes pgbench's.
    Cost,
}

/// `--arrivals-over`: a duration of at most an hour.
fn parse_arrivals(text: &str) -> Result<std::time::Duration, String> {
    let over = runtime::config::parse_duration(text)?;
    if over > std::time::Duration::from_secs(3600) {
        return Err(format!("`{text}` is longer than 1h"));
    }
    Ok(over)
}

impl BenchArgs {
    /// The clients of the chosen scenario.
    pub fn clients(&self) -> usize {
        self.clients.unwrap_or(if self.scenario == BenchScenario::OnsaleQueue { 20_000 } else { 64 })
    }

    /// HTTP/2 connections of `onsale-queue` (0: HTTP/1.1, one per person).
    pub fn h2_connections(&self) -> usize {
        self.h2_connections.map_or_else(|| self.clients().div_ceil(500), |n| n as usize)
    }
}

/// `ticketing refunds`.
#[derive(Debug, Args)]
pub struct RefundsArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The payment-service database.
    #[arg(long, env = "PAYMENT_DATABASE", default_value = "ticketing_payment")]
    pub payment_database: String,
    #[command(subcommand)]
    pub action: RefundsAction,
}

/// What to do with refunds that need review.
#[derive(Debug, Subcommand)]
pub enum RefundsAction {
    /// List the refunds waiting for review, oldest first.
    List,
    /// Try one again under the same PSP key, once its cause is fixed.
    Retry {
        /// The payment intent.
        payment_intent_id: String,
        /// Who decides (recorded on the intent).
        #[arg(long)]
        operator: String,
    },
    /// Record a refund made by hand at the PSP: the booking becomes refunded
    /// and the ledger posts the reversal.
    Resolve {
        /// The payment intent.
        payment_intent_id: String,
        /// Who did it (recorded on the intent).
        #[arg(long)]
        operator: String,
        /// What was done, e.g. "refunded in the PSP console, ref 123".
        #[arg(long)]
        note: String,
    },
}

/// `ticketing redrive-dlq`.
#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: String,
    /// The source topic whose `.dlq` is re-driven, e.g. booking.events.v1.
    #[arg(long)]
    pub topic: String,
    /// Stop after the DLQ has been idle this long.
    #[arg(long, default_value = "5s", value_parser = runtime::config::parse_duration)]
    pub idle: std::time::Duration,
}

/// `ticketing migrate` and `ticketing rebuild-projections`.
#[derive(Debug, Args)]
pub struct StoresArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The booking-service database.
    #[arg(long, env = "BOOKING_DATABASE", default_value = "ticketing_booking")]
    pub booking_database: String,
    /// The payment-service database.
    #[arg(long, env = "PAYMENT_DATABASE", default_value = "ticketing_payment")]
    pub payment_database: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    fn dev(args: &[&str]) -> DevArgs {
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let Command::Dev(mut dev) = cli.command else { panic!("dev") };
        dev.listen_on_loopback_unless_set(matches.subcommand_matches("dev").unwrap());
        *dev
    }

    #[test]
    fn dev_listens_on_loopback_unless_an_address_setting_says_otherwise() {
        let plain = dev(&["ticketing", "dev"]);
        for addr in [
            plain.gateway_addr,
            plain.booking.booking_grpc_addr,
            plain.payment.payment_grpc_addr,
            plain.service.metrics.metrics_addr,
        ] {
            assert!(addr.ip().is_loopback(), "{addr}");
        }
        let open = dev(&["ticketing", "dev", "--booking-grpc-addr=0.0.0.0:50051", "--gateway-addr=0.0.0.0:8080"]);
        assert!(open.booking.booking_grpc_addr.ip().is_unspecified(), "a setting is obeyed");
        assert!(open.gateway_addr.ip().is_unspecified());
        assert!(open.payment.payment_grpc_addr.ip().is_loopback(), "the others stay on loopback");
    }
}
