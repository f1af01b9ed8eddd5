//! The Kafka consumer side: every record is handled in one database
//! transaction together with its inbox row `(consumer, ce_id)`, so a
//! redelivered event is a no-op; the offset is stored only after that
//! transaction commits. A record whose handler keeps failing goes to
//! `<topic>.dlq` with the reason, and the partition moves on.

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    kafka::{client_config, dlq_topic, CloudEventHeaders, KafkaError},
    shutdown::{sleep_or_shutdown, Shutdown},
};

/// A received record with its CloudEvents attributes parsed.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    /// The topic it came from.
    pub topic: String,
    /// Its partition key.
    pub key: Option<String>,
    /// CloudEvents attributes and trace context.
    pub headers: CloudEventHeaders,
    /// The encoded integration event.
    pub value: Vec<u8>,
}

impl IncomingEvent {
    /// The event id as a UUID (the dedupe key).
    pub fn event_id(&self) -> Result<Uuid, HandlerError> {
        Uuid::parse_str(&self.headers.id)
            .map_err(|_| HandlerError::Poison(format!("ce_id `{}` is not a UUID", self.headers.id)))
    }

    /// Decodes the value as protobuf message `M`.
    pub fn decode<M: prost::Message + Default>(&self) -> Result<M, HandlerError> {
        M::decode(self.value.as_slice())
            .map_err(|e| HandlerError::Poison(format!("{} does not decode: {e}", self.headers.event_type)))
    }
}

/// Why a handler did not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The record can never be handled (undecodable, impossible facts): dead-letter it now.
    #[error("poison record: {0}")]
    Poison(String),
    /// Something that may work on a retry (database hiccup, lock timeout).
    #[error("transient: {0}")]
    Transient(#[from] anyhow::Error),
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        Self::Transient(error.into())
    }
}

/// Applies one event's effects inside the transaction that records it in the inbox.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Whether records of this `ce_type` matter here; others are acknowledged
    /// without touching the database.
    fn wants(&self, _ce_type: &str) -> bool {
        true
    }

    /// Handles `event`; every write must go through `tx`.
    async fn handle(&self, tx: &mut PgConnection, event: &IncomingEvent) -> Result<(), HandlerError>;
}

/// Tuning of a consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Kafka consumer group, also the inbox's consumer name.
    pub group: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Attempts for a transiently failing record before it is dead-lettered.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles per attempt.
    pub retry_backoff: Duration,
    /// How long handled ce_ids are remembered.
    pub inbox_retention: Duration,
    /// Static membership id (`group.instance.id`), if any.
    pub instance_id: Option<String>,
}

impl ConsumerSettings {
    /// Defaults: 5 attempts from 100 ms backoff, 7 days of inbox.
    pub fn new(group: &str, topics: &[&str]) -> Self {
        Self {
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            max_attempts: 5,
            retry_backoff: Duration::from_millis(100),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
            instance_id: None,
        }
    }
}

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler's effects committed.
    Applied,
    /// The ce_id was already in the inbox; nothing was done.
    Duplicate,
    /// The record went to the dead-letter topic.
    DeadLettered,
    /// A type this consumer does not handle; nothing was written.
    Ignored,
}

/// Creates the group's consumer: offsets are stored by hand after commit
/// and auto-committed in the background from what was stored.
pub fn consumer(brokers: &str, settings: &ConsumerSettings) -> Result<StreamConsumer, KafkaError> {
    let mut config = client_config(brokers);
    if let Some(instance) = settings.instance_id.as_deref().filter(|i| !i.is_empty()) {
        config.set("group.instance.id", instance);
    }
    let consumer: StreamConsumer = config
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        // Answer as soon as a record arrives rather than after the default 500 ms.
        .set("fetch.wait.max.ms", "20")
        .set("topic.metadata.refresh.interval.ms", "5000")
        .create()
        .map_err(|source| KafkaError::Client { context: "creating the Kafka consumer", source })?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|source| KafkaError::Client { context: "subscribing", source })?;
    Ok(consumer)
}

