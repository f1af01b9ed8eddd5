//! Readiness of a service, as its gRPC health status: serving while its
//! database answers and its Kafka cluster returns metadata, not serving
//! otherwise and from the moment shutdown begins.

use std::time::Duration;

use rdkafka::{consumer::BaseConsumer, consumer::Consumer};
use sqlx::PgPool;
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::{kafka::client_config, shutdown::Shutdown};

/// Re-checks readiness every `interval` and reports it under `services`
/// (and the overall `""` service) until `shutdown`, then reports not serving.
pub async fn watch(
    reporter: HealthReporter,
    services: Vec<String>,
    pool: PgPool,
    brokers: String,
    interval: Duration,
    shutdown: Shutdown,
) {
    let probe: Option<std::sync::Arc<BaseConsumer>> = client_config(&brokers).create().ok().map(std::sync::Arc::new);
    let mut last = None;
    loop {
        let database = sqlx::query("select 1").execute(&pool).await.is_ok();
        let broker = match probe.clone() {
            // fetch_metadata blocks: keep it off the async workers.
            Some(probe) => {
                tokio::task::spawn_blocking(move || probe.fetch_metadata(None, Duration::from_secs(3)).is_ok())
                    .await
                    .unwrap_or(false)
            }
            None => false,
        };
        let status = if database && broker { ServingStatus::Serving } else { ServingStatus::NotServing };
        if last != Some(status) {
            tracing::info!(?status, database, broker, "readiness changed");
            last = Some(status);
        }
        set(&reporter, &services, status).await;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => break,
        }
    }
    set(&reporter, &services, ServingStatus::NotServing).await;
}

async fn set(reporter: &HealthReporter, services: &[String], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in services {
        reporter.set_service_status(service, status).await;
    }
}
