//! Running `ticketing bench`: the system, the scenarios, the baseline and
//! the report.

use anyhow::Context;
use clap::Parser;
use edge::shutdown::Shutdown;

use super::pgbench;
use crate::{
    audit, bench,
    cli::{BenchArgs, BenchScenario, DevArgs},
    system::{start_system, Broker},
};

#[derive(Parser)]
struct BenchSystem {
    #[command(flatten)]
    dev: DevArgs,
}

/// `ticketing bench`: starts the system in-process (or drives `--gateway`),
/// runs the scenarios beside the pgbench baseline and writes the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    // Two descriptors per onsale client (its socket and the gateway's), plus
    // the services' own connections.
    let people = match args.scenario {
        BenchScenario::OnsaleQueue if args.h2_connections() > 0 => 0,
        BenchScenario::OnsaleQueue => args.clients(),
        _ => args.onsale_clients,
    };
    let needed = u64::try_from(people).unwrap_or(u64::MAX).saturating_mul(2).saturating_add(4096);
    let limit = bench::raise_open_file_limit(needed);
    if limit < needed {
        println!("bench: open-file limit {limit} is below the {needed} onsale needs; raise `ulimit -n`");
    }
    if args.scenario != BenchScenario::All {
        return over_time(args).await;
    }
    if let Some(gateway) = args.gateway.clone() {
        return against_gateway(&args, gateway).await;
    }
    let InProcess { target, system, shutdown, booking_db, payment_db, _broker } = start_in_process(&args).await?;
    let seats = Arc::new(bench::register_performance(&target, "perf_bench", 200).await?);
    let onsale_seats: Arc<Vec<String>> = Arc::new(
        bench::register_performance(&target, "perf_onsale", 1)
            .await?
            .into_iter()
            .take(args.onsale_seats as usize)
            .collect(),
    );

    let mut scenarios = Vec::new();
    let last_seat = seats.last().cloned().unwrap_or_default();
    println!("bench: warm-up (one purchase while the consumer groups form)");
    scenarios.push(bench::warm_up(target.clone(), "perf_bench", &last_seat).await);
    // flow first: distinct leaves the consumers a backlog that flow would measure.
    println!("bench: flow ({} clients, {:?})", args.clients(), args.duration);
    scenarios.push(bench::flow(target.clone(), "perf_bench", seats.clone(), args.clients(), args.duration).await);
    println!("bench: distinct ({} clients, {:?})", args.clients(), args.duration);
    scenarios.push(bench::distinct(target.clone(), "perf_bench", seats.clone(), args.clients(), args.duration).await);
    println!("bench: onsale ({} clients for {} seats)", args.onsale_clients, onsale_seats.len());
    scenarios.push(bench::onsale(target.clone(), "perf_onsale", onsale_seats, args.onsale_clients).await);
    println!("bench: HTTP ceiling (GET /healthz)");
    let http_ceiling_per_sec =
        bench::http_ceiling(target.clone(), args.clients(), std::time::Duration::from_secs(5)).await;

    // Oversell is one of check's invariants: one definition, folded from the event store.
    let (booking, found) = check_stores(args.database.url(), &booking_db, &payment_db).await?;
    let oversold = found.iter().filter(|v| v.invariant == audit::Invariant::SeatSoldOnce).count();
    let violations: Vec<String> = found.into_iter().map(|v| v.message).collect();
    let rss_mib = bench::rss_mib();
    let pipeline_means_ms = bench::pipeline_means();
    shutdown.cancel();
    for task in system.tasks {
        let _ = task.await;
    }

    println!("bench: pgbench baseline ({} clients, {:?})", args.clients(), args.duration);
    let baseline = pgbench::baseline(&booking, args.database.url(), &booking_db, args.clients(), args.duration).await;
    let pgbench_tps = baseline.essential_tps;
    let distinct_rate = scenarios.iter().find(|s| s.name == "distinct").map_or(0.0, |s| s.throughput_per_sec);
    let report = bench::BenchReport {
        ratio_to_pgbench: pgbench_tps.map(|tps| distinct_rate / tps),
        scenarios,
        pgbench_tps,
        pgbench_full_tps: baseline.full_tps,
        http_ceiling_per_sec,
        oversold_seats: oversold,
        violations,
        rss_mib,
        pipeline_means_ms,
    };
    std::fs::write(&args.output, serde_json::to_string_pretty(&report)?)?;
    print_report(&report, &args.output);
    anyhow::ensure!(
        report.oversold_seats == 0 && report.violations.is_empty(),
        "correctness check failed: {:?}",
        report.violations
    );
    Ok(())
}

/// The whole system in this process, on fresh databases and topics.
struct InProcess {
    target: std::sync::Arc<bench::Target>,
    system: crate::system::DevSystem,
    shutdown: Shutdown,
    booking_db: String,
    payment_db: String,
    /// Kept for the run: the embedded broker stops when dropped.
    _broker: Broker,
}

