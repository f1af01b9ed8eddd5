//! The baseline of `ticketing bench`: pgbench running the SQL of one
//! booking command against the booking database, at the same concurrency,
//! in the same run. It needs a performance of its own with enough seats,
//! written straight into the catalog tables.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;

/// The SQL of one booking command (quota lock and count, seat hold, event
/// append with its NOTIFY trigger), for pgbench against the booking database.
pub const PGBENCH_SCRIPT: &str = r"\set seat random(1, 50000)
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

/// Runs pgbench with [`PGBENCH_SCRIPT`] on `database_url`; returns its TPS.
pub async fn pgbench(database_url: &str, clients: usize, duration: Duration) -> anyhow::Result<f64> {
    let script = std::env::temp_dir().join(format!("ticketing-bench-{}.sql", std::process::id()));
    std::fs::write(&script, PGBENCH_SCRIPT)?;
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

/// Seeds the pgbench performance into `booking` (database `booking_db` on
/// the server of `database_url`) and runs the baseline; `None` (with a
/// notice) when pgbench is missing or fails.
pub async fn baseline(
    booking: &PgPool,
    database_url: &str,
    booking_db: &str,
    clients: usize,
    duration: Duration,
) -> Option<f64> {
    let seeded = sqlx::raw_sql(
        "insert into performances (performance_id, title, seat_count) values ('perf_pgbench', 'pgbench', 50000);
         insert into seats (performance_id, seat_id, row_label, seat_number, price)
           select 'perf_pgbench', 'S' || g, 'S', g, 10000 from generate_series(1, 50000) g;",
    )
    .execute(booking)
    .await;
    if let Err(error) = seeded {
        eprintln!("bench: pgbench baseline skipped: seeding its performance: {error}");
        return None;
    }
    let url = format!("{}/{booking_db}", database_url.rsplit_once('/').map_or("", |(base, _)| base));
    match pgbench(&url, clients, duration).await {
        Ok(tps) => Some(tps),
        Err(error) => {
            eprintln!("bench: pgbench baseline skipped: {error:#}");
            None
        }
    }
}
