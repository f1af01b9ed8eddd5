//! The `ticketing` command: runs the gateway and both services (together in
//! `dev`, or one per process), mints dev tokens, migrates and rebuilds
//! projections. Each component is started through its own `*App::build`, so
//! tests start exactly what production starts.

pub mod check;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use booking_service::{BookingApp, BookingSettings};
use clap::{Args, Parser, Subcommand};
use gateway::{GatewayApp, GatewaySettings};
use payment_service::{PaymentApp, PaymentSettings};
use shared::{
    config::{DatabaseArgs, KafkaArgs, MetricsArgs, PaymentPolicy, ShutdownArgs},
    kafka::EmbeddedKafka,
    shutdown::{self, Shutdown},
    telemetry::{self, LogFormat},
};

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
    Gateway(GatewayArgs),
    /// Run the booking-service.
    Booking(Box<BookingArgs>),
    /// Run the payment-service.
    Payment(Box<PaymentArgs>),
    /// Print a signed HS256 dev JWT for a user.
    Token(TokenArgs),
    /// Create the service databases if missing and run their migrations.
    Migrate(MigrateArgs),
    /// Rebuild the booking read models from the event store (blue/green swap).
    RebuildProjections(MigrateArgs),
    /// Check both stores for broken invariants; exits 1 if any is found.
    Check(MigrateArgs),
    /// Re-publish the dead letters of a topic to it (after fixing their cause).
    RedriveDlq(RedriveArgs),
}

/// `ticketing dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
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
    pub booking: BookingSettings,
    #[command(flatten)]
    pub payment: PaymentDevSettings,
    /// HTTP listen address of the gateway.
    #[arg(long, env = "GATEWAY_ADDR", default_value = "0.0.0.0:8080")]
    pub gateway_addr: std::net::SocketAddr,
    #[command(flatten)]
    pub auth: gateway::config::AuthSettings,
}

/// The payment settings `dev` exposes (the booking URL is the in-process one).
#[derive(Debug, Clone, Args)]
pub struct PaymentDevSettings {
    /// gRPC listen address of the payment-service.
    #[arg(long, env = "PAYMENT_GRPC_ADDR", default_value = "0.0.0.0:50052")]
    pub payment_grpc_addr: std::net::SocketAddr,
    /// Database the payment-service creates and owns on the server.
    #[arg(long, env = "PAYMENT_DATABASE", default_value = "ticketing_payment")]
    pub payment_database: String,
    /// How long the mock gateway takes to time out `tok_pgTimeout` (ms).
    #[arg(long, env = "MOCK_PG_TIMEOUT_MS", default_value_t = 3000)]
    pub mock_pg_timeout_ms: u64,
    /// How long an execute waits for an intent that is not created yet (ms).
    #[arg(long, env = "INTENT_WAIT_MS", default_value_t = 5000)]
    pub intent_wait_ms: u64,
    /// Extra latency of every mock gateway call (ms), to rehearse slow gateways.
    #[arg(long, env = "MOCK_PG_LATENCY_MS", default_value_t = 0)]
    pub mock_pg_latency_ms: u64,
    /// The mock gateway fails the first this-many refund attempts of each intent.
    #[arg(long, env = "MOCK_PG_REFUND_FAILURES", default_value_t = 0)]
    pub mock_pg_refund_failures: u32,
    /// Failed refund attempts after which a refund is left for review.
    #[arg(long, env = "REFUND_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub refund_max_attempts: u32,
    /// How often the refund worker looks for due refunds (ms).
    #[arg(long, env = "REFUND_INTERVAL_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..))]
    pub refund_interval_ms: u64,
}

/// `ticketing gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub lifecycle: ShutdownArgs,
    #[command(flatten)]
    pub gateway: GatewaySettings,
}

/// `ticketing booking`.
#[derive(Debug, Args)]
pub struct BookingArgs {
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
    pub booking: BookingSettings,
}

/// `ticketing payment`.
#[derive(Debug, Args)]
pub struct PaymentArgs {
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
    pub payment: PaymentSettings,
}

/// `ticketing token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (the `sub` claim).
    pub user_id: String,
    /// Add `role: admin`.
    #[arg(long)]
    pub admin: bool,
    /// Lifetime, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = shared::config::parse_duration)]
    pub ttl: std::time::Duration,
    /// HS256 secret; defaults to the one `ticketing dev` generated.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
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
    #[arg(long, default_value = "5s", value_parser = shared::config::parse_duration)]
    pub idle: std::time::Duration,
}

