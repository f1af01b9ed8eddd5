//! Dead letters: a record that can never be handled goes to `<topic>.dlq`
//! with the reason and where it came from, so its partition moves on and a
//! person can look at it (`ticketing redrive-dlq` sends it back once fixed).

use std::time::Duration;

use rdkafka::{
    message::{Header, Headers, Message, OwnedHeaders, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};

use super::{settings::ConsumerSettings, Outcome};
use edge::shutdown::{sleep_or_shutdown, Shutdown};

use crate::kafka::{dlq_topic, KafkaError};

/// The producer dead letters go through: built when the first one comes
/// and let go after a while without any, since an idle librdkafka producer
/// still costs its polling thread's wake-ups.
pub struct DeadLetterProducer {
    brokers: String,
    current: std::sync::Mutex<Option<(FutureProducer, tokio::time::Instant)>>,
}

/// How long an unused dead-letter producer is kept.
const KEEP_IDLE: Duration = Duration::from_secs(60);

impl DeadLetterProducer {
    /// A producer for `brokers`, not built yet.
    pub fn new(brokers: &str) -> Self {
        Self { brokers: brokers.to_owned(), current: std::sync::Mutex::new(None) }
    }

    fn get(&self) -> Result<FutureProducer, KafkaError> {
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let producer = match current.take() {
            Some((producer, _)) => producer,
            None => crate::kafka::producer(&self.brokers)?,
        };
        *current = Some((producer.clone(), tokio::time::Instant::now()));
        Ok(producer)
    }

    /// Lets the producer go (off the async workers) once it sat unused for a minute.
    pub fn let_go_if_idle(&self) {
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref().is_some_and(|(_, used)| used.elapsed() >= KEEP_IDLE) {
            if let Some((producer, _)) = current.take() {
                tokio::task::spawn_blocking(move || drop(producer));
            }
        }
    }
}

/// Publishes the record to `<topic>.dlq` with the reason and its origin,
/// retrying until the DLQ accepts it (the offset must not move before);
/// `None` if shutdown came first.
pub async fn dead_letter(
    producer: &DeadLetterProducer,
    settings: &ConsumerSettings,
    message: &OwnedMessage,
    reason: &str,
    shutdown: &Shutdown,
) -> Option<Outcome> {
    tracing::error!(
        group = settings.group,
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
        reason,
        "dead-lettering record"
    );
    let dlq = dlq_topic(message.topic());
    loop {
        let headers = dead_letter_headers(message, &settings.group, reason);
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&dlq).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        let sent = match producer.get() {
            Ok(producer) => producer.send(record, Timeout::After(Duration::from_secs(10))).await.map_err(|(e, _)| e),
            Err(error) => Err(match error {
                KafkaError::Client { source, .. } => source,
                KafkaError::CreateTopic { code, .. } => rdkafka::error::KafkaError::AdminOp(code),
            }),
        };
        match sent {
            Ok(_) => {
                metrics::counter!("dlq_records_total", "group" => settings.group.clone(), "topic" => dlq.clone())
                    .increment(1);
                return Some(Outcome::DeadLettered);
            }
            Err(error) => {
                tracing::warn!(%error, dlq, "dead-letter publish failed; retrying");
                if !sleep_or_shutdown(Duration::from_secs(1), shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// The original headers plus `dlq_reason`, `dlq_consumer` and the source
/// topic, partition and offset.
fn dead_letter_headers(message: &OwnedMessage, consumer: &str, reason: &str) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for h in original.iter() {
            headers = headers.insert(Header { key: h.key, value: h.value });
        }
    }
    let (partition, offset) = (message.partition().to_string(), message.offset().to_string());
    headers
        .insert(Header { key: "dlq_reason", value: Some(reason) })
        .insert(Header { key: "dlq_consumer", value: Some(consumer) })
        .insert(Header { key: "dlq_source_topic", value: Some(message.topic()) })
        .insert(Header { key: "dlq_source_partition", value: Some(partition.as_str()) })
        .insert(Header { key: "dlq_source_offset", value: Some(offset.as_str()) })
}
