//! Fixtures of the shared crate's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use kernel::event_store;
use kernel::event_store::EventMetadata;
use kernel::event_store::ExpectedVersion;
use kernel::event_store::NewEvent;
use kernel::event_store::StoredEvent;
use messaging::kafka::client_config;
use messaging::outbox::IntegrationMapper;
use messaging::outbox::MappingError;
use messaging::outbox::OutgoingRecord;
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    message::{Headers, Message},
};
use sqlx::PgPool;

pub static TEST_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations");

pub async fn fresh_db(prefix: &str) -> PgPool {
    testkit::fresh_database(prefix, &TEST_MIGRATIONS).await.expect("test database").1
}

/// Publishes every event to one topic as a JSON blob, keyed by stream id.
pub struct JsonMapper {
    pub topic: String,
}

impl IntegrationMapper for JsonMapper {
    fn to_record(&self, event: &StoredEvent) -> Result<Option<OutgoingRecord>, MappingError> {
        let value = serde_json::json!({
            "stream": event.stream_id, "version": event.stream_version, "payload": event.payload,
        });
        Ok(Some(OutgoingRecord {
            topic: self.topic.clone(),
            key: event.stream_id.clone(),
            ce_type: format!("test.v1.{}", event.event_type),
            subject: event.stream_id.clone(),
            value: serde_json::to_vec(&value).unwrap(),
        }))
    }
}

/// A fresh topic (and its DLQ twin) with three partitions.
pub async fn topic_for(kafka: &testkit::TestKafka, prefix: &str) -> String {
    let topic = testkit::unique_name(prefix);
    kafka.create_topics(&[&topic], 3).await.unwrap();
    topic
}

pub fn event(kind: &str, n: i64) -> NewEvent {
    NewEvent::from_serde(kind, &serde_json::json!({ "n": n })).unwrap()
}

pub async fn append_one(pool: &PgPool, stream: &str, kind: &str, n: i64) -> StoredEvent {
    let mut conn = pool.acquire().await.unwrap();
    event_store::append(&mut conn, "test", stream, ExpectedVersion::Any, &[event(kind, n)], &EventMetadata::default())
        .await
        .unwrap()
        .remove(0)
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Received {
    pub key: String,
    pub ce_id: String,
    pub ce_type: String,
    pub stream: String,
    pub version: i64,
    pub sequence: Option<i64>,
    pub position: Option<i64>,
}

pub fn reader(brokers: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = client_config(brokers)
        .set("group.id", testkit::unique_name("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// Reads records until `count` have arrived or `timeout` passes.
pub async fn read_records(consumer: &StreamConsumer, count: usize, timeout: Duration) -> Vec<Received> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < count {
        let Ok(Ok(message)) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            break;
        };
        let header = |name: &str| header_of(&message, name);
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap_or_default()).unwrap();
        out.push(Received {
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            ce_id: header("ce_id"),
            ce_type: header("ce_type"),
            stream: value["stream"].as_str().unwrap_or_default().to_owned(),
            version: value["version"].as_i64().unwrap_or_default(),
            sequence: header("ce_sequence").parse().ok(),
            position: header("ce_position").parse().ok(),
        });
    }
    out
}

/// The value of header `name` of `message` ("" when it has none).
pub fn header_of(message: &impl Message, name: &str) -> String {
    message
        .headers()
        .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}
