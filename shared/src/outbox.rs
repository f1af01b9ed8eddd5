//! The transactional outbox relay: publishes every committed event of the
//! local event store to Kafka, at least once and in order per key.
//!
//! The `events` table is the outbox. The relay is a checkpointed reader of
//! the global log (see `global_log` for why it can never skip an event). It
//! keeps up to four batches in flight, reading and sending the next while
//! the broker acknowledges the earlier ones, and moves its checkpoint only
//! over batches that are acknowledged with all before them, so a crash or
//! a broker outage means "send again", never "lost". Only one relay per database is active: leadership is a
//! PostgreSQL session advisory lock, released by the server if the holder
//! dies.
//!
//! One booking's events are never reordered, under any failure: a record
//! is handed to Kafka only once every earlier record of its key has been
//! acknowledged. A send that fails is sent again from the checkpoint, so a
//! consumer may see an event a second time (it dedupes on `ce_id`, and its
//! `ce_sequence` is not above what it saw), but never an event before the
//! one that precedes it (`ce_sequence` never skips).
//!
//! The relay never stalls on a broken producer: librdkafka's idempotent
//! producer turns some failures into a permanent state (fenced, epoch or
//! sequence errors) in which every later send fails. On such a fatal error,
//! or after a few failed batches in a row, the relay drops its producer,
//! builds a new one and sends again from its checkpoint.

use std::time::Duration;

use rdkafka::{
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
};
use sqlx::{PgConnection, PgPool};

use crate::{
    event_store::StoredEvent,
    global_log::{self, LogPosition, WakeUp},
    kafka::CloudEventHeaders,
    shutdown::{sleep_or_shutdown, Shutdown},
};

/// A Kafka record derived from a stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    /// Destination topic.
    pub topic: String,
    /// Partition key (the booking id).
    pub key: String,
    /// CloudEvents `ce_type`.
    pub ce_type: String,
    /// CloudEvents `ce_subject`.
    pub subject: String,
    /// The encoded integration event.
    pub value: Vec<u8>,
}

impl OutgoingRecord {
    /// A record keyed, and with the subject, `key` (the booking id).
    pub fn keyed(topic: &str, key: String, ce_type: String, value: Vec<u8>) -> Self {
        Self { topic: topic.to_owned(), subject: key.clone(), key, ce_type, value }
    }
}

/// The domain event of `stored` if it belongs to aggregate `A`'s streams
/// (`None` for other streams), decoded; a mapper's first step.
pub fn own_event<A: crate::aggregate::Aggregate>(stored: &StoredEvent) -> Result<Option<A::Event>, MappingError> {
    if stored.stream_type != A::STREAM_TYPE {
        return Ok(None);
    }
    stored.decode().map(Some).map_err(|e| MappingError {
        event_id: stored.event_id,
        event_type: stored.event_type.clone(),
        reason: e.to_string(),
    })
}

/// Maps stored domain events to the public integration events on Kafka.
pub trait IntegrationMapper: Send + Sync + 'static {
    /// The record to publish for `event`, or `None` for an internal event.
    fn to_record(&self, event: &StoredEvent) -> Result<Option<OutgoingRecord>, MappingError>;
}

/// A stored event that cannot be turned into its integration event.
#[derive(Debug, thiserror::Error)]
#[error("mapping event {event_id} ({event_type}): {reason}")]
pub struct MappingError {
    /// The event.
    pub event_id: uuid::Uuid,
    /// Its type.
    pub event_type: String,
    /// What is wrong.
    pub reason: String,
}

/// Tuning of the relay.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Checkpoint name (one per service database).
    pub name: String,
    /// CloudEvents `ce_source`, e.g. `/booking-service`.
    pub source: String,
    /// Events read and sent per batch.
    pub batch_size: i64,
    /// Longest wait between looks at the log when no wake-up arrives (this
    /// process's commits and other processes' notifications wake it at once).
    pub poll_interval: Duration,
    /// Pause before retrying a batch whose delivery failed.
    pub retry_backoff: Duration,
    /// Failed batches in a row after which the producer is rebuilt even
    /// without a fatal error.
    pub rebuild_after_failures: u32,
}