/// `ticketing migrate` and `ticketing rebuild-projections`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The booking-service database.
    #[arg(long, env = "BOOKING_DATABASE", default_value = "ticketing_booking")]
    pub booking_database: String,
    /// The payment-service database.
    #[arg(long, env = "PAYMENT_DATABASE", default_value = "ticketing_payment")]
    pub payment_database: String,
}

/// Where `ticketing dev` keeps the HS256 secret it generated, for `ticketing token`.
pub fn dev_secret_path() -> PathBuf {
    std::env::temp_dir().join("ticketing-dev-jwt-secret")
}

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
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
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
        return run_check(args).await;
    }
    match cli.command {
        Command::Dev(args) => dev(*args).await,
        Command::Gateway(args) => {
            let shutdown = shutdown::on_signal(bound(&args.lifecycle));
            let app = GatewayApp::build(&args.gateway, &shutdown).await?;
            app.run(shutdown, args.lifecycle.drain()).await
        }
        Command::Booking(args) => {
            let shutdown = shutdown::on_signal(bound(&args.lifecycle));
            let brokers = args.kafka.kafka_brokers.clone().context("KAFKA_BROKERS is required")?;
            shared::metrics::serve(args.metrics.metrics_addr, shutdown.clone()).await?;
            let app = BookingApp::build(&args.database, &args.kafka, &brokers, args.booking, args.policy).await?;
            app.run(shutdown, args.lifecycle.drain()).await
        }
        Command::Payment(args) => {
            let shutdown = shutdown::on_signal(bound(&args.lifecycle));
            let brokers = args.kafka.kafka_brokers.clone().context("KAFKA_BROKERS is required")?;
            shared::metrics::serve(args.metrics.metrics_addr, shutdown.clone()).await?;
            let app = PaymentApp::build(&args.database, &args.kafka, &brokers, args.payment, args.policy).await?;
            app.run(shutdown, args.lifecycle.drain()).await
        }
        Command::Token(args) => {
            let secret = match args.jwt_secret {
                Some(secret) => secret,
                None => std::fs::read_to_string(dev_secret_path())
                    .map(|s| s.trim().to_owned())
                    .context("JWT_SECRET is unset and `ticketing dev` has not generated one yet")?,
            };
            let ttl = i64::try_from(args.ttl.as_secs()).unwrap_or(i64::MAX);
            println!("{}", gateway::auth::issue_token(&secret, &args.user_id, args.admin, ttl)?);
            Ok(())
        }
        Command::Migrate(args) => {
            for (name, migrator) in [
                (&args.booking_database, &booking_service::store::MIGRATIONS),
                (&args.payment_database, &payment_service::store::MIGRATIONS),
            ] {
                shared::db::connect_service_db(&args.database.database_url, name, 2, migrator).await?.close().await;
                tracing::info!(database = name, "migrated");
            }
            Ok(())
        }
        Command::Check(_) => Ok(()),
        Command::RedriveDlq(args) => {
            let sent =
                shared::dlq::redrive(&args.kafka_brokers, &args.topic, shared::dlq::REDRIVE_GROUP, args.idle).await?;
            println!("re-drove {sent} dead letter(s) to {}", args.topic);
            Ok(())
        }
        Command::RebuildProjections(args) => {
            let pool = shared::db::connect_service_db(
                &args.database.database_url,
                &args.booking_database,
                4,
                &booking_service::store::MIGRATIONS,
            )
            .await?;
            let replayed = shared::projection::rebuild(&pool, &booking_service::store::views::BookingViews).await?;
            println!("rebuilt booking_views from {replayed} events");
            Ok(())
        }
    }
    .map(|()| ExitCode::SUCCESS)
}

async fn run_check(args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let connect = |name: &str, migrator| {
        let url = args.database.database_url.clone();
        let name = name.to_owned();
        async move { shared::db::connect_service_db(&url, &name, 2, migrator).await }
    };
    let booking = connect(&args.booking_database, &booking_service::store::MIGRATIONS).await?;
    let payment = connect(&args.payment_database, &payment_service::store::MIGRATIONS).await?;
    let violations = check::check(&booking, &payment).await?;
    for violation in &violations {
        println!("VIOLATION: {violation}");
    }
    if violations.is_empty() {
        println!("ok: no invariant violated");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} violation(s)", violations.len());
        Ok(ExitCode::FAILURE)
    }
}

