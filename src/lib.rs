//! The `ticketing` command: runs the gateway and both services (together in
//! `dev`, or one per process), mints dev tokens, migrates and rebuilds
//! projections. Each component is started through its own `*App::build`, so
//! tests start exactly what production starts.

pub mod bench;
pub mod check;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use booking_service::{BookingApp, BookingSettings};
use clap::{Args, Parser, Subcommand};
use gateway::{GatewayApp, GatewaySettings};
use payment_service::{PaymentApp, PaymentSettings};
use shared::{
    config::{DatabaseArgs, KafkaArgs, MetricsArgs, PaymentPolicy, SecurityArgs, ShutdownArgs},
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
    Gateway(Box<GatewayArgs>),
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
    /// Load-test the whole system (started in-process on fresh databases) beside a pgbench baseline.
    Bench(Box<BenchArgs>),
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
    pub payment: PaymentSettings,
    /// HTTP listen address of the gateway.
    #[arg(long, env = "GATEWAY_ADDR", default_value = "0.0.0.0:8080")]
    pub gateway_addr: std::net::SocketAddr,
    #[command(flatten)]
    pub security: SecurityArgs,
    #[command(flatten)]
    pub edge: gateway::config::EdgeLimits,
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
    #[command(flatten)]
    pub security: SecurityArgs,
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
    /// URL of the booking-service gRPC endpoint (admits payments).
    #[arg(long, env = "BOOKING_GRPC_URL", default_value = "http://127.0.0.1:50051")]
    pub booking_grpc_url: String,
    #[command(flatten)]
    pub security: SecurityArgs,
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

/// `ticketing bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Kafka bootstrap servers; an embedded broker when unset.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Concurrent clients of `distinct`, `flow`, the HTTP ceiling and pgbench.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Length of each timed scenario.
    #[arg(long, default_value = "10s", value_parser = shared::config::parse_duration)]
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
    /// Drive an already running gateway instead (e.g. separate processes, to
    /// measure each one's memory); tokens are signed with JWT_SECRET, and the
    /// pgbench baseline and store checks are skipped.
    #[arg(long)]
    pub gateway: Option<String>,
    /// HS256 secret of the external gateway.
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
            let app =
                BookingApp::build(&args.database, &args.kafka, &brokers, args.booking, args.policy, &args.security)
                    .await?;
            app.run(shutdown, args.lifecycle.drain()).await
        }
        Command::Payment(args) => {
            let shutdown = shutdown::on_signal(bound(&args.lifecycle));
            let brokers = args.kafka.kafka_brokers.clone().context("KAFKA_BROKERS is required")?;
            shared::metrics::serve(args.metrics.metrics_addr, shutdown.clone()).await?;
            let app = PaymentApp::build(
                &args.database,
                &args.kafka,
                &brokers,
                args.payment,
                args.policy,
                &args.booking_grpc_url,
                &args.security,
            )
            .await?;
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
            println!("{}", shared::auth::issue_token(&secret, &args.user_id, args.admin, ttl)?);
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
        Command::Bench(args) => run_bench(*args).await,
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

#[derive(Parser)]
struct BenchSystem {
    #[command(flatten)]
    dev: DevArgs,
}

async fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    if let Some(gateway) = args.gateway.clone() {
        let secret = args.jwt_secret.clone().context("--gateway needs JWT_SECRET")?;
        let client = reqwest::Client::builder().pool_max_idle_per_host(args.clients.max(64)).build()?;
        let target = Arc::new(bench::Target { base: gateway.trim_end_matches('/').to_owned(), secret, client });
        let id = uuid::Uuid::now_v7().simple().to_string();
        let (main, sale) = (format!("pb{}", &id[20..]), format!("po{}", &id[20..]));
        let seats = Arc::new(bench::register_performance(&target, &main, 200).await?);
        let onsale_seats: Arc<Vec<String>> = Arc::new(
            bench::register_performance(&target, &sale, 1)
                .await?
                .into_iter()
                .take(args.onsale_seats as usize)
                .collect(),
        );
        let scenarios = vec![
            bench::flow(target.clone(), &main, seats.clone(), args.clients, args.duration).await,
            bench::distinct(target.clone(), &main, seats, args.clients, args.duration).await,
            bench::onsale(target.clone(), &sale, onsale_seats, args.onsale_clients).await,
        ];
        for s in &scenarios {
            println!(
                "{:<9} {:>7} {:>10.1}/s p50 {:.2} p95 {:.2} p99 {:.2} max {:.2} ms {:?} {}",
                s.name,
                s.clients,
                s.throughput_per_sec,
                s.latency.p50_ms,
                s.latency.p95_ms,
                s.latency.p99_ms,
                s.latency.max_ms,
                s.statuses,
                s.extra
            );
        }
        std::fs::write(&args.output, serde_json::to_string_pretty(&scenarios)?)?;
        return Ok(());
    }
    let id = uuid::Uuid::now_v7().simple().to_string();
    let (booking_db, payment_db) = (format!("bench_booking_{id}"), format!("bench_payment_{id}"));
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let dev = BenchSystem::try_parse_from([
        "bench".to_owned(),
        "--gateway-addr=127.0.0.1:0".into(),
        "--metrics-addr=127.0.0.1:0".into(),
        "--booking-grpc-addr=127.0.0.1:0".into(),
        "--payment-grpc-addr=127.0.0.1:0".into(),
        "--shutdown-drain-secs=0".into(),
        format!("--database-url={}", args.database.database_url),
        format!("--database-max-connections={}", args.database.database_max_connections),
        format!("--booking-database={booking_db}"),
        format!("--payment-database={payment_db}"),
        format!("--kafka-topic-prefix=bench_{id}."),
        format!("--jwt-secret={secret}"),
    ])?
    .dev;
    let embedded = match &args.kafka_brokers {
        Some(_) => None,
        None => Some(EmbeddedKafka::start()?),
    };
    let brokers = match (&embedded, &args.kafka_brokers) {
        (Some(broker), _) => broker.bootstrap_servers().to_owned(),
        (None, Some(brokers)) => brokers.clone(),
        (None, None) => anyhow::bail!("no Kafka broker"),
    };
    if let Some(broker) = &embedded {
        broker.create_topics(&dev.kafka.topics().all(), dev.kafka.kafka_topic_partitions)?;
    }
    let shutdown = Shutdown::new();
    let system = start_system(dev, &brokers, shutdown.clone()).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.clients.max(64)).build()?;
    let target = Arc::new(bench::Target { base: format!("http://{}", system.gateway_addr), secret, client });
    for _ in 0..100 {
        let ready = target.client.get(format!("{}/readyz", target.base)).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    println!("bench: system up at {}; registering performances", target.base);
    let seats = Arc::new(bench::register_performance(&target, "perf_bench", 200).await?);
    let onsale_seats: Arc<Vec<String>> = Arc::new(
        bench::register_performance(&target, "perf_onsale", 1)
            .await?
            .into_iter()
            .take(args.onsale_seats as usize)
            .collect(),
    );

    // flow first: distinct leaves the consumers a backlog that flow would measure.
    let mut scenarios = Vec::new();
    println!("bench: flow ({} clients, {:?})", args.clients, args.duration);
    scenarios.push(bench::flow(target.clone(), "perf_bench", seats.clone(), args.clients, args.duration).await);
    println!("bench: distinct ({} clients, {:?})", args.clients, args.duration);
    scenarios.push(bench::distinct(target.clone(), "perf_bench", seats.clone(), args.clients, args.duration).await);
    println!("bench: onsale ({} clients for {} seats)", args.onsale_clients, onsale_seats.len());
    scenarios.push(bench::onsale(target.clone(), "perf_onsale", onsale_seats, args.onsale_clients).await);
    println!("bench: HTTP ceiling (GET /healthz)");
    let http_ceiling_per_sec =
        bench::http_ceiling(target.clone(), args.clients, std::time::Duration::from_secs(5)).await;

    let booking = shared::db::connect_service_db(
        &args.database.database_url,
        &booking_db,
        4,
        &booking_service::store::MIGRATIONS,
    )
    .await?;
    let payment = shared::db::connect_service_db(
        &args.database.database_url,
        &payment_db,
        4,
        &payment_service::store::MIGRATIONS,
    )
    .await?;
    // Oversell is one of check's invariants: one definition, folded from the event store.
    let found = check::check(&booking, &payment).await?;
    let oversold = found.iter().filter(|v| v.invariant == check::Invariant::SeatSoldOnce).count();
    let violations: Vec<String> = found.into_iter().map(|v| v.message).collect();
    let rss_mib = bench::rss_mib();
    let pipeline_means_ms = bench::pipeline_means();
    shutdown.cancel();
    for task in system.tasks {
        let _ = task.await;
    }

    println!("bench: pgbench baseline ({} clients, {:?})", args.clients, args.duration);
    sqlx::raw_sql(
        "insert into performances (performance_id, title, seat_count) values ('perf_pgbench', 'pgbench', 50000);
         insert into seats (performance_id, seat_id, row_label, seat_number, price)
           select 'perf_pgbench', 'S' || g, 'S', g, 10000 from generate_series(1, 50000) g;",
    )
    .execute(&booking)
    .await?;
    let url = format!("{}/{booking_db}", args.database.database_url.rsplit_once('/').map_or("", |(base, _)| base));
    let pgbench_tps = match bench::pgbench(&url, args.clients, args.duration).await {
        Ok(tps) => Some(tps),
        Err(error) => {
            eprintln!("bench: pgbench baseline skipped: {error:#}");
            None
        }
    };
    let distinct_rate = scenarios.iter().find(|s| s.name == "distinct").map_or(0.0, |s| s.throughput_per_sec);
    let report = bench::BenchReport {
        ratio_to_pgbench: pgbench_tps.map(|tps| distinct_rate / tps),
        scenarios,
        pgbench_tps,
        http_ceiling_per_sec,
        oversold_seats: oversold,
        violations,
        rss_mib,
        pipeline_means_ms,
    };
    std::fs::write(&args.output, serde_json::to_string_pretty(&report)?)?;
    println!();
    println!(
        "{:<9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9}  statuses",
        "scenario", "clients", "per sec", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for s in &report.scenarios {
        println!(
            "{:<9} {:>7} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {:?}",
            s.name,
            s.clients,
            s.throughput_per_sec,
            s.latency.p50_ms,
            s.latency.p95_ms,
            s.latency.p99_ms,
            s.latency.max_ms,
            s.statuses
        );
    }
    if let Some(lag) = report.scenarios.iter().find(|s| s.name == "flow").map(|s| &s.extra["projection_lag"]) {
        println!("flow projection lag (pay answered -> confirmed visible): {lag}");
    }
    if let Some(extra) = report.scenarios.iter().find(|s| s.name == "onsale").map(|s| &s.extra) {
        println!("onsale: {extra}");
    }
    println!("HTTP ceiling (GET /healthz): {:.0} req/s", report.http_ceiling_per_sec);
    match (report.pgbench_tps, report.ratio_to_pgbench) {
        (Some(tps), Some(ratio)) => {
            println!("pgbench (same SQL as one booking): {tps:.0} tps; ours/raw = {:.0}%", ratio * 100.0)
        }
        _ => println!("pgbench baseline: not run"),
    }
    println!(
        "oversold seats: {}; invariant violations: {}; RSS (all components): {:.1} MiB",
        report.oversold_seats,
        report.violations.len(),
        report.rss_mib
    );
    println!("pipeline means (ms):");
    for (name, ms) in
        report.pipeline_means_ms.iter().filter(|(n, _)| !n.starts_with("http_") && !n.starts_with("grpc_"))
    {
        println!("  {name}: {ms:.1}");
    }
    println!("report written to {}", args.output.display());
    anyhow::ensure!(
        report.oversold_seats == 0 && report.violations.is_empty(),
        "correctness check failed: {:?}",
        report.violations
    );
    Ok(())
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
    let booking =
        BookingApp::build(&args.database, &args.kafka, brokers, args.booking, args.policy.clone(), &args.security)
            .await?;
    let booking_addr = booking.grpc_addr();
    let scheme = args.security.grpc_tls.scheme();
    let booking_url = format!("{scheme}://{}", loopback(booking_addr));
    let payment = PaymentApp::build(
        &args.database,
        &args.kafka,
        brokers,
        args.payment,
        args.policy,
        &booking_url,
        &args.security,
    )
    .await?;
    let payment_addr = payment.grpc_addr();
    let gateway_settings = GatewaySettings {
        gateway_addr: args.gateway_addr,
        booking_grpc_url: booking_url,
        payment_grpc_url: format!("{scheme}://{}", loopback(payment_addr)),
        security: args.security,
        edge: args.edge,
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
    if !args.security.auth.has_keys() {
        let secret = uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
        write_dev_secret(&secret)?;
        tracing::warn!(
            path = %dev_secret_path().display(),
            "JWT_SECRET is unset: generated a dev secret; `ticketing token <userId>` signs with it. Set JWT_SECRET in production."
        );
        args.security.auth.jwt_secret = Some(secret);
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