async fn start_in_process(args: &BenchArgs) -> anyhow::Result<InProcess> {
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
        format!("--database-url={}", args.database.url()),
        format!("--database-max-connections={}", args.database.database_max_connections),
        format!("--booking-database={booking_db}"),
        format!("--payment-database={payment_db}"),
        format!("--kafka-topic-prefix=bench_{id}."),
        format!("--jwt-secret={secret}"),
    ])?
    .dev;
    let broker = Broker::start(args.kafka_brokers.as_deref(), &dev.service.kafka)?;
    let brokers = broker.bootstrap.clone();
    let shutdown = Shutdown::new();
    let system = start_system(dev, &brokers, shutdown.clone()).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.clients().max(64)).build()?;
    let target = std::sync::Arc::new(bench::Target { base: format!("http://{}", system.gateway_addr), secret, client });
    for _ in 0..100 {
        let ready = target.client.get(format!("{}/readyz", target.base)).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    println!("bench: system up at {}; registering performances", target.base);
    Ok(InProcess { target, system, shutdown, booking_db, payment_db, _broker: broker })
}

/// The load scenarios against a system already running at `gateway`.
async fn against_gateway(args: &BenchArgs, gateway: String) -> anyhow::Result<()> {
    use std::sync::Arc;
    let secret = args.jwt_secret.clone().context("--gateway needs JWT_SECRET")?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.clients().max(64)).build()?;
    let target = Arc::new(bench::Target { base: gateway.trim_end_matches('/').to_owned(), secret, client });
    let id = uuid::Uuid::now_v7().simple().to_string();
    let (main, sale) = (format!("pb{}", &id[20..]), format!("po{}", &id[20..]));
    let seats = Arc::new(bench::register_performance(&target, &main, 200).await?);
    let onsale_seats: Arc<Vec<String>> = Arc::new(
        bench::register_performance(&target, &sale, 1).await?.into_iter().take(args.onsale_seats as usize).collect(),
    );
    let last_seat = seats.last().cloned().unwrap_or_default();
    let scenarios = vec![
        bench::warm_up(target.clone(), &main, &last_seat).await,
        bench::flow(target.clone(), &main, seats.clone(), args.clients(), args.duration).await,
        bench::distinct(target.clone(), &main, seats, args.clients(), args.duration).await,
        bench::onsale(target.clone(), &sale, onsale_seats, args.onsale_clients).await,
    ];
    print_table(&scenarios);
    for s in &scenarios {
        println!("{}: {}", s.name, s.extra);
    }
    std::fs::write(&args.output, serde_json::to_string_pretty(&scenarios)?)?;
    Ok(())
}

