//! Test fixtures shared by every crate's integration tests: a fresh
//! database per test and a Kafka-protocol broker (the cluster named by
//! `KAFKA_BROKERS`, else an embedded one), so tests run in parallel without
//! seeing each other's data. A dev-dependency only: nothing here is in a
//! production build.
//!
//! Its `tests/` hold the integration tests of the shared crates (the
//! kernel's log and projections, the relay, the consumer) against real
//! PostgreSQL and a real broker: they need these fixtures, which need the
//! crates they test, so they live above them here.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use messaging::kafka::{EmbeddedKafka, KafkaError};
use runtime::db;

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
            None => messaging::kafka::ensure_topics(&self.brokers, topics, partitions, 1).await,
        }
    }

    /// Makes the embedded broker unreachable (connections fail) until
    /// [`Self::broker_up`]. Only for a broker from [`Self::embedded`].
    pub fn broker_down(&self) {
        self.embedded_cluster().broker_down(1).expect("stopping the embedded broker");
    }

    /// Brings the embedded broker back after [`Self::broker_down`].
    pub fn broker_up(&self) {
        self.embedded_cluster().broker_up(1).expect("starting the embedded broker");
    }

    fn embedded_cluster(&self) -> &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        self.embedded.as_ref().expect("only a broker from TestKafka::embedded() can be stopped").cluster()
    }
}

/// True if `text` holds `secret` as a token of its own: not inside a
/// longer number, a UUID or other hex, and not a latency figure. Used to
/// prove a CVV appears nowhere without tripping on ids and timings.
pub fn contains_token(text: &str, secret: &str) -> bool {
    let is_word = |c: char| c.is_ascii_hexdigit() || c == '-';
    text.match_indices(secret).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let rest = &text[at + secret.len()..];
        !before.is_some_and(is_word)
            && !rest.chars().next().is_some_and(is_word)
            && !rest.starts_with(" \u{3bc}s")
            && !rest.starts_with(" ms")
    })
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

/// Tells the person running the tests that a test was skipped, on the real
/// stderr: the test harness hides `println!`/`eprintln!` of passing tests.
///
/// Under CI (`CI` set, as `.ci/run` does) a skip is a failure: CI installs
/// every tool the tests need, so a missing one must not pass quietly.
pub fn skip_notice(reason: &str) {
    use std::io::Write;
    assert!(std::env::var_os("CI").is_none(), "CI must provide what this test needs: {reason}");
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {reason}");
}

#[cfg(test)]
mod tests {
    use super::contains_token;

    #[test]
    fn the_token_scan_finds_leaks_but_not_numbers_or_ids() {
        let cvv = "8642";
        assert!(
            contains_token(r#"{"cvv":"8642"}"#, cvv)
                && contains_token("cvv: 8642,", cvv)
                && contains_token("8642", cvv)
        );
        assert!(!contains_token("latency=864283 \u{3bc}s", cvv) && !contains_token("latency=8642 \u{3bc}s", cvv));
        assert!(!contains_token("01a217b2-8642-7c8e-b9a1-0000f8642", cvv) && !contains_token("x18642", cvv));
    }
}
