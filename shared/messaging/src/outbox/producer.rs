//! The relay's Kafka producer and how a batch is sent on it.

use std::time::Duration;

use rdkafka::{
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
};

use super::OutgoingRecord;
use crate::kafka::CloudEventHeaders;

/// The relay's Kafka producer, built on first use, rebuilt after a fatal
/// error, and let go after a while with nothing to send (an idle
/// librdkafka producer still costs its polling thread's wake-ups).
pub struct RelayProducer {
    brokers: String,
    current: Option<FutureProducer>,
    last_sent: tokio::time::Instant,
}

/// How long the relay keeps a producer it has nothing to send with.
const KEEP_IDLE_PRODUCER: Duration = Duration::from_secs(30);

impl RelayProducer {
    /// A producer for `brokers`, built lazily.
    pub fn new(brokers: &str) -> Self {
        Self { brokers: brokers.to_owned(), current: None, last_sent: tokio::time::Instant::now() }
    }

    pub(super) fn get(&mut self) -> Result<&FutureProducer, crate::kafka::KafkaError> {
        let producer = match self.current.take() {
            Some(producer) => producer,
            None => crate::kafka::producer(&self.brokers)?,
        };
        self.last_sent = tokio::time::Instant::now();
        Ok(self.current.insert(producer))
    }

    /// Lets the producer go (off the async workers) after a while unused.
    pub(super) fn let_go_if_idle(&mut self) {
        if self.last_sent.elapsed() >= KEEP_IDLE_PRODUCER {
            if let Some(old) = self.current.take() {
                tokio::task::spawn_blocking(move || drop(old));
            }
        }
    }

    pub(super) fn rebuild(&mut self, relay: &str, why: &str) {
        tracing::warn!(relay, why, "rebuilding the outbox relay's Kafka producer");
        metrics::counter!("outbox_producer_rebuilds_total", "relay" => relay.to_owned()).increment(1);
        // Destroying a producer waits on librdkafka's threads: off the async workers.
        if let Some(old) = self.current.take() {
            tokio::task::spawn_blocking(move || drop(old));
        }
    }

    /// Waits (on the blocking pool) for what is queued to be delivered.
    pub(super) async fn flush(&mut self) {
        if let Some(producer) = self.current.take() {
            let flushed = tokio::task::spawn_blocking(move || producer.flush(Timeout::After(Duration::from_secs(10))));
            if let Ok(Err(error)) = flushed.await {
                tracing::warn!(%error, "flushing the producer on shutdown");
            }
        }
    }
}

/// How a batch went.
pub(super) enum Delivery {
    /// Every record was acknowledged.
    All,
    /// Some record was not; `fatal` if the producer can never send again.
    Failed { fatal: bool },
    /// An event cannot be turned into a record (a bug: the relay stalls loudly).
    Unmappable,
}

/// Errors after which librdkafka's idempotent producer never sends again.
fn is_fatal(producer: &FutureProducer, error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    producer.client().fatal_error().is_some()
        || matches!(
            error.rdkafka_error_code(),
            Some(
                C::Fatal
                    | C::ProducerFenced
                    | C::InvalidProducerEpoch
                    | C::InvalidProducerIdMapping
                    | C::OutOfOrderSequenceNumber
                    | C::UnknownProducerId
                    | C::DuplicateSequenceNumber
            )
        )
}

/// Enqueues `records` and returns the wait for all their delivery reports;
/// on any failure the caller sends again from its checkpoint (duplicates
/// allowed).
pub(super) fn send_batch(
    producer: &FutureProducer,
    records: &[(CloudEventHeaders, OutgoingRecord)],
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Delivery> + Send>> {
    let mut deliveries = Vec::with_capacity(records.len());
    for (headers, record) in records {
        let sent = producer.send_result(
            FutureRecord::to(&record.topic).key(&record.key).payload(&record.value).headers(headers.to_kafka()),
        );
        match sent {
            Ok(delivery) => deliveries.push(delivery),
            Err((error, _)) => {
                tracing::warn!(%error, "outbox relay could not enqueue a record; retrying the batch");
                let fatal = is_fatal(producer, &error);
                return Box::pin(std::future::ready(Delivery::Failed { fatal }));
            }
        }
    }
    let producer = producer.clone();
    Box::pin(async move {
        let mut all_delivered = true;
        let mut fatal = false;
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => {
                    tracing::warn!(%error, "Kafka delivery failed; the batch will be sent again");
                    fatal |= is_fatal(&producer, &error);
                    all_delivered = false;
                }
                Err(_) => all_delivered = false,
            }
        }
        if all_delivered {
            Delivery::All
        } else {
            Delivery::Failed { fatal }
        }
    })
}