/// The report as people read it.
fn print_report(report: &bench::BenchReport, output: &std::path::Path) {
    println!();
    print_table(&report.scenarios);
    if let Some(lag) = report.scenarios.iter().find(|s| s.name == "flow").map(|s| &s.extra["projection_lag"]) {
        println!("flow projection lag (pay answered -> confirmed visible): {lag}");
    }
    if let Some(extra) = report.scenarios.iter().find(|s| s.name == "onsale").map(|s| &s.extra) {
        println!("onsale: {extra}");
    }
    println!("HTTP ceiling (GET /healthz): {:.0} req/s", report.http_ceiling_per_sec);
    match (report.pgbench_tps, report.ratio_to_pgbench) {
        (Some(tps), Some(ratio)) => {
            println!("pgbench, essential writes of one booking: {tps:.0} tps; ours/raw = {:.0}%", ratio * 100.0)
        }
        _ => println!("pgbench baseline: not run"),
    }
    if let Some(full) = report.pgbench_full_tps {
        println!("pgbench, every statement of one booking command: {full:.0} tps");
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
    println!("report written to {}", output.display());
}

/// One line per scenario: clients, throughput, latency percentiles, statuses.
fn print_table(scenarios: &[bench::ScenarioReport]) {
    println!(
        "{:<9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9}  statuses",
        "scenario", "clients", "per sec", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for s in scenarios {
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
}

/// `idle`, `viewers` and `soak`: the system as separate processes, on fresh
/// databases, watched by the kernel's accounting.
async fn over_time(args: BenchArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let (booking_db, payment_db) = (format!("bench_booking_{id}"), format!("bench_payment_{id}"));
    let secret = uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("bench_{id}.");
    let kafka = messaging::config::KafkaArgs {
        kafka_brokers: args.kafka_brokers.clone(),
        kafka_topic_partitions: 3,
        kafka_replication_factor: 1,
        outbox_stall_secs: 30,
        kafka_topic_prefix: prefix.clone(),
        kafka_fetch_wait_ms: messaging::inbox::settings::DEFAULT_FETCH_WAIT_MS,
    };
    let broker = Broker::start(args.kafka_brokers.as_deref(), &kafka)?;
    let shared = bench::separate::Shared {
        database_url: args.database.url(),
        brokers: &broker.bootstrap,
        booking_db: &booking_db,
        payment_db: &payment_db,
        topic_prefix: &prefix,
        secret: &secret,
    };
    let system = bench::separate::Separate::start(&shared, &[]).await?;
    println!("bench: {:?} on separate processes {:?}; logs in {}", args.scenario, system.pids(), system.logs.display());
    let mut named = system.pids();
    named.push(("load generator".to_owned(), std::process::id()));
    let watched = bench::procs::Watched {
        named,
        postgres: true,
        broker: args.kafka_brokers.is_some().then(|| "tansu".to_owned()),
    };
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.clients().max(64)).build()?;
    let target = Arc::new(bench::Target { base: system.gateway.clone(), secret: secret.clone(), client });
    let mut cost_run = None;
    let report = match args.scenario {
        BenchScenario::Idle => bench::long_runs::idle(&watched, args.duration).await,
        BenchScenario::Viewers => {
            let seats = Arc::new(bench::register_performance(&target, "perf_booked", 200).await?);
            let hall = Arc::new(bench::register_performance(&target, "perf_watched", 1).await?);
            let run = bench::long_runs::ViewersRun {
                target,
                booked: ("perf_booked".to_owned(), seats),
                watched: ("perf_watched".to_owned(), hall),
                viewers: args.viewers,
                clients: args.clients(),
                duration: args.duration,
            };
            bench::long_runs::viewers(run, &watched).await
        }
        BenchScenario::OnsaleQueue => {
            let booking_db = scenario_pool(&args, &booking_db, &booking_service::store::MIGRATIONS).await?;
            let connections = args.h2_connections();
            let people = if connections == 0 {
                vec![bench::link::Link::H1(target.client.clone())]
            } else {
                bench::link::Link::h2(&target.base, connections).await?
            };
            let run = bench::queue::QueueRun {
                target,
                connections: people,
                h2_connections: connections,
                clients: args.clients(),
                arrivals_over: args.arrivals_over,
                seats: args.seats.unwrap_or(500),
                booking_db,
                booking_metrics: system.metrics_url("booking").unwrap_or_default(),
            };
            bench::queue::onsale_queue(run, &watched).await?
        }
        BenchScenario::Cost => {
            let booking = scenario_pool(&args, &booking_db, &booking_service::store::MIGRATIONS).await?;
            let payment = scenario_pool(&args, &payment_db, &payment_service::store::MIGRATIONS).await?;
            let base = args.database.url().rsplit_once('/').map_or("", |(base, _)| base);
            let run = bench::cost::CostRun {
                target,
                clients: args.clients(),
                duration: args.duration,
                booking,
                payment,
                booking_url: format!("{base}/{booking_db}"),
            };
            let report = bench::cost::cost(&run, &watched).await?;
            cost_run = Some(run);
            report
        }
        BenchScenario::Feed => {
            let run = bench::feed::FeedRun {
                target,
                booking_grpc: system.booking_grpc.clone(),
                history: usize::try_from(args.feed_history).unwrap_or(usize::MAX),
                rate: args.feed_rate,
                live_for: args.duration,
                clients: args.clients(),
            };
            bench::feed::feed(run, &watched).await?
        }
        BenchScenario::Soak | BenchScenario::All => {
            let seats = Arc::new(bench::register_performance(&target, "perf_soak", 200).await?);
            let databases = sqlx::PgPool::connect(args.database.url()).await?;
            let databases = bench::long_runs::ServiceDatabases {
                pool: &databases,
                names: [booking_db.as_str(), payment_db.as_str()],
            };
            bench::long_runs::soak(target, "perf_soak", seats, args.clients(), args.duration, &watched, &databases)
                .await
        }
    };
    system.stop();
    let (_, found) = check_stores(args.database.url(), &booking_db, &payment_db).await?;
    let violations: Vec<String> = found.into_iter().map(|v| v.message).collect();
    // After the check: pgbench's rows are not bookings.
    let mut report = report;
    if let Some(run) = cost_run {
        report["essential_writes"] = bench::cost::essential_writes(&run).await?;
    }
    let report =
        serde_json::json!({ "scenario": format!("{:?}", args.scenario), "report": report, "violations": violations });
    std::fs::write(&args.output, serde_json::to_string_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    anyhow::ensure!(violations.is_empty(), "correctness check failed: {violations:?}");
    Ok(())
}

/// `ticketing check` over the bench's two databases; also returns the
/// booking database's pool (the pgbench baseline runs there).
/// A two-connection pool on `database`, which the system under test made:
/// what a scenario reads beside the load (positions, stores, pgbench seeds).
async fn scenario_pool(
    args: &BenchArgs,
    database: &str,
    migrations: &sqlx::migrate::Migrator,
) -> anyhow::Result<sqlx::PgPool> {
    Ok(runtime::db::connect_existing_db(args.database.url(), database, 2, migrations).await?)
}

async fn check_stores(
    url: &str,
    booking_db: &str,
    payment_db: &str,
) -> anyhow::Result<(sqlx::PgPool, Vec<audit::Violation>)> {
    let booking = runtime::db::connect_service_db(url, booking_db, 4, &booking_service::store::MIGRATIONS).await?;
    let payment = runtime::db::connect_service_db(url, payment_db, 4, &payment_service::store::MIGRATIONS).await?;
    let found = audit::check(&booking, &payment).await?;
    Ok((booking, found))
}
