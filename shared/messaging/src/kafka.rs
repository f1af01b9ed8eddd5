//! Kafka wiring shared by both services: client settings, the CloudEvents
//! binary-mode headers of docs/asyncapi.yaml, topic creation at start-up, and the
//! embedded broker `ticketing dev` and the tests use when no cluster is set.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::ClientConfig,
    message::{Header, Headers, OwnedHeaders},
    mocking::MockCluster,
    producer::{DefaultProducerContext, FutureProducer},
    types::RDKafkaErrorCode,
};

/// Kafka client errors.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused or failed an operation.
    #[error("{context}: {source}")]
    Client {
        /// What was being done.
        context: &'static str,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A topic could not be created.
    #[error("creating topic {topic}: {code}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
}

/// The prefix of environment variables passed to librdkafka as properties:
/// `KAFKA_PROPERTY_SECURITY_PROTOCOL=SASL_SSL` sets `security.protocol`.
pub const PROPERTY_ENV_PREFIX: &str = "KAFKA_PROPERTY_";

/// The librdkafka properties set through `KAFKA_PROPERTY_*` variables
/// (name lowercased, `_` turned into `.`).
pub fn properties_from_env() -> Vec<(String, String)> {
    let mut properties: Vec<(String, String)> = std::env::vars()
        .filter_map(|(name, value)| {
            let property = name.strip_prefix(PROPERTY_ENV_PREFIX)?;
            (!property.is_empty()).then(|| (property.to_ascii_lowercase().replace('_', "."), value))
        })
        .collect();
    properties.sort();
    properties
}

/// Settings common to every client of `brokers`, then any `KAFKA_PROPERTY_*`
/// overrides (security settings, debugging).
pub fn client_config(brokers: &str) -> ClientConfig {
    client_config_with(brokers, &[])
}

/// [`client_config`] with a kind of client's own `defaults`, which
/// `KAFKA_PROPERTY_*` overrides too.
pub fn client_config_with(brokers: &str, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set("client.id", "ticketing").set("socket.keepalive.enable", "true");
    for (property, value) in defaults {
        config.set(*property, *value);
    }
    for (property, value) in properties_from_env() {
        config.set(property, value);
    }
    config
}

/// An idempotent, ordered producer: acks from all replicas, retries without
/// duplicates or reordering within a partition. A message waits up to two
/// minutes for its ack, so a broker that hangs for a while is waited out
/// instead of timing messages out (which forces an epoch bump and, on some
/// brokers, a fenced producer).
pub fn producer(brokers: &str) -> Result<FutureProducer, KafkaError> {
    client_config_with(
        brokers,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "2"),
            ("message.timeout.ms", "120000"),
            ("compression.type", "none"),
        ],
    )
    .create()
    .map_err(|source| KafkaError::Client { context: "creating the Kafka producer", source })
}

/// Creates each topic (and its `.dlq` twin) unless it exists. Brokers such
/// as tansu do not auto-create topics, so every service does this at start-up.
pub async fn ensure_topics(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
    replication: i32,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(|source| KafkaError::Client { context: "creating the Kafka admin client", source })?;
    let wanted = with_dlq_twins(topics);
    // Skip CreateTopics when everything exists (the embedded broker, for
    // one, creates topics only through its owner).
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|source| KafkaError::Client { context: "reading cluster metadata", source })?;
    let names: Vec<String> =
        wanted.into_iter().filter(|name| !metadata.topics().iter().any(|t| t.name() == name)).collect();
    if names.is_empty() {
        return Ok(());
    }
    // Writes need two in-sync copies once there are three (acks=all), and
    // records stay as long as docs/asyncapi.yaml promises.
    let min_insync = if replication >= 3 { "2" } else { "1" };
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            NewTopic::new(name, partitions, TopicReplication::Fixed(replication))
                .set("retention.ms", TOPIC_RETENTION_MS)
                .set("min.insync.replicas", min_insync)
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|source| KafkaError::Client { context: "creating topics", source })?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, partitions, "created Kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}

/// How long topics keep records: 7 days, as docs/asyncapi.yaml states.
pub const TOPIC_RETENTION_MS: &str = "604800000";

fn with_dlq_twins(topics: &[&str]) -> Vec<String> {
    topics.iter().flat_map(|topic| [(*topic).to_owned(), dlq_topic(topic)]).collect()
}

/// The dead-letter topic of `topic`.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// The CloudEvents attributes and tracing context of one Kafka record
/// (binary content mode: attributes in headers, the protobuf in the value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudEventHeaders {
    /// `ce_id`: the event id, the consumers' dedupe key.
    pub id: String,
    /// `ce_source`, e.g. `/booking-service`.
    pub source: String,
    /// `ce_type`, e.g. `ticketing.booking.v1.SeatLocked`.
    pub event_type: String,
    /// `ce_time`.
    pub time: String,
    /// `ce_subject`: the booking id.
    pub subject: String,
    /// W3C `traceparent`.
    pub traceparent: Option<String>,
    /// `correlation_id`.
    pub correlation_id: Option<String>,
    /// `causation_id`.
    pub causation_id: Option<String>,
    /// `ce_sequence`: the event's number among its stream's published
    /// events (1, 2, 3… with no gaps), so a consumer can tell a missing or
    /// reordered event from a normal one.
    pub sequence: Option<i64>,
    /// `ce_position`: the event's place in its service's event log (the
    /// event feed's position), growing in commit order.
    pub position: Option<i64>,
}

/// The content type of every record value.
pub const CONTENT_TYPE: &str = "application/protobuf";