impl RelaySettings {
    /// Defaults for the relay of the service whose CloudEvents source is `source`.
    pub fn new(name: &str, source: &str) -> Self {
        Self {
            name: name.to_owned(),
            source: source.to_owned(),
            batch_size: 500,
            poll_interval: Duration::from_secs(5),
            retry_backoff: Duration::from_millis(500),
            rebuild_after_failures: 3,
        }
    }
}

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

    fn get(&mut self) -> Result<&FutureProducer, crate::kafka::KafkaError> {
        let producer = match self.current.take() {
            Some(producer) => producer,
            None => crate::kafka::producer(&self.brokers)?,
        };
        self.last_sent = tokio::time::Instant::now();
        Ok(self.current.insert(producer))
    }

    /// Lets the producer go (off the async workers) after a while unused.
    fn let_go_if_idle(&mut self) {
        if self.last_sent.elapsed() >= KEEP_IDLE_PRODUCER {
            if let Some(old) = self.current.take() {
                tokio::task::spawn_blocking(move || drop(old));
            }
        }
    }

    fn rebuild(&mut self, relay: &str, why: &str) {
        tracing::warn!(relay, why, "rebuilding the outbox relay's Kafka producer");
        metrics::counter!("outbox_producer_rebuilds_total", "relay" => relay.to_owned()).increment(1);
        // Destroying a producer waits on librdkafka's threads: off the async workers.
        if let Some(old) = self.current.take() {
            tokio::task::spawn_blocking(move || drop(old));
        }
    }

    /// Waits (on the blocking pool) for what is queued to be delivered.
    async fn flush(&mut self) {
        if let Some(producer) = self.current.take() {
            let flushed = tokio::task::spawn_blocking(move || producer.flush(Timeout::After(Duration::from_secs(10))));
            if let Ok(Err(error)) = flushed.await {
                tracing::warn!(%error, "flushing the producer on shutdown");
            }
        }
    }
}

/// Publishes the event store to Kafka until `shutdown`, then flushes.
/// `leading` is true while this relay is the database's active publisher
/// (its process then needs no notification of its own commits).
pub async fn run_relay(
    pool: PgPool,
    mut producer: RelayProducer,
    mapper: impl IntegrationMapper,
    settings: RelaySettings,
    leading: std::sync::Arc<std::sync::atomic::AtomicBool>,
    shutdown: Shutdown,
) {
    let lock_key = crate::fnv::advisory_key(&format!("outbox-relay:{}", settings.name));
    let mut wake = WakeUp::listening(&pool, settings.poll_interval).await;
    while !shutdown.is_cancelled() {
        let Some(leader) = acquire_leadership(&pool, lock_key, &shutdown).await else {
            break;
        };
        tracing::info!(relay = settings.name, "outbox relay is the active publisher");
        leading.store(true, std::sync::atomic::Ordering::Relaxed);
        let published =
            publish_while_leader(&pool, &mut producer, &mapper, &settings, &mut wake, leader, &shutdown).await;
        leading.store(false, std::sync::atomic::Ordering::Relaxed);
        if let Err(error) = published {
            tracing::error!(relay = settings.name, %error, "outbox relay interrupted; resuming from its checkpoint");
            if !sleep_or_shutdown(settings.retry_backoff, &shutdown).await {
                break;
            }
        }
    }
    producer.flush().await;
    tracing::info!(relay = settings.name, "outbox relay stopped");
}