/// Everything `ticketing dev` started, for tests that drive it in-process.
pub struct DevSystem {
    /// The gateway's address.
    pub gateway_addr: std::net::SocketAddr,
    /// The booking-service's gRPC address.
    pub booking_addr: std::net::SocketAddr,
    /// The payment-service's gRPC address.
    pub payment_addr: std::net::SocketAddr,
    /// Where `/metrics` of all three components is served.
    pub metrics_addr: std::net::SocketAddr,
    /// Stops everything.
    pub shutdown: Shutdown,
    /// The three servers.
    pub tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Builds and starts the three components against `brokers`.
pub async fn start_system(args: DevArgs, brokers: &str, shutdown: Shutdown) -> anyhow::Result<DevSystem> {
    let metrics_addr = shared::metrics::serve(args.metrics.metrics_addr, shutdown.clone()).await?;
    let booking = BookingApp::build(&args.database, &args.kafka, brokers, args.booking, args.policy.clone()).await?;
    let booking_addr = booking.grpc_addr();
    let payment_settings = PaymentSettings {
        payment_grpc_addr: args.payment.payment_grpc_addr,
        payment_database: args.payment.payment_database,
        booking_grpc_url: format!("http://{}", loopback(booking_addr)),
        mock_pg_timeout_ms: args.payment.mock_pg_timeout_ms,
        intent_wait_ms: args.payment.intent_wait_ms,
        mock_pg_latency_ms: args.payment.mock_pg_latency_ms,
        mock_pg_refund_failures: args.payment.mock_pg_refund_failures,
        refund_max_attempts: args.payment.refund_max_attempts,
        refund_interval_ms: args.payment.refund_interval_ms,
    };
    let payment = PaymentApp::build(&args.database, &args.kafka, brokers, payment_settings, args.policy).await?;
    let payment_addr = payment.grpc_addr();
    let gateway_settings = GatewaySettings {
        gateway_addr: args.gateway_addr,
        booking_grpc_url: format!("http://{}", loopback(booking_addr)),
        payment_grpc_url: format!("http://{}", loopback(payment_addr)),
        auth: args.auth,
    };
    let gateway = GatewayApp::build(&gateway_settings, &shutdown).await?;
    let gateway_addr = gateway.addr();
    let drain = args.lifecycle.drain();
    let tasks = vec![
        tokio::spawn(booking.run(shutdown.clone(), drain)),
        tokio::spawn(payment.run(shutdown.clone(), drain)),
        tokio::spawn(gateway.run(shutdown.clone(), drain)),
    ];
    Ok(DevSystem { gateway_addr, booking_addr, payment_addr, metrics_addr, shutdown, tasks })
}

/// Drain plus timeout: the longest a shutdown may take.
fn bound(lifecycle: &ShutdownArgs) -> std::time::Duration {
    std::time::Duration::from_secs(lifecycle.shutdown_drain_secs + lifecycle.shutdown_timeout_secs)
}

fn loopback(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

async fn dev(mut args: DevArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal(bound(&args.lifecycle));
    // The embedded broker is not Send; it lives on this task for the whole run.
    let requested = args.kafka.kafka_brokers.clone().filter(|b| !b.trim().is_empty());
    let embedded = match requested {
        Some(_) => None,
        None => {
            let broker = EmbeddedKafka::start()?;
            broker.create_topics(&args.kafka.topics().all(), args.kafka.kafka_topic_partitions)?;
            tracing::info!(
                bootstrap = broker.bootstrap_servers(),
                "embedded Kafka broker listening (set KAFKA_BROKERS to use a real cluster)"
            );
            Some(broker)
        }
    };
    let brokers = match (&embedded, requested) {
        (Some(broker), _) => broker.bootstrap_servers().to_owned(),
        (None, Some(brokers)) => brokers,
        (None, None) => anyhow::bail!("no Kafka broker"),
    };
    if args.auth.jwt_secret.is_none() && args.auth.jwt_jwks.is_none() {
        let secret = uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
        write_dev_secret(&secret)?;
        tracing::warn!(
            path = %dev_secret_path().display(),
            "JWT_SECRET is unset: generated a dev secret; `ticketing token <userId>` signs with it. Set JWT_SECRET in production."
        );
        args.auth.jwt_secret = Some(secret);
    }
    let system = start_system(args, &brokers, shutdown.clone()).await?;
    tracing::info!(
        gateway = %system.gateway_addr,
        booking_grpc = %system.booking_addr,
        payment_grpc = %system.payment_addr,
        metrics = %system.metrics_addr,
        kafka = %brokers,
        "ticketing dev is up: REST on the gateway, try `ticketing token user_123`"
    );
    let mut result = Ok(());
    for task in system.tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                shutdown.cancel();
                result = Err(error);
            }
            Err(error) => {
                shutdown.cancel();
                result = Err(anyhow::anyhow!("a component crashed: {error}"));
            }
        }
    }
    result
}

fn write_dev_secret(secret: &str) -> anyhow::Result<()> {
    let path = dev_secret_path();
    std::fs::write(&path, secret).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
