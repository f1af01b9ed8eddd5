//! The Kafka side of a consumer: a client that reads exactly the partitions
//! this member leases (manual assignment, no group membership), the topics'
//! partitions, and a first start's offsets. Calls that wait on the broker
//! or on librdkafka's threads run on the blocking pool, never on the async
//! workers that serve requests (they start when called, and their futures
//! hold no borrow).

use std::{future::Future, sync::Arc, time::Duration};

use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    message::OwnedMessage,
    util::Timeout,
    Offset, TopicPartitionList,
};

use super::{leases::Partition, settings::ConsumerSettings};
use crate::kafka::{client_config_with, KafkaError};

/// How long a metadata or offset question may wait for the broker.
const BROKER_TIMEOUT: Duration = Duration::from_secs(3);

/// The consumer's client: offsets live in PostgreSQL (`consumer_partitions`),
/// so nothing is committed to Kafka and nothing auto-resets past a gap.
pub fn build(brokers: &str, settings: &ConsumerSettings) -> Result<StreamConsumer, KafkaError> {
    let fetch_wait = settings.fetch_wait.as_millis().to_string();
    client_config_with(brokers, &[("fetch.wait.max.ms", &fetch_wait), ("topic.metadata.refresh.interval.ms", "30000")])
        // Names the group whose committed offsets seed a first start; the
        // client never joins it.
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|source| KafkaError::Client { context: "creating the Kafka consumer", source })
}

/// Every partition of `topics`, sorted; `None` while the broker does not answer.
pub fn partitions(consumer: &Arc<StreamConsumer>, topics: &[String]) -> impl Future<Output = Option<Vec<Partition>>> {
    let (consumer, topics) = (Arc::clone(consumer), topics.to_vec());
    let asked = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        for topic in &topics {
            let metadata = match consumer.fetch_metadata(Some(topic), BROKER_TIMEOUT) {
                Ok(metadata) => metadata,
                Err(error) => {
                    tracing::debug!(%error, topic, "no partition metadata from the broker");
                    return None;
                }
            };
            for t in metadata.topics() {
                if let Some(error) = t.error() {
                    tracing::debug!(?error, topic = t.name(), "the broker reports an error for the topic");
                    return None;
                }
                all.extend(t.partitions().iter().map(|p| (t.name().to_owned(), p.id())));
            }
        }
        all.sort();
        Some(all)
    });
    async move { answered(asked.await) }
}

/// Where a first start begins: the offset the Kafka group committed before
/// offsets moved to PostgreSQL, else the beginning.
pub fn first_offset(consumer: &Arc<StreamConsumer>, partition: &Partition) -> impl Future<Output = Offset> {
    let consumer = Arc::clone(consumer);
    let mut list = TopicPartitionList::new();
    list.add_partition(&partition.0, partition.1);
    let asked = tokio::task::spawn_blocking(move || {
        let committed = consumer
            .committed_offsets(list, BROKER_TIMEOUT)
            .map_err(|error| tracing::warn!(%error, "no committed Kafka offset; starting at the beginning"))
            .ok()?;
        committed.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(at) if at >= 0 => Some(Offset::Offset(at)),
            _ => None,
        })
    });
    async move { answered(asked.await).unwrap_or(Offset::Beginning) }
}

/// The answer of a blocking broker call (a panic in it is logged, not lost).
fn answered<T>(joined: Result<Option<T>, tokio::task::JoinError>) -> Option<T> {
    joined.unwrap_or_else(|error| {
        tracing::error!(%error, "a blocking Kafka call failed");
        None
    })
}

/// Starts reading `partition` at `from`, unpaused.
pub fn assign(
    consumer: &Arc<StreamConsumer>,
    partition: &Partition,
    from: Offset,
) -> impl Future<Output = Result<(), KafkaError>> {
    let consumer = Arc::clone(consumer);
    let mut list = TopicPartitionList::new();
    let named = list.add_partition_offset(&partition.0, partition.1, from);
    let asked = tokio::task::spawn_blocking(move || {
        named.map_err(|source| KafkaError::Client { context: "naming a partition offset", source })?;
        consumer
            .incremental_assign(&list)
            .map_err(|source| KafkaError::Client { context: "assigning a partition", source })?;
        // librdkafka keeps an application's pause across assignments: a
        // partition paused under an earlier lease must read again.
        consumer.resume(&list).map_err(|source| KafkaError::Client { context: "resuming a partition", source })
    });
    async move {
        asked.await.map_err(|_| KafkaError::Client {
            context: "assigning a partition",
            source: rdkafka::error::KafkaError::Canceled,
        })?
    }
}

/// Stops reading `partition`.
pub fn unassign(consumer: &Arc<StreamConsumer>, partition: &Partition) -> impl Future<Output = ()> {
    let consumer = Arc::clone(consumer);
    let mut list = TopicPartitionList::new();
    list.add_partition(&partition.0, partition.1);
    let partition = partition.clone();
    let asked = tokio::task::spawn_blocking(move || consumer.incremental_unassign(&list));
    async move {
        if let Ok(Err(error)) = asked.await {
            tracing::warn!(%error, topic = partition.0, partition = partition.1, "unassigning a partition");
        }
    }
}

/// Stops fetching `message`'s partition until [`resume_after`].
pub fn pause(consumer: &StreamConsumer, message: &OwnedMessage) {
    use rdkafka::Message as _;
    let mut list = TopicPartitionList::new();
    list.add_partition(message.topic(), message.partition());
    if let Err(error) = consumer.pause(&list) {
        tracing::warn!(%error, topic = message.topic(), partition = message.partition(), "pausing a partition");
    }
}

/// Resumes a paused partition just after `message` (records fetched while
/// it was paused were skipped and are read again).
pub fn resume_after(consumer: &StreamConsumer, message: &OwnedMessage) {
    use rdkafka::Message as _;
    let (topic, partition) = (message.topic(), message.partition());
    if let Err(error) =
        consumer.seek(topic, partition, Offset::Offset(message.offset() + 1), Timeout::After(Duration::ZERO))
    {
        tracing::warn!(%error, topic, partition, "seeking past a retried record");
    }
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    if let Err(error) = consumer.resume(&list) {
        tracing::warn!(%error, topic, partition, "resuming a partition");
    }
}