/// Consumes until `shutdown`: each record is handled, deduplicated or
/// dead-lettered before its offset is stored. Commits offsets on the way out.
pub async fn run_consumer(
    pool: PgPool,
    consumer: StreamConsumer,
    dlq_producer: FutureProducer,
    handler: impl EventHandler,
    settings: ConsumerSettings,
    shutdown: Shutdown,
) {
    let purge = tokio::spawn(purge_inbox(pool.clone(), settings.clone(), shutdown.clone()));
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            received = consumer.recv() => received,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(group = settings.group, %error, "Kafka receive failed");
                if !sleep_or_shutdown(Duration::from_millis(500), &shutdown).await {
                    break;
                }
                continue;
            }
        };
        let span = consume_span(&settings.group, &message);
        let processed = tracing::Instrument::instrument(
            process(&pool, &dlq_producer, &handler, &settings, &message, &shutdown),
            span,
        )
        .await;
        match processed {
            Some(outcome) => {
                tracing::debug!(group = settings.group, ?outcome, offset = message.offset(), "record done");
                let outcome_name = match outcome {
                    Outcome::Applied => "applied",
                    Outcome::Duplicate => "duplicate",
                    Outcome::DeadLettered => "dead_lettered",
                    Outcome::Ignored => "ignored",
                };
                metrics::counter!("consumer_records_total", "group" => settings.group.clone(), "outcome" => outcome_name)
                    .increment(1);
                if let Some(age) = message.timestamp().to_millis().map(|ms| chrono::Utc::now().timestamp_millis() - ms)
                {
                    metrics::histogram!("consumer_lag_seconds", "group" => settings.group.clone())
                        .record(age.max(0) as f64 / 1000.0);
                }
                if let Err(error) = consumer.store_offset_from_message(&message) {
                    tracing::warn!(%error, "storing the consumer offset");
                }
            }
            // Shutdown mid-retry: leave the offset so the record is redelivered.
            None => break,
        }
    }
    if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(%error, "committing offsets on shutdown");
    }
    purge.abort();
    tracing::info!(group = settings.group, "consumer stopped");
}

/// The consumer span of one record, child of the producer's trace context.
fn consume_span(group: &str, message: &BorrowedMessage<'_>) -> tracing::Span {
    let headers = CloudEventHeaders::from_kafka(message.headers()).unwrap_or_default();
    let span = tracing::info_span!(
        "consume",
        otel.name = %format!("{group} consume {}", headers.event_type),
        otel.kind = "consumer",
        messaging.consumer.group = group,
        messaging.destination = message.topic(),
        ce_type = %headers.event_type,
        ce_id = %headers.id,
        trace_id = tracing::field::Empty,
    );
    crate::trace_context::adopt(&span, crate::trace_context::from_traceparent(headers.traceparent.as_deref()));
    span
}

/// Handles one record to a final outcome; `None` only if shutdown interrupted it.
pub async fn process(
    pool: &PgPool,
    dlq_producer: &FutureProducer,
    handler: &impl EventHandler,
    settings: &ConsumerSettings,
    message: &BorrowedMessage<'_>,
    shutdown: &Shutdown,
) -> Option<Outcome> {
    let event = match to_incoming(message) {
        Ok(event) => event,
        Err(reason) => {
            return dead_letter(dlq_producer, settings, message, &reason, shutdown).await;
        }
    };
    if !handler.wants(&event.headers.event_type) {
        return Some(Outcome::Ignored);
    }
    let mut backoff = settings.retry_backoff;
    for attempt in 1..=settings.max_attempts {
        match handle_once(pool, handler, &settings.group, &event).await {
            Ok(outcome) => return Some(outcome),
            Err(HandlerError::Poison(reason)) => {
                return dead_letter(dlq_producer, settings, message, &reason, shutdown).await;
            }
            Err(HandlerError::Transient(error)) if attempt == settings.max_attempts => {
                let reason = format!("failed {attempt} times, last: {error:#}");
                return dead_letter(dlq_producer, settings, message, &reason, shutdown).await;
            }
            Err(HandlerError::Transient(error)) => {
                tracing::warn!(group = settings.group, ce_id = event.headers.id, attempt, error = %format!("{error:#}"), "handler failed; retrying");
                if !sleep_or_shutdown(backoff, shutdown).await {
                    return None;
                }
                backoff = backoff.saturating_mul(2);
            }
        }
    }
    None
}