impl CloudEventHeaders {
    /// Formats a timestamp as CloudEvents expects (RFC 3339, UTC).
    pub fn format_time(time: DateTime<Utc>) -> String {
        time.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// The Kafka headers, in binding order.
    pub fn to_kafka(&self) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(12)
            .insert(header("ce_specversion", "1.0"))
            .insert(header("ce_id", &self.id))
            .insert(header("ce_source", &self.source))
            .insert(header("ce_type", &self.event_type))
            .insert(header("ce_time", &self.time))
            .insert(header("ce_subject", &self.subject))
            .insert(header("content-type", CONTENT_TYPE));
        for (key, value) in [("ce_sequence", self.sequence), ("ce_position", self.position)] {
            if let Some(value) = value {
                headers = headers.insert(header(key, &value.to_string()));
            }
        }
        for (key, value) in [
            ("traceparent", &self.traceparent),
            ("correlation_id", &self.correlation_id),
            ("causation_id", &self.causation_id),
        ] {
            if let Some(value) = value {
                headers = headers.insert(header(key, value));
            }
        }
        headers
    }

    /// Reads the headers of a received record; `None` when a required
    /// attribute (`ce_id`, `ce_type`) is missing.
    pub fn from_kafka<H: Headers>(headers: Option<&H>) -> Option<Self> {
        let mut parsed = Self::default();
        let headers = headers?;
        for h in headers.iter() {
            let Some(value) = h.value.and_then(|v| std::str::from_utf8(v).ok()) else {
                continue;
            };
            let value = value.to_owned();
            match h.key {
                "ce_id" => parsed.id = value,
                "ce_source" => parsed.source = value,
                "ce_type" => parsed.event_type = value,
                "ce_time" => parsed.time = value,
                "ce_subject" => parsed.subject = value,
                "traceparent" => parsed.traceparent = Some(value),
                "correlation_id" => parsed.correlation_id = Some(value),
                "causation_id" => parsed.causation_id = Some(value),
                "ce_sequence" => parsed.sequence = value.parse().ok(),
                "ce_position" => parsed.position = value.parse().ok(),
                _ => {}
            }
        }
        (!parsed.id.is_empty() && !parsed.event_type.is_empty()).then_some(parsed)
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header { key, value: Some(value) }
}

/// A Kafka-protocol broker inside this process (librdkafka's mock cluster),
/// for `ticketing dev` and tests when `KAFKA_BROKERS` is unset. Topics,
/// consumer groups and committed offsets work; data lives in memory.
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
    bootstrap: String,
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster on a free loopback port.
    pub fn start() -> Result<Self, KafkaError> {
        let cluster = MockCluster::new(1)
            .map_err(|source| KafkaError::Client { context: "starting the embedded Kafka broker", source })?;
        let bootstrap = cluster.bootstrap_servers();
        Ok(Self { cluster, bootstrap })
    }

    /// The `bootstrap.servers` string of the embedded broker.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates each topic and its `.dlq` twin (the embedded broker does not
    /// serve the CreateTopics API, so its owner creates them).
    pub fn create_topics(&self, topics: &[&str], partitions: i32) -> Result<(), KafkaError> {
        for name in with_dlq_twins(topics) {
            self.cluster
                .create_topic(&name, partitions, 1)
                .map_err(|source| KafkaError::Client { context: "creating a topic on the embedded broker", source })?;
        }
        Ok(())
    }

    /// The mock cluster itself (tests stop and start its broker).
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// librdkafka refuses SASL_SSL at configuration time when it was built
    /// without OpenSSL; this build must accept it (and SCRAM over it).
    #[test]
    fn the_build_speaks_sasl_ssl_with_scram_and_plain() {
        for mechanism in ["SCRAM-SHA-512", "PLAIN"] {
            let producer: Result<rdkafka::producer::FutureProducer, _> = client_config("127.0.0.1:1")
                .set("security.protocol", "SASL_SSL")
                .set("sasl.mechanisms", mechanism)
                .set("sasl.username", "ticketing")
                .set("sasl.password", "not-a-real-password")
                .create();
            assert!(producer.is_ok(), "{mechanism}: {:?}", producer.err());
        }
    }

    #[test]
    fn cloud_event_headers_round_trip() {
        let headers = CloudEventHeaders {
            id: "0193e0a4-7d3c-7c8e-b9a1-000000000001".into(),
            source: "/booking-service".into(),
            event_type: "ticketing.booking.v1.SeatLocked".into(),
            time: "2026-11-26T10:00:00.000000Z".into(),
            subject: "b1".into(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            correlation_id: Some("c1".into()),
            causation_id: None,
            sequence: Some(2),
            position: Some(7_340_032),
        };
        let kafka = headers.to_kafka();
        let keys: Vec<&str> = kafka.iter().map(|h| h.key).collect();
        assert_eq!(
            keys,
            [
                "ce_specversion",
                "ce_id",
                "ce_source",
                "ce_type",
                "ce_time",
                "ce_subject",
                "content-type",
                "ce_sequence",
                "ce_position",
                "traceparent",
                "correlation_id"
            ]
        );
        assert_eq!(CloudEventHeaders::from_kafka(Some(&kafka)), Some(headers));
    }

    #[test]
    fn records_without_an_id_are_not_cloud_events() {
        let kafka = OwnedHeaders::new().insert(header("ce_type", "x"));
        assert_eq!(CloudEventHeaders::from_kafka(Some(&kafka)), None);
    }
}