/// Waits until this process holds the relay's advisory lock; `None` on
/// shutdown. The lock lives on a connection detached from the pool, so
/// whatever ends the relay (shutdown, abort, crash) closes the session and
/// releases the lock; a pooled connection would keep it after an abort.
async fn acquire_leadership(pool: &PgPool, key: i64, shutdown: &Shutdown) -> Option<PgConnection> {
    loop {
        let attempt = async {
            let mut conn = pool.acquire().await?.detach();
            let locked: bool =
                sqlx::query_scalar("select pg_try_advisory_lock($1)").bind(key).fetch_one(&mut conn).await?;
            Ok::<_, sqlx::Error>(locked.then_some(conn))
        };
        match attempt.await {
            Ok(Some(conn)) => return Some(conn),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "outbox relay cannot reach PostgreSQL"),
        }
        if !sleep_or_shutdown(Duration::from_secs(1), shutdown).await {
            return None;
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event store: {0}")]
    Store(#[from] crate::event_store::EventStoreError),
    #[error("leadership lost")]
    LeadershipLost,
}

/// How often an idle relay proves its leadership connection alive.
const PROVE_LEADERSHIP_EVERY: Duration = Duration::from_secs(10);

/// Batches sent and not yet fully acknowledged at once: the relay reads and
/// sends the next batch while the broker acknowledges the earlier ones.
const MAX_BATCHES_IN_FLIGHT: usize = 4;

/// A sent batch: where the checkpoint moves once all of it is acknowledged,
/// when its events were recorded (for the publish-latency histogram), the
/// keys it holds records of, and its delivery.
struct SentBatch {
    last: LogPosition,
    recorded: Vec<chrono::DateTime<chrono::Utc>>,
    keys: Vec<String>,
    delivery: std::pin::Pin<Box<dyn std::future::Future<Output = Delivery> + Send>>,
}

/// Records sent and not yet acknowledged, by key: a key's next record
/// waits until its count is back to zero.
#[derive(Default)]
struct Unacknowledged(std::collections::HashMap<String, usize>);

impl Unacknowledged {
    fn holds(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    fn sent(&mut self, keys: &[String]) {
        for key in keys {
            *self.0.entry(key.clone()).or_default() += 1;
        }
    }

    fn acknowledged(&mut self, keys: &[String]) {
        for key in keys {
            if let Some(count) = self.0.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    self.0.remove(key);
                }
            }
        }
    }
}

async fn publish_while_leader(
    pool: &PgPool,
    producer: &mut RelayProducer,
    mapper: &impl IntegrationMapper,
    settings: &RelaySettings,
    wake: &mut WakeUp,
    mut leader: PgConnection,
    shutdown: &Shutdown,
) -> Result<(), RelayError> {
    let mut checkpoint = {
        let mut conn = pool.acquire().await?;
        global_log::load_checkpoint(&mut conn, &settings.name).await?
    };
    // Everything up to `sent` is in `in_flight` or acknowledged; the
    // checkpoint only moves over a batch once it and all before it are
    // acknowledged (the highest contiguous ack).
    let mut sent = checkpoint;
    let mut in_flight: std::collections::VecDeque<SentBatch> = std::collections::VecDeque::new();
    let mut unacknowledged = Unacknowledged::default();
    // The next event's key has a record in flight: read again only after an ack.
    let mut blocked = false;
    let mut failures = 0;
    let mut last_proof = tokio::time::Instant::now();
    while !shutdown.is_cancelled() {
        if in_flight.len() < MAX_BATCHES_IN_FLIGHT && !blocked {
            let batch = {
                let mut conn = pool.acquire().await?;
                let read = global_log::read_after(&mut conn, sent, settings.batch_size).await?;
                wake.held_back(read.held_back);
                read.events
            };
            if !batch.is_empty() {
                let ready = ready_records(mapper, settings, &batch, &unacknowledged);
                blocked = ready.blocked;
                let Some(last) = ready.upto.checked_sub(1).and_then(|i| batch.get(i)) else { continue };
                let last = LogPosition::of(last);
                let keys: Vec<String> = ready.records.iter().map(|(_, record)| record.key.clone()).collect();
                let delivery = match (ready.unmappable, producer.get()) {
                    (true, _) => Box::pin(std::future::ready(Delivery::Unmappable)),
                    (false, Ok(current)) => send_batch(current, &ready.records),
                    (false, Err(error)) => {
                        tracing::warn!(%error, "outbox relay cannot build a Kafka producer");
                        Box::pin(std::future::ready(Delivery::Failed { fatal: false }))
                    }
                };
                unacknowledged.sent(&keys);
                in_flight.push_back(SentBatch {
                    last,
                    recorded: batch.iter().take(ready.upto).map(|e| e.recorded_at).collect(),
                    keys,
                    delivery,
                });
                sent = last;
                continue;
            }
        }
        let room = in_flight.len() < MAX_BATCHES_IN_FLIGHT && !blocked;
        let Some(head) = in_flight.front_mut() else {
            // Idle: prove the lock connection is alive now and then, then sleep until woken.
            blocked = false;
            producer.let_go_if_idle();
            if last_proof.elapsed() >= PROVE_LEADERSHIP_EVERY {
                sqlx::query("select 1").execute(&mut leader).await.map_err(|_| RelayError::LeadershipLost)?;
                last_proof = tokio::time::Instant::now();
            }
            tokio::select! {
                () = wake.wait() => {}
                () = shutdown.cancelled() => {}
            }
            continue;
        };
        let delivered = tokio::select! {
            delivered = &mut head.delivery => Some(delivered),
            () = wake.wait(), if room => None,
            () = shutdown.cancelled() => None,
        };
        match delivered {
            // New events committed (or shutdown): send them beside the head.
            None => continue,
            Some(Delivery::All) => {
                failures = 0;
                blocked = false;
                let Some(done) = in_flight.pop_front() else { continue };
                unacknowledged.acknowledged(&done.keys);
                let mut conn = pool.acquire().await?;
                global_log::save_checkpoint(&mut conn, &settings.name, done.last).await?;
                checkpoint = done.last;
                record_published(&mut conn, settings, checkpoint, &done.recorded).await?;
            }
            // Never skip: send again from the checkpoint (what followed the
            // failed batch may arrive twice). A record that cannot be mapped
            // stalls the relay loudly instead.
            Some(failed) => {
                in_flight.clear();
                unacknowledged = Unacknowledged::default();
                blocked = false;
                sent = checkpoint;
                if let Delivery::Failed { fatal } = failed {
                    failures += 1;
                    if fatal {
                        producer.rebuild(&settings.name, "fatal producer error");
                        failures = 0;
                    } else if failures >= settings.rebuild_after_failures {
                        producer.rebuild(&settings.name, "batches keep failing");
                        failures = 0;
                    }
                }
                if !sleep_or_shutdown(settings.retry_backoff, shutdown).await {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Publish latency of the events of an acknowledged batch, and the backlog.
async fn record_published(
    conn: &mut PgConnection,
    settings: &RelaySettings,
    checkpoint: LogPosition,
    recorded: &[chrono::DateTime<chrono::Utc>],
) -> Result<(), sqlx::Error> {
    let now = chrono::Utc::now();
    for at in recorded {
        let age = (now - *at).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!("outbox_publish_seconds", "relay" => settings.name.clone()).record(age);
    }
    let head: Option<i64> = sqlx::query_scalar("select max(global_position) from events").fetch_one(conn).await?;
    let backlog = head.unwrap_or(0).saturating_sub(checkpoint.position).max(0) as f64;
    metrics::gauge!("outbox_backlog_events", "relay" => settings.name.clone()).set(backlog);
    Ok(())
}

/// How a batch went.
enum Delivery {
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

/// The records a batch may send now, in order: it ends before the first
/// event whose key still has a record in flight (earlier in this batch or
/// in an unacknowledged one), so a key's records are acknowledged one after
/// another and can never arrive out of order.
struct Ready {
    /// Headers and record of each published event taken.
    records: Vec<(CloudEventHeaders, OutgoingRecord)>,
    /// How many events of the batch are taken (published or not).
    upto: usize,
    /// The batch ended early at an event whose key is busy.
    blocked: bool,
    /// An event cannot be mapped (a bug): the relay stalls on it loudly.
    unmappable: bool,
}

fn ready_records(
    mapper: &impl IntegrationMapper,
    settings: &RelaySettings,
    batch: &[StoredEvent],
    unacknowledged: &Unacknowledged,
) -> Ready {
    let mut ready = Ready { records: Vec::with_capacity(batch.len()), upto: 0, blocked: false, unmappable: false };
    let mut taken = std::collections::HashSet::new();
    for event in batch {
        match mapper.to_record(event) {
            // The domain says which events are published (and numbers them);
            // the mapper must agree, or consumers would see gaps.
            Ok(record) if record.is_some() != event.sequence.is_some() => {
                tracing::error!(
                    event_id = %event.event_id,
                    event_type = event.event_type,
                    mapped = record.is_some(),
                    "outbox relay stalled: the mapper and the domain disagree on whether this event is published"
                );
                ready.unmappable = true;
                ready.upto += 1;
                return ready;
            }
            Ok(Some(record)) => {
                if unacknowledged.holds(&record.key) || !taken.insert(record.key.clone()) {
                    ready.blocked = true;
                    return ready;
                }
                let headers = CloudEventHeaders {
                    id: event.event_id.to_string(),
                    source: settings.source.clone(),
                    event_type: record.ce_type.clone(),
                    time: CloudEventHeaders::format_time(event.recorded_at),
                    subject: record.subject.clone(),
                    traceparent: event.metadata.traceparent.clone(),
                    correlation_id: event.metadata.correlation_id.clone(),
                    causation_id: event.metadata.causation_id.clone(),
                    sequence: event.sequence,
                    position: event.log_position,
                };
                ready.records.push((headers, record));
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, "outbox relay stalled on an unmappable event");
                ready.unmappable = true;
                ready.upto += 1;
                return ready;
            }
        }
        ready.upto += 1;
    }
    ready
}

/// Enqueues `records` and returns the wait for all their delivery reports;
/// on any failure the caller sends again from its checkpoint (duplicates
/// allowed).
fn send_batch(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Publishes every event, keyed by its stream.
    struct ByStream;

    impl IntegrationMapper for ByStream {
        fn to_record(&self, event: &StoredEvent) -> Result<Option<OutgoingRecord>, MappingError> {
            Ok((event.event_type != "Internal")
                .then(|| OutgoingRecord::keyed("t", event.stream_id.clone(), event.event_type.clone(), Vec::new())))
        }
    }

    fn event(stream: &str, event_type: &str, position: i64) -> StoredEvent {
        let published = event_type != "Internal";
        StoredEvent {
            global_position: position,
            tx_id: position,
            event_id: uuid::Uuid::now_v7(),
            stream_type: "test".into(),
            stream_id: stream.into(),
            stream_version: 1,
            sequence: published.then_some(1),
            log_position: Some(position << 20),
            event_type: event_type.into(),
            schema_version: 1,
            payload: serde_json::Value::Null,
            metadata: crate::event_store::EventMetadata::default(),
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_batch_ends_before_the_second_record_of_a_key_and_before_a_key_still_in_flight() {
        let settings = RelaySettings::new("relay", "/test");
        let batch = [event("a", "E", 1), event("b", "Internal", 2), event("b", "E", 3), event("a", "E", 4)];
        let ready = ready_records(&ByStream, &settings, &batch, &Unacknowledged::default());
        let keys: Vec<&str> = ready.records.iter().map(|(_, r)| r.key.as_str()).collect();
        assert_eq!((keys, ready.upto, ready.blocked), (vec!["a", "b"], 3, true), "a's second record waits");
        assert_eq!(ready.records[0].0.position, Some(1 << 20));

        let mut in_flight = Unacknowledged::default();
        in_flight.sent(&["b".to_owned()]);
        let ready = ready_records(&ByStream, &settings, &batch, &in_flight);
        assert_eq!((ready.records.len(), ready.upto, ready.blocked), (1, 2, true), "b waits for its ack");
        in_flight.acknowledged(&["b".to_owned()]);
        assert!(!in_flight.holds("b"));
    }

    #[test]
    fn an_event_published_by_the_mapper_but_not_numbered_by_the_domain_stalls_the_relay() {
        let settings = RelaySettings::new("relay", "/test");
        let mut unnumbered = event("a", "E", 1);
        unnumbered.sequence = None;
        let ready = ready_records(&ByStream, &settings, &[unnumbered], &Unacknowledged::default());
        assert!(ready.unmappable && ready.records.is_empty());
    }
}