fn to_incoming(message: &BorrowedMessage<'_>) -> Result<IncomingEvent, String> {
    let headers = CloudEventHeaders::from_kafka(message.headers())
        .ok_or_else(|| "record lacks the CloudEvents headers ce_id and ce_type".to_owned())?;
    Ok(IncomingEvent {
        topic: message.topic().to_owned(),
        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        headers,
        value: message.payload().unwrap_or_default().to_vec(),
    })
}

async fn handle_once(
    pool: &PgPool,
    handler: &impl EventHandler,
    group: &str,
    event: &IncomingEvent,
) -> Result<Outcome, HandlerError> {
    let event_id = event.event_id()?;
    let mut tx = pool.begin().await?;
    let fresh = sqlx::query("insert into inbox (consumer, event_id, topic) values ($1, $2, $3) on conflict do nothing")
        .bind(group)
        .bind(event_id)
        .bind(&event.topic)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if !fresh {
        tx.rollback().await?;
        return Ok(Outcome::Duplicate);
    }
    handler.handle(&mut tx, event).await?;
    tx.commit().await?;
    Ok(Outcome::Applied)
}

/// Publishes the record to `<topic>.dlq` with the reason and its origin,
/// retrying until the DLQ accepts it (the offset must not move before).
async fn dead_letter(
    producer: &FutureProducer,
    settings: &ConsumerSettings,
    message: &BorrowedMessage<'_>,
    reason: &str,
    shutdown: &Shutdown,
) -> Option<Outcome> {
    tracing::error!(
        group = settings.group,
        topic = message.topic(),
        offset = message.offset(),
        reason,
        "dead-lettering record"
    );
    let dlq = dlq_topic(message.topic());
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    loop {
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for h in original.iter() {
                headers = headers.insert(Header { key: h.key, value: h.value });
            }
        }
        headers = headers
            .insert(Header { key: "dlq_reason", value: Some(reason) })
            .insert(Header { key: "dlq_consumer", value: Some(settings.group.as_str()) })
            .insert(Header { key: "dlq_source_topic", value: Some(message.topic()) })
            .insert(Header { key: "dlq_source_partition", value: Some(partition.as_str()) })
            .insert(Header { key: "dlq_source_offset", value: Some(offset.as_str()) });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&dlq).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        match producer.send(record, Timeout::After(Duration::from_secs(10))).await {
            Ok(_) => {
                metrics::counter!("dlq_records_total", "group" => settings.group.clone(), "topic" => dlq.clone())
                    .increment(1);
                return Some(Outcome::DeadLettered);
            }
            Err((error, _)) => {
                tracing::warn!(%error, dlq, "dead-letter publish failed; retrying");
                if !sleep_or_shutdown(Duration::from_secs(1), shutdown).await {
                    return None;
                }
            }
        }
    }
}

async fn purge_inbox(pool: PgPool, settings: ConsumerSettings, shutdown: Shutdown) {
    let retention = chrono::Duration::from_std(settings.inbox_retention).unwrap_or(chrono::Duration::days(7));
    loop {
        let purged = sqlx::query("delete from inbox where consumer = $1 and processed_at < now() - $2::interval")
            .bind(&settings.group)
            .bind(format!("{} seconds", retention.num_seconds()))
            .execute(&pool)
            .await;
        match purged {
            Ok(done) if done.rows_affected() > 0 => {
                tracing::info!(group = settings.group, purged = done.rows_affected(), "purged old inbox rows");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "purging the inbox"),
        }
        if !sleep_or_shutdown(Duration::from_secs(3600), &shutdown).await {
            return;
        }
    }
}
