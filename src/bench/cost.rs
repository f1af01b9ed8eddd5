//! `cost`: what one booking costs each process, in CPU, measured from
//! outside with the kernel's accounting (`/proc`). On the system as
//! separate processes: the idle rate of every process first; then
//! `distinct` (64 clients booking distinct seats); then the wait until the
//! asynchronous pipeline has drained (every booking's payment intent made,
//! both event stores still); the CPU each process spent from the first
//! booking to the drained pipeline, less its idle rate, per booking. Beside
//! it, the essential-writes pgbench's PostgreSQL CPU per transaction, in the
//! same run, on the same database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;

use super::{pgbench, procs::Watched, Target};

/// One run.
pub struct CostRun {
    /// The system.
    pub target: Arc<Target>,
    /// Concurrent clients.
    pub clients: usize,
    /// How long they book.
    pub duration: Duration,
    /// The booking database (pgbench runs there).
    pub booking: PgPool,
    /// The payment database.
    pub payment: PgPool,
    /// `postgres://…/<booking database>`.
    pub booking_url: String,
}

/// Runs it and returns the report (the essential writes are measured
/// after the system stops: [`essential_writes`]).
pub async fn cost(run: &CostRun, watched: &Watched) -> anyhow::Result<Value> {
    let seats = Arc::new(super::register_performance(&run.target, "perf_cost", 200).await?);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = watched.sample();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cores = watched.sample().cores_since(&idle);

    let before = watched.sample();
    let started = Instant::now();
    let distinct = super::distinct(run.target.clone(), "perf_cost", seats, run.clients, run.duration).await;
    let bookings = distinct.statuses.get("201").copied().unwrap_or(0);
    let drained_in = drained(run, bookings).await?;
    let after = watched.sample();
    let per_booking = after.ms_per_op_since(&before, bookings, &idle_cores);

    Ok(json!({
        "bookings": bookings,
        "bookings_per_sec": distinct.throughput_per_sec,
        "latency": distinct.latency,
        "statuses": distinct.statuses,
        "drained_after_ms": drained_in.as_millis() as u64,
        "measured_seconds": started.elapsed().as_secs_f64(),
        "cpu_ms_per_booking": per_booking,
        "idle_cores": idle_cores,
        "rss_mib": watched.rss(),
    }))
}

/// Waits until every booking has its payment intent and neither store has
/// grown for a second: the pipeline the bookings started is done.
async fn drained(run: &CostRun, bookings: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let count = |pool: &PgPool| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>("select count(*) from events").fetch_one(&pool).await }
    };
    let mut last = (-1, -1);
    let mut still_since = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        let now = (count(&run.booking).await?, count(&run.payment).await?);
        let intents: i64 = sqlx::query_scalar("select count(*) from events where event_type = 'PaymentIntentCreated'")
            .fetch_one(&run.payment)
            .await?;
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if intents >= i64::try_from(bookings).unwrap_or(i64::MAX)
            && still_since.elapsed() >= Duration::from_secs(1)
        {
            return Ok(started.elapsed() - Duration::from_secs(1));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("the pipeline did not drain in 120 s")
}

/// The essential writes of one booking as pgbench runs them, with the
/// system stopped (it would hold connections pgbench needs): transactions
/// per second, and PostgreSQL's CPU per transaction.
pub async fn essential_writes(run: &CostRun) -> anyhow::Result<Value> {
    pgbench::seed(&run.booking).await?;
    let postgres_only = Watched { named: Vec::new(), postgres: true, broker: None };
    let idle = postgres_only.sample();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_cores = postgres_only.sample().cores_since(&idle);
    let before = postgres_only.sample();
    let tps = pgbench::pgbench(&run.booking_url, pgbench::ESSENTIAL_SCRIPT, run.clients, run.duration).await?;
    let after = postgres_only.sample();
    let transactions = (tps * run.duration.as_secs_f64()).round() as u64;
    let per_transaction = after.ms_per_op_since(&before, transactions, &idle_cores);
    Ok(json!({
        "tps": tps,
        "postgres_cpu_ms_per_transaction": per_transaction.get("postgres"),
    }))
}
