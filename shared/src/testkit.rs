//! Test fixtures shared by every crate's integration tests: a fresh
//! database per test and a Kafka-protocol broker (the cluster named by
//! `KAFKA_BROKERS`, else an embedded one), so tests run in parallel without
//! seeing each other's data.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    db,
    kafka::{EmbeddedKafka, KafkaError},
};

/// The PostgreSQL server tests use (`DATABASE_URL`, default local trust auth).
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@localhost:5432/postgres".to_owned())
}

/// A unique lowercase name with `prefix`, for databases, topics and groups.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::now_v7().simple())
}

/// Creates a new database `t_<prefix>_<uuid>` with the shared migrations
/// and `own`, and returns its name and pool.
pub async fn fresh_database(prefix: &str, own: &sqlx::migrate::Migrator) -> Result<(String, PgPool), db::DbError> {
    let name = unique_name(&format!("t_{prefix}"));
    let pool = db::connect_service_db(&server_url(), &name, 20, own).await?;
    Ok((name, pool))
}

/// A broker for tests: `KAFKA_BROKERS` when set (CI points it at tansu),
/// else an embedded mock cluster living as long as this value.
pub struct TestKafka {
    embedded: Option<EmbeddedKafka>,
    brokers: String,
}

impl TestKafka {
    /// Uses `KAFKA_BROKERS` or starts an embedded broker.
    pub fn start() -> Result<Self, KafkaError> {
        match std::env::var("KAFKA_BROKERS") {
            Ok(brokers) if !brokers.trim().is_empty() => Ok(Self { embedded: None, brokers }),
            _ => Self::embedded(),
        }
    }

    /// Always starts an embedded broker (for tests that stop the broker).
    pub fn embedded() -> Result<Self, KafkaError> {
        let embedded = EmbeddedKafka::start()?;
        let brokers = embedded.bootstrap_servers().to_owned();
        Ok(Self { embedded: Some(embedded), brokers })
    }

    /// The bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Creates the topics (and DLQ twins) on whichever broker this is.
    pub async fn create_topics(&self, topics: &[&str], partitions: i32) -> Result<(), KafkaError> {
        match &self.embedded {
            Some(embedded) => embedded.create_topics(topics, partitions),
            None => crate::kafka::ensure_topics(&self.brokers, topics, partitions, 1).await,
        }
    }

    /// The embedded broker, if this is one.
    pub fn embedded_broker(&self) -> Option<&EmbeddedKafka> {
        self.embedded.as_ref()
    }
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
