//! The baselines of `ticketing bench`: pgbench against the booking
//! database, at the same concurrency, in the same run. The first runs only
//! the essential writes of one booking (the seat hold, the event, the
//! expiry deadline, one commit): the physical limit. The second runs every
//! statement a booking command sends, so the cost of the extra ones shows.
//! They need a performance of their own, written straight into the catalog.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;

/// The essential writes of one booking, one transaction: the hold, the
/// event, the deadline row the sweeper reads.
pub const ESSENTIAL_SCRIPT: &str = r"\set seat random(1, 50000)
BEGIN;
INSERT INTO seat_holds (performance_id, seat_id, booking_id, user_id, status, locked_until) VALUES ('perf_pgbench', 'S' || CAST(:seat AS text), gen_random_uuid()::text, 'u' || CAST(:client_id AS text), 'locked', now() + interval '10 minutes') ON CONFLICT (performance_id, seat_id) DO UPDATE SET booking_id = excluded.booking_id, locked_until = excluded.locked_until WHERE seat_holds.locked_until <= now() RETURNING seat_id;
INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, schema_version, payload, metadata) VALUES (gen_random_uuid(), 'pgbench', gen_random_uuid()::text, 1, 'SeatLocked', 1, '{}'::jsonb, '{}'::jsonb) RETURNING global_position;
INSERT INTO booking_deadlines (booking_id, due_at) VALUES (gen_random_uuid()::text, now() + interval '10 minutes');
END;
";

/// Every statement one booking command sends (catalog reads, quota lock and
/// count, clock, hold, version check, event, deadline).
pub const FULL_SCRIPT: &str = r"\set seat random(1, 50000)
BEGIN;
SELECT performance_id FROM performances WHERE performance_id = 'perf_pgbench';
SELECT seat_id, price FROM seats WHERE performance_id = 'perf_pgbench' AND seat_id = any(array['S' || CAST(:seat AS text)]);
SELECT pg_advisory_xact_lock(hashtextextended('quota-perf_pgbench-u' || CAST(:client_id AS text) || '_' || CAST(:seat AS text), 0));
SELECT count(*) FROM seat_holds WHERE performance_id = 'perf_pgbench' AND user_id = 'u' || CAST(:client_id AS text) || '_' || CAST(:seat AS text) AND (status = 'booked' OR locked_until > now());
SELECT now();
INSERT INTO seat_holds (performance_id, seat_id, booking_id, user_id, status, locked_until) VALUES ('perf_pgbench', 'S' || CAST(:seat AS text), gen_random_uuid()::text, 'u' || CAST(:client_id AS text), 'locked', now() + interval '10 minutes') ON CONFLICT (performance_id, seat_id) DO UPDATE SET booking_id = excluded.booking_id, locked_until = excluded.locked_until WHERE seat_holds.locked_until <= now() RETURNING seat_id;
SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_type = 'booking' AND stream_id = 'pgbench-' || CAST(:client_id AS text) || '-' || CAST(:seat AS text);
INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, schema_version, payload, metadata) VALUES (gen_random_uuid(), 'pgbench', gen_random_uuid()::text, 1, 'SeatLocked', 1, '{}'::jsonb, '{}'::jsonb) RETURNING global_position, tx_id::text::bigint, recorded_at;
INSERT INTO booking_deadlines (booking_id, due_at) VALUES (gen_random_uuid()::text, now() + interval '10 minutes');
END;
";

/// Runs pgbench with `script` on `database_url`; returns its TPS.
pub async fn pgbench(database_url: &str, script: &str, clients: usize, duration: Duration) -> anyhow::Result<f64> {
    let path = std::env::temp_dir().join(format!("ticketing-bench-{}-{}.sql", std::process::id(), script.len()));
    std::fs::write(&path, script)?;
    let script = path;
    let output = tokio::process::Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &duration.as_secs().to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(database_url)
        .output()
        .await
        .context("running pgbench (install postgresql-client)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "pgbench failed: {}{}", text, String::from_utf8_lossy(&output.stderr));
    text.lines()
        .find_map(|l| l.strip_prefix("tps = ").and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()))
        .context("pgbench printed no tps")
}

/// What the two baselines reached (tps), `None` where one could not run.
/// The performance and seats the scripts book (50,000 seats).
pub async fn seed(booking: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "insert into performances (performance_id, title, seat_count) values ('perf_pgbench', 'pgbench', 50000);
         insert into seats (performance_id, seat_id, row_label, seat_number, price)
           select 'perf_pgbench', 'S' || g, 'S', g, 10000 from generate_series(1, 50000) g;",
    )
    .execute(booking)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Baseline {
    /// [`ESSENTIAL_SCRIPT`]: the limit.
    pub essential_tps: Option<f64>,
    /// [`FULL_SCRIPT`].
    pub full_tps: Option<f64>,
}

/// Seeds the pgbench performance into `booking` (database `booking_db` on
/// the server of `database_url`) and runs both baselines; a notice for
/// whatever could not run (no pgbench, say).
pub async fn baseline(
    booking: &PgPool,
    database_url: &str,
    booking_db: &str,
    clients: usize,
    duration: Duration,
) -> Baseline {
    if let Err(error) = seed(booking).await {
        eprintln!("bench: pgbench baselines skipped: seeding their performance: {error}");
        return Baseline::default();
    }
    let url = format!("{}/{booking_db}", database_url.rsplit_once('/').map_or("", |(base, _)| base));
    let run = async |name: &str, script: &str| {
        // Each run starts from free seats.
        let _ = sqlx::query("delete from seat_holds where performance_id = 'perf_pgbench'").execute(booking).await;
        match pgbench(&url, script, clients, duration).await {
            Ok(tps) => Some(tps),
            Err(error) => {
                eprintln!("bench: pgbench {name} baseline skipped: {error:#}");
                None
            }
        }
    };
    let essential_tps = run("essential", ESSENTIAL_SCRIPT).await;
    let full_tps = run("full", FULL_SCRIPT).await;
    Baseline { essential_tps, full_tps }
}
