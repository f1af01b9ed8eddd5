//! How a consumer is tuned: its group, its topics, retries and retention.

use std::time::Duration;

/// The default of [`ConsumerSettings::fetch_wait`] (`KAFKA_FETCH_WAIT_MS`).
pub const DEFAULT_FETCH_WAIT_MS: u64 = 100;

/// Tuning of a consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The consumer's name: its inbox, its partition leases and offsets,
    /// and the Kafka group whose committed offsets seed a first start.
    pub group: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Backoff before the first retry of a failing record; doubles per attempt.
    pub retry_backoff: Duration,
    /// The longest backoff between retries (transient failures are retried
    /// for as long as they last).
    pub max_backoff: Duration,
    /// Tries of a record the database refuses permanently (a constraint,
    /// bad data) before it is dead-lettered.
    pub permanent_failure_tries: u32,
    /// How long handled ce_ids are remembered.
    pub inbox_retention: Duration,
    /// How often partition leases are balanced between the live members
    /// and the lease connection is checked: a dead member's partitions move
    /// within about this long.
    pub rebalance_interval: Duration,
    /// How long the broker may hold a fetch that finds nothing. Kafka
    /// answers the moment a record arrives, whatever this is; brokers that
    /// answer only when the wait ends (tansu, the embedded broker) add up
    /// to this to every hop. An idle consumer asks once per wait.
    pub fetch_wait: Duration,
}

impl ConsumerSettings {
    /// Defaults: retries from 100 ms up to 5 s apart, a permanent failure
    /// dead-lettered on its third try, 7 days of inbox, leases balanced
    /// every second.
    pub fn new(group: &str, topics: &[&str]) -> Self {
        Self {
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            retry_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            permanent_failure_tries: 3,
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
            rebalance_interval: Duration::from_secs(1),
            fetch_wait: Duration::from_millis(DEFAULT_FETCH_WAIT_MS),
        }
    }
}
