//! Readiness of a service, as its gRPC health status: serving while its
//! database answers, its Kafka cluster returns metadata, its outbox has no
//! committed event waiting longer than the stall threshold, and every
//! background component reports itself well (`messaging::Signals`); not serving
//! otherwise and from the moment shutdown begins.

use std::{sync::Arc, time::Duration};

use rdkafka::{consumer::BaseConsumer, consumer::Consumer};
use sqlx::PgPool;
use tonic_health::{server::HealthReporter, ServingStatus};

use edge::shutdown::Shutdown;
use messaging::{kafka::client_config, Signals};

/// What readiness watches besides the database and the broker.
#[derive(Debug, Clone)]
pub struct ReadinessChecks {
    /// The outbox relay's checkpoint name.
    pub relay: String,
    /// Readiness fails while a committed event waits longer than this.
    pub outbox_stall: Duration,
    /// Problems reported by background components.
    pub signals: Signals,
}

/// Age in seconds of the oldest committed event the relay has not published
/// (0 when it is caught up): one statement, which also proves the database
/// answers.
pub async fn oldest_unpublished_secs(pool: &PgPool, relay: &str) -> Result<f64, sqlx::Error> {
    let age: Option<f64> = sqlx::query_scalar(
        "select extract(epoch from now() - e.recorded_at)::float8 from events e \
           join subscription_checkpoints c on c.subscription = $1 \
          where (e.tx_id, e.global_position) > (c.last_tx::text::xid8, c.last_position) \
            and e.tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
          order by e.tx_id, e.global_position limit 1",
    )
    .bind(relay)
    .fetch_optional(pool)
    .await?;
    Ok(age.unwrap_or(0.0).max(0.0))
}

/// Re-checks readiness every `interval` and reports it under `services`
/// (and the overall `""` service) until `shutdown`, then reports not serving.
pub async fn watch(
    reporter: HealthReporter,
    services: Vec<String>,
    pool: PgPool,
    brokers: String,
    checks: ReadinessChecks,
    interval: Duration,
    shutdown: Shutdown,
) {
    let probe: Option<Arc<BaseConsumer>> = client_config(&brokers).create().ok().map(Arc::new);
    let mut last: Option<(ServingStatus, Vec<String>)> = None;
    loop {
        let outbox = oldest_unpublished_secs(&pool, &checks.relay).await;
        let database = outbox.is_ok();
        let broker = match probe.clone() {
            // fetch_metadata blocks: keep it off the async workers.
            Some(probe) => {
                tokio::task::spawn_blocking(move || probe.fetch_metadata(None, Duration::from_secs(3)).is_ok())
                    .await
                    .unwrap_or(false)
            }
            None => false,
        };
        let mut problems: Vec<String> =
            checks.signals.problems().into_iter().map(|(component, why)| format!("{component}: {why}")).collect();
        if !database {
            problems.push("database unreachable".into());
        }
        if !broker {
            problems.push("Kafka unreachable".into());
        }
        if let Ok(age) = outbox {
            metrics::gauge!("outbox_oldest_unpublished_seconds", "relay" => checks.relay.clone()).set(age);
            if age > checks.outbox_stall.as_secs_f64() {
                problems.push(format!("outbox: an event has waited {age:.0} s to be published"));
            }
        }
        let status = if problems.is_empty() { ServingStatus::Serving } else { ServingStatus::NotServing };
        for service in &services {
            metrics::gauge!("service_ready", "service" => service.clone()).set(if problems.is_empty() {
                1.0
            } else {
                0.0
            });
        }
        let now = Some((status, problems));
        if last != now {
            if let Some((status, problems)) = &now {
                if problems.is_empty() {
                    tracing::info!(?status, "readiness changed");
                } else {
                    tracing::warn!(?status, problems = problems.join("; "), "readiness changed");
                }
            }
            last = now;
        }
        set(&reporter, &services, status).await;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => break,
        }
    }
    for service in &services {
        metrics::gauge!("service_ready", "service" => service.clone()).set(0.0);
    }
    set(&reporter, &services, ServingStatus::NotServing).await;
}

async fn set(reporter: &HealthReporter, services: &[String], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in services {
        reporter.set_service_status(service, status).await;
    }
}
