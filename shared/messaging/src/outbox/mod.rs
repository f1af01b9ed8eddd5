//! The transactional outbox relay: publishes every committed event of the
//! local event store to Kafka, at least once and in order per key.
//!
//! The `events` table is the outbox. The relay is a checkpointed reader of
//! the global log (see `global_log` for why it can never skip an event). It
//! reads what was committed while its last batch was being acknowledged as
//! one batch (a backlog goes as up to four full batches in flight), and
//! moves its checkpoint only over batches that are acknowledged with all
//! before them, so a crash or a broker outage means "send again", never
//! "lost". Only one relay per database is active: leadership is a
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
//!
//! | room | what it does |
//! |---|---|
//! | this file | what a service provides: the mapper from stored events to records, the relay's settings |
//! | `relay` | leadership, and the loop that reads the log, sends and moves the checkpoint |
//! | `order` | which records of a batch may go now, so a key's records never overtake each other |
//! | `producer` | the Kafka producer: built lazily, rebuilt when broken, let go when idle |

mod order;
mod producer;
mod relay;

use std::time::Duration;

use kernel::event_store::StoredEvent;

pub use producer::RelayProducer;
pub use relay::run_relay;

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
pub fn own_event<A: kernel::aggregate::Aggregate>(stored: &StoredEvent) -> Result<Option<A::Event>, MappingError> {
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

/// Why an event cannot be published as the relay publishes it.
#[derive(Debug, thiserror::Error)]
pub enum UnpublishableEvent {
    /// The mapper failed.
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// The mapper and the domain disagree on whether the event is public:
    /// the domain numbers (`sequence`) exactly the events it publishes.
    #[error("event {event_id} ({event_type}): the mapper says published = {mapped}, the domain the opposite")]
    Disagrees {
        /// The event.
        event_id: uuid::Uuid,
        /// Its type.
        event_type: String,
        /// Whether the mapper returned a record.
        mapped: bool,
    },
}

/// The record the relay publishes for `event`, `None` for an internal
/// one: the one rule the relay and the event feed share, so both publish
/// the same events with the same bytes.
pub fn published_record(
    mapper: &(impl IntegrationMapper + ?Sized),
    event: &StoredEvent,
) -> Result<Option<OutgoingRecord>, UnpublishableEvent> {
    let record = mapper.to_record(event)?;
    if record.is_some() != event.sequence.is_some() {
        return Err(UnpublishableEvent::Disagrees {
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            mapped: record.is_some(),
        });
    }
    Ok(record)
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

/// Makes the relay `name` publish the whole event store again, for a
/// broker that is new: the embedded broker of `ticketing dev` starts empty
/// each time, and events the relay handed to the broker of an earlier run
/// may never have been read. Consumers drop the repeats by `ce_id` (and
/// the domains ignore a fact they already know).
pub async fn publish_again_from_start(pool: &sqlx::PgPool, name: &str) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    kernel::global_log::save_checkpoint(&mut conn, name, kernel::LogPosition::default()).await
}
