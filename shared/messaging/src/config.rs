//! Where Kafka is, as a clap argument group with env-var twins.

use clap::Args;

/// Where Kafka is.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Comma-separated Kafka bootstrap servers. `ticketing dev` starts an
    /// embedded broker when this is unset.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Partitions of each topic this service creates at start-up.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 3)]
    pub kafka_topic_partitions: i32,
    /// Replication factor of each topic this service creates.
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    pub kafka_replication_factor: i32,
    /// Readiness fails while a committed event has waited this long (s) to be published.
    #[arg(long, env = "OUTBOX_STALL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub outbox_stall_secs: u64,
    /// Prefix for every topic and consumer group (to share a cluster between environments).
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "")]
    pub kafka_topic_prefix: String,
    /// How long (ms) the broker may hold a consumer's fetch that finds
    /// nothing. Kafka answers as soon as a record arrives; tansu and the
    /// embedded broker answer only when the wait ends, so on them this is
    /// added to every hop. An idle consumer asks once per wait.
    #[arg(long, env = "KAFKA_FETCH_WAIT_MS", default_value_t = crate::inbox::settings::DEFAULT_FETCH_WAIT_MS,
          value_parser = clap::value_parser!(u64).range(1..=5_000))]
    pub kafka_fetch_wait_ms: u64,
}

impl KafkaArgs {
    /// The topic names under this configuration's prefix.
    pub fn topics(&self) -> crate::topics::Topics {
        crate::topics::Topics::new(&self.kafka_topic_prefix)
    }

    /// Settings of a consumer in `group` of `topics` under this configuration.
    pub fn consumer(&self, group: &str, topics: &[&str]) -> crate::inbox::ConsumerSettings {
        crate::inbox::ConsumerSettings {
            fetch_wait: std::time::Duration::from_millis(self.kafka_fetch_wait_ms),
            ..crate::inbox::ConsumerSettings::new(group, topics)
        }
    }
}
