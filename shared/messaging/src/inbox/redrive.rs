//! Re-driving dead letters: records in `<topic>.dlq` are published again to
//! their source topic (without the `dlq_*` headers), so a consumer whose bug
//! or dependency has been fixed handles them. The re-drive consumer group
//! commits what it re-published, so running it twice re-sends nothing.

use std::time::Duration;

use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::{Header, Headers, Message, OwnedHeaders},
    producer::FutureRecord,
};

use crate::kafka::{client_config, dlq_topic, producer, KafkaError};

/// Consumer group that remembers what was re-driven.
pub const REDRIVE_GROUP: &str = "ticketing-dlq-redrive";

/// Re-publishes every dead letter of `topic` not re-driven before; returns
/// how many. Stops when the DLQ has been idle for `idle`.
pub async fn redrive(brokers: &str, topic: &str, group: &str, idle: Duration) -> Result<usize, KafkaError> {
    let dlq = dlq_topic(topic);
    let consumer: StreamConsumer = client_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|source| KafkaError::Client { context: "creating the re-drive consumer", source })?;
    consumer.subscribe(&[&dlq]).map_err(|source| KafkaError::Client { context: "subscribing to the DLQ", source })?;
    let producer = producer(brokers)?;
    let mut count = 0;
    while let Ok(received) = tokio::time::timeout(idle, consumer.recv()).await {
        let message = received.map_err(|source| KafkaError::Client { context: "reading the DLQ", source })?;
        let target = message
            .headers()
            .and_then(|h| h.iter().find(|x| x.key == "dlq_source_topic").and_then(|x| x.value))
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or(topic)
            .to_owned();
        let mut headers = OwnedHeaders::new();
        for h in message.headers().iter().flat_map(|h| h.iter()).filter(|h| !h.key.starts_with("dlq_")) {
            headers = headers.insert(Header { key: h.key, value: h.value });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&target).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        producer
            .send(record, Duration::from_secs(15))
            .await
            .map_err(|(source, _)| KafkaError::Client { context: "re-publishing a dead letter", source })?;
        consumer
            .store_offset_from_message(&message)
            .and_then(|()| consumer.commit_consumer_state(CommitMode::Sync))
            .map_err(|source| KafkaError::Client { context: "committing the re-drive offset", source })?;
        count += 1;
    }
    Ok(count)
}
