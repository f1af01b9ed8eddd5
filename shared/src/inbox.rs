//! The Kafka consumer side: every record is handled in one database
//! transaction together with its inbox row `(consumer, ce_id)`, so a
//! redelivered event is a no-op; the offset is stored only after that
//! transaction commits.
//!
//! Partitions are handled concurrently: each round takes what librdkafka
//! has fetched (up to 256 records) and runs one lane per partition, the
//! lanes side by side and each lane's records in order (a key lives in one
//! partition, so per-key order holds). A lane's records share one
//! transaction (up to 64), each with its inbox row; if any fails, the
//! transaction is rolled back and the lane runs record by record.
//!
//! Only poison is dead-lettered: a record that cannot be decoded or that
//! the handler rejects as invalid goes to `<topic>.dlq` with the reason,
//! and the partition moves on. A transient failure (database down, pool
//! timeout, serialization failure) pauses only its partition and is retried
//! with backoff for as long as it lasts: a Postgres restart must never cost
//! a paid customer their seat.
//!
//! Membership is dynamic by default: a restarted service joins as a new
//! member, and the survivors take over a dead member's partitions once its
//! session times out. A watchdog rebuilds a consumer that holds no
//! partition while its group has work, and reports it to readiness.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::{Header, Headers, Message, OwnedHeaders, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
    Offset, TopicPartitionList,
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    health::Signals,
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

    /// The metadata of events this one causes: its correlation id goes on,
    /// it becomes their causation, the trace continues, `actor` did it.
    pub fn caused_metadata(&self, actor: &str) -> crate::event_store::EventMetadata {
        crate::event_store::EventMetadata {
            correlation_id: self.headers.correlation_id.clone(),
            causation_id: Some(self.headers.id.clone()),
            traceparent: crate::trace_context::current_traceparent().or_else(|| self.headers.traceparent.clone()),
            actor: Some(actor.to_owned()),
        }
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

    /// Runs after `handle`'s transaction committed (wake whoever waits for
    /// its effects). Not run for duplicates or refused records.
    async fn committed(&self, _event: &IncomingEvent) {}
}

/// Tuning of a consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Kafka consumer group, also the inbox's consumer name.
    pub group: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Backoff before the first retry of a transiently failing record; doubles per attempt.
    pub retry_backoff: Duration,
    /// The longest backoff between retries (they go on for as long as the failure lasts).
    pub max_backoff: Duration,
    /// How long handled ce_ids are remembered.
    pub inbox_retention: Duration,
    /// Static membership id (`group.instance.id`), if any.
    pub instance_id: Option<String>,
    /// Kafka session timeout: a member silent this long is out of the group.
    pub session_timeout: Duration,
    /// A consumer that holds no partition this long while its group has
    /// work rebuilds itself (and readiness fails meanwhile).
    pub unassigned_limit: Duration,
    /// Partitions held by no live member this long make the consumer leave
    /// and rejoin its group, which re-forms it.
    pub orphaned_limit: Duration,
}

impl ConsumerSettings {
    /// Defaults: retries from 100 ms up to 5 s apart, 7 days of inbox,
    /// 45 s sessions (librdkafka's default: a broker that hangs for less
    /// keeps every member in its group), rebuild after two sessions without
    /// partitions or 5 s with orphaned partitions.
    pub fn new(group: &str, topics: &[&str]) -> Self {
        Self {
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            retry_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
            instance_id: None,
            session_timeout: Duration::from_secs(45),
            unassigned_limit: Duration::from_secs(90),
            orphaned_limit: Duration::from_secs(5),
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

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::DeadLettered => "dead_lettered",
            Self::Ignored => "ignored",
        }
    }
}

/// Creates the group's consumer: offsets are stored by hand after commit
/// and auto-committed in the background from what was stored. Membership
/// is dynamic unless `instance_id` is set.
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
        .set("session.timeout.ms", settings.session_timeout.as_millis().to_string())
        .set("heartbeat.interval.ms", (settings.session_timeout.as_millis() / 4).max(100).to_string())
        // Answer as soon as a record arrives rather than after the default 500 ms.
        .set("fetch.wait.max.ms", "20")
        .set("topic.metadata.refresh.interval.ms", "5000")
        .create()
        .map_err(|source| KafkaError::Client { context: "creating the Kafka consumer", source })?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|source| KafkaError::Client { context: "subscribing", source })?;
    Ok(consumer)
}

/// Why a consumer loop ended.
enum Ended {
    Shutdown,
    /// Left without partitions while the group had work: rebuild.
    Stalled,
}

/// A record whose handler failed transiently; its partition is paused
/// until it is handled.
struct Held {
    message: OwnedMessage,
    event: IncomingEvent,
    attempts: u32,
    backoff: Duration,
    next_try: tokio::time::Instant,
}

/// Consumes until `shutdown`: each record is handled, deduplicated or
/// dead-lettered before its offset is stored. A transient failure pauses
/// only its partition and is retried with backoff for as long as it lasts.
/// A consumer left without partitions while its group has work is rebuilt.
/// Commits offsets on the way out.
pub async fn run_consumer(
    pool: PgPool,
    brokers: String,
    handler: impl EventHandler,
    settings: ConsumerSettings,
    signals: Signals,
    shutdown: Shutdown,
) {
    let purge = tokio::spawn(purge_inbox(pool.clone(), settings.clone(), shutdown.clone()));
    let component = format!("consumer {}", settings.group);
    // Series alerts watch start at zero, so `increase` sees the first one.
    for topic in &settings.topics {
        metrics::counter!("dlq_records_total", "group" => settings.group.clone(), "topic" => dlq_topic(topic))
            .increment(0);
    }
    metrics::gauge!("consumer_paused_partitions", "group" => settings.group.clone()).set(0.0);
    while !shutdown.is_cancelled() {
        let built = consumer(&brokers, &settings).and_then(|c| Ok((c, crate::kafka::producer(&brokers)?)));
        let (kafka_consumer, dlq_producer) = match built {
            Ok(built) => built,
            Err(error) => {
                tracing::warn!(group = settings.group, %error, "cannot build the Kafka consumer; retrying");
                signals.problem(&component, error.to_string());
                if !sleep_or_shutdown(Duration::from_secs(1), &shutdown).await {
                    break;
                }
                continue;
            }
        };
        let kafka_consumer = Arc::new(kafka_consumer);
        let ended =
            consume(&pool, &kafka_consumer, &dlq_producer, &handler, &settings, &signals, &component, &shutdown).await;
        if let Err(error) = kafka_consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "committing offsets");
        }
        // Dropping it closes it (it leaves the group), polling until done: off the async workers.
        let _ = tokio::task::spawn_blocking(move || drop(kafka_consumer)).await;
        match ended {
            Ended::Shutdown => break,
            Ended::Stalled => {
                metrics::counter!("consumer_rebuilds_total", "group" => settings.group.clone()).increment(1);
                tracing::warn!(
                    group = settings.group,
                    "consumer left and rejoins its group: work was held by no live member"
                );
            }
        }
    }
    purge.abort();
    signals.ok(&component);
    tracing::info!(group = settings.group, "consumer stopped");
}

#[allow(clippy::too_many_arguments)]
async fn consume(
    pool: &PgPool,
    consumer: &Arc<StreamConsumer>,
    dlq_producer: &FutureProducer,
    handler: &impl EventHandler,
    settings: &ConsumerSettings,
    signals: &Signals,
    component: &str,
    shutdown: &Shutdown,
) -> Ended {
    let mut held: HashMap<(String, i32), Held> = HashMap::new();
    let mut unassigned_since = Some(tokio::time::Instant::now());
    let mut orphaned_since: Option<tokio::time::Instant> = None;
    let mut progress = ProgressWatch::default();
    let mut watchdog = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u64 = 0;
    let mut receive_errors = ErrorSummary::default();
    loop {
        let next_retry = held.values().map(|h| h.next_try).min();
        tokio::select! {
            () = shutdown.cancelled() => return Ended::Shutdown,
            _ = watchdog.tick() => {
                ticks += 1;
                let assigned = assigned_partitions(consumer);
                held.retain(|tp, _| assigned.contains(tp));
                metrics::gauge!("consumer_assigned_partitions", "group" => settings.group.clone()).set(assigned.len() as f64);
                metrics::gauge!("consumer_paused_partitions", "group" => settings.group.clone()).set(held.len() as f64);
                let mut stalled = None;
                if assigned.is_empty() {
                    let since = *unassigned_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= settings.unassigned_limit && group_has_work(consumer, settings).await {
                        stalled = Some("no partitions assigned while the group has work");
                    }
                } else {
                    unassigned_since = None;
                }
                // Partitions no live member holds: some brokers (tansu) drop a
                // dead member without re-forming the group, so the survivors
                // never get its partitions. Leaving and rejoining re-forms it.
                if ticks % 5 == 0 {
                    let (orphans, watched) = orphaned_partitions(consumer, settings, &assigned, progress).await;
                    progress = watched;
                    match orphans {
                        Some(orphans) if !orphans.is_empty() => {
                            let since = *orphaned_since.get_or_insert_with(tokio::time::Instant::now);
                            if since.elapsed() >= settings.orphaned_limit {
                                stalled = Some("partitions held by no live member of the group");
                            }
                        }
                        Some(_) => orphaned_since = None,
                        None => {
                            // The broker does not answer: rejoining cannot help,
                            // and librdkafka rejoins by itself once it is back.
                            orphaned_since = None;
                            unassigned_since = None;
                            stalled = None;
                        }
                    }
                }
                match stalled {
                    Some(why) => {
                        signals.problem(component, why);
                        return Ended::Stalled;
                    }
                    None if unassigned_since.is_none() && orphaned_since.is_none() => signals.ok(component),
                    None => {}
                }
            }
            () = sleep_until_opt(next_retry), if next_retry.is_some() => {
                let now = tokio::time::Instant::now();
                let due: Vec<(String, i32)> = held.iter().filter(|(_, h)| h.next_try <= now).map(|(tp, _)| tp.clone()).collect();
                for tp in due {
                    let Some(mut record) = held.remove(&tp) else { continue };
                    match try_record(pool, dlq_producer, handler, settings, &record.message, &record.event, shutdown).await {
                        Step::Done(outcome) => {
                            finish(consumer, settings, &record.message, outcome);
                            resume_after(consumer, &record.message);
                        }
                        Step::Retry(error, ()) => {
                            record.attempts += 1;
                            record.backoff = (record.backoff * 2).min(settings.max_backoff);
                            record.next_try = tokio::time::Instant::now() + record.backoff;
                            log_retry(settings, &record.event, record.attempts, &error);
                            held.insert(tp, record);
                        }
                        Step::Interrupted => return Ended::Shutdown,
                    }
                }
            }
            received = consumer.recv() => {
                // A round: this record and whatever librdkafka has already
                // fetched, one lane per partition. Lanes run concurrently
                // (partitions are independent; order is per key, and a key
                // lives in one partition); each lane runs its records in order.
                let mut round = vec![received.map(|m| m.detach())];
                while round.len() < MAX_ROUND {
                    match consumer.recv().now_or_never() {
                        Some(next) => round.push(next.map(|m| m.detach())),
                        None => break,
                    }
                }
                let mut lanes: Vec<((String, i32), Vec<OwnedMessage>)> = Vec::new();
                for received in round {
                    let message = match received {
                        Ok(message) => message,
                        Err(error) => {
                            // librdkafka queues an error event per failed attempt while
                            // the broker is away; each is stale once read, so drain them
                            // at once (waiting here would leave the consumer minutes
                            // behind its queue after an outage) and log a summary.
                            receive_errors.record(&settings.group, &error);
                            continue;
                        }
                    };
                    let tp = (message.topic().to_owned(), message.partition());
                    if held.contains_key(&tp) {
                        // Fetched before the pause took effect: read again after the held record.
                        continue;
                    }
                    match lanes.iter_mut().find(|(lane, _)| *lane == tp) {
                        Some((_, records)) => records.push(message),
                        None => lanes.push((tp, vec![message])),
                    }
                }
                let run = lanes.into_iter().map(|(tp, records)| async move {
                    (tp, run_lane(pool, dlq_producer, handler, settings, records, shutdown).await)
                });
                for (tp, results) in futures::future::join_all(run).await {
                    for (message, step) in results {
                        match step {
                            Step::Done(outcome) => finish(consumer, settings, &message, outcome),
                            Step::Retry(error, event) => {
                                log_retry(settings, &event, 1, &error);
                                pause(consumer, &message);
                                let backoff = settings.retry_backoff;
                                let next_try = tokio::time::Instant::now() + backoff;
                                held.insert(tp.clone(), Held { message, event, attempts: 1, backoff, next_try });
                            }
                            Step::Interrupted => return Ended::Shutdown,
                        }
                    }
                }
            }
        }
    }
}

/// Records drained from librdkafka's queue into one round at most.
const MAX_ROUND: usize = 256;

/// Records of a lane that share one transaction at most.
const MAX_TOGETHER: usize = 64;

/// One partition's records of a round, in order, until one must be retried
/// (the rest are read again once it succeeds) or shutdown comes.
async fn run_lane(
    pool: &PgPool,
    dlq_producer: &FutureProducer,
    handler: &impl EventHandler,
    settings: &ConsumerSettings,
    records: Vec<OwnedMessage>,
    shutdown: &Shutdown,
) -> Vec<(OwnedMessage, Step<IncomingEvent>)> {
    let mut results = Vec::with_capacity(records.len());
    let mut rest: std::collections::VecDeque<OwnedMessage> = records.into();
    while rest.len() > 1 {
        let chunk: Vec<OwnedMessage> = rest.drain(..rest.len().min(MAX_TOGETHER)).collect();
        match handle_together(pool, handler, settings, &chunk).await {
            Some(outcomes) => {
                results
                    .extend(chunk.into_iter().zip(outcomes).map(|(message, outcome)| (message, Step::Done(outcome))));
            }
            None => {
                // Record by record from this chunk on.
                for message in chunk.into_iter().rev() {
                    rest.push_front(message);
                }
                break;
            }
        }
    }
    for message in rest {
        let step = match to_incoming(&message) {
            Err(reason) => match dead_letter(dlq_producer, settings, &message, &reason, shutdown).await {
                Some(outcome) => Step::Done(outcome),
                None => Step::Interrupted,
            },
            Ok(event) => {
                let span = consume_span(&settings.group, &event, message.topic());
                let step = tracing::Instrument::instrument(
                    try_record(pool, dlq_producer, handler, settings, &message, &event, shutdown),
                    span,
                )
                .await;
                match step {
                    Step::Retry(error, ()) => Step::Retry(error, event),
                    Step::Done(outcome) => Step::Done(outcome),
                    Step::Interrupted => Step::Interrupted,
                }
            }
        };
        let go_on = matches!(step, Step::Done(_));
        results.push((message, step));
        if !go_on {
            break;
        }
    }
    results
}

/// The fast path of a lane: every record in one transaction, each with its
/// inbox row, in order. `None` when any record cannot be decoded or any
/// handler fails: the transaction is rolled back and the lane runs record
/// by record, where poison is dead-lettered and transient failures retried
/// exactly as before.
async fn handle_together(
    pool: &PgPool,
    handler: &impl EventHandler,
    settings: &ConsumerSettings,
    records: &[OwnedMessage],
) -> Option<Vec<Outcome>> {
    let mut events = Vec::with_capacity(records.len());
    for message in records {
        events.push((to_incoming(message).ok()?, message.topic()));
    }
    let mut tx = pool.begin().await.ok()?;
    let mut outcomes = Vec::with_capacity(events.len());
    for (event, topic) in &events {
        if !handler.wants(&event.headers.event_type) {
            outcomes.push(Outcome::Ignored);
            continue;
        }
        let span = consume_span(&settings.group, event, topic);
        let applied = tracing::Instrument::instrument(apply_in(&mut tx, handler, &settings.group, event), span).await;
        match applied {
            Ok(outcome) => outcomes.push(outcome),
            Err(_) => {
                let _ = tx.rollback().await;
                return None;
            }
        }
    }
    tx.commit().await.ok()?;
    crate::global_log::committed();
    for ((event, _), outcome) in events.iter().zip(&outcomes) {
        if *outcome == Outcome::Applied {
            handler.committed(event).await;
        }
    }
    Some(outcomes)
}

/// Logs receive errors at most every few seconds, with how many there were.
#[derive(Default)]
struct ErrorSummary {
    since_logged: u64,
    last_logged: Option<tokio::time::Instant>,
}

impl ErrorSummary {
    fn record(&mut self, group: &str, error: &rdkafka::error::KafkaError) {
        self.since_logged += 1;
        metrics::counter!("consumer_receive_errors_total", "group" => group.to_owned()).increment(1);
        if self.last_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
            tracing::warn!(group, %error, errors = self.since_logged, "Kafka receive failed");
            self.since_logged = 0;
            self.last_logged = Some(tokio::time::Instant::now());
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn log_retry(settings: &ConsumerSettings, event: &IncomingEvent, attempts: u32, error: &anyhow::Error) {
    metrics::counter!("consumer_retries_total", "group" => settings.group.clone()).increment(1);
    tracing::warn!(
        group = settings.group,
        ce_id = event.headers.id,
        attempts,
        error = %format!("{error:#}"),
        "handler failed transiently; its partition is paused and the record retried"
    );
}

/// The partitions this member holds now.
fn assigned_partitions(consumer: &StreamConsumer) -> HashSet<(String, i32)> {
    consumer
        .assignment()
        .map(|list| list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect())
        .unwrap_or_default()
}

/// Every partition of the subscribed topics.
fn all_partitions(consumer: &StreamConsumer, topics: &[String], timeout: Duration) -> Option<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout).ok()?;
        for t in metadata.topics() {
            for p in t.partitions() {
                list.add_partition(t.name(), p.id());
            }
        }
    }
    Some(list)
}

/// Committed offsets of partitions other members hold, with when each last
/// moved: a partition that lags and never moves is held by no live member.
#[derive(Debug, Default)]
struct ProgressWatch {
    last: HashMap<(String, i32), (i64, std::time::Instant)>,
}

/// The subscribed partitions that no live member of the group works on.
/// Where the broker describes member assignments (Kafka), they are exact;
/// where it only counts members (tansu), a lone member that lacks some
/// partitions knows they are orphaned; otherwise a partition someone else
/// holds whose committed offset lags and has not moved for a session
/// timeout counts as orphaned. `None` when the group cannot be described.
async fn orphaned_partitions(
    consumer: &Arc<StreamConsumer>,
    settings: &ConsumerSettings,
    assigned: &HashSet<(String, i32)>,
    watch: ProgressWatch,
) -> (Option<HashSet<(String, i32)>>, ProgressWatch) {
    let consumer = Arc::clone(consumer);
    let (group, topics, assigned) = (settings.group.clone(), settings.topics.clone(), assigned.clone());
    let stall_after = settings.session_timeout;
    let timeout = Duration::from_secs(3);
    let fallback = ProgressWatch::default();
    tokio::task::spawn_blocking(move || {
        let mut watch = watch;
        let orphans = (|| {
            let groups = consumer
                .fetch_group_list(Some(&group), timeout)
                .inspect_err(|error| tracing::debug!(group, %error, "describing the group"))
                .ok()?;
            let described = groups.groups().iter().find(|g| g.name() == group)?;
            let all: HashSet<(String, i32)> = all_partitions(&consumer, &topics, timeout)?
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            let held: HashSet<(String, i32)> = described
                .members()
                .iter()
                .filter_map(|m| m.assignment().and_then(decode_assignment))
                .flatten()
                .collect();
            tracing::debug!(
                group,
                members = described.members().len(),
                ?held,
                ?assigned,
                "the group as the broker describes it"
            );
            if !held.is_empty() && assigned.is_subset(&held) {
                return Some(all.difference(&held).cloned().collect());
            }
            if described.members().len() == 1 && !assigned.is_empty() {
                return Some(all.difference(&assigned).cloned().collect());
            }
            // Progress of the partitions others hold.
            let mut others = TopicPartitionList::new();
            for (topic, partition) in all.difference(&assigned) {
                others.add_partition(topic, *partition);
            }
            let committed = consumer.committed_offsets(others, timeout).ok()?;
            let now = std::time::Instant::now();
            let mut stuck = HashSet::new();
            for e in committed.elements() {
                let tp = (e.topic().to_owned(), e.partition());
                let Ok((low, high)) = consumer.fetch_watermarks(&tp.0, tp.1, timeout) else { continue };
                let at = match e.offset() {
                    Offset::Offset(at) => at,
                    _ => low,
                };
                if at >= high {
                    watch.last.remove(&tp);
                    continue;
                }
                let since = match watch.last.get(&tp) {
                    Some((seen, since)) if *seen == at => *since,
                    _ => now,
                };
                watch.last.insert(tp.clone(), (at, since));
                if now.duration_since(since) >= stall_after {
                    stuck.insert(tp);
                }
            }
            Some(stuck)
        })();
        (orphans, watch)
    })
    .await
    .unwrap_or((None, fallback))
}

/// Decodes a member's assignment in the Kafka consumer protocol
/// (version, then topics with their partitions, then user data).
fn decode_assignment(bytes: &[u8]) -> Option<Vec<(String, i32)>> {
    struct Reader<'a>(&'a [u8]);
    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = rest;
            Some(head)
        }
        fn i16(&mut self) -> Option<i16> {
            Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
        }
        fn i32(&mut self) -> Option<i32> {
            Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
        }
    }
    let mut reader = Reader(bytes);
    let _version = reader.i16()?;
    let mut partitions = Vec::new();
    for _ in 0..reader.i32()?.max(0) {
        let len = usize::try_from(reader.i16()?).ok()?;
        let topic = String::from_utf8(reader.take(len)?.to_vec()).ok()?;
        for _ in 0..reader.i32()?.max(0) {
            partitions.push((topic.clone(), reader.i32()?));
        }
    }
    Some(partitions)
}

/// True if some partition of the subscribed topics has records the group
/// has not committed past (so a member without partitions is missing work).
/// False when the broker does not answer: rejoining would not help then.
async fn group_has_work(consumer: &Arc<StreamConsumer>, settings: &ConsumerSettings) -> bool {
    let consumer = Arc::clone(consumer);
    let topics = settings.topics.clone();
    let timeout = Duration::from_secs(3);
    tokio::task::spawn_blocking(move || {
        let Some(list) = all_partitions(&consumer, &topics, timeout) else { return false };
        let Ok(committed) = consumer.committed_offsets(list, timeout) else { return false };
        committed.elements().iter().any(|e| {
            let Ok((low, high)) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout) else { return false };
            let at = match e.offset() {
                Offset::Offset(at) => at,
                _ => low,
            };
            at < high
        })
    })
    .await
    .unwrap_or(false)
}

fn pause(consumer: &StreamConsumer, message: &OwnedMessage) {
    let mut list = TopicPartitionList::new();
    list.add_partition(message.topic(), message.partition());
    if let Err(error) = consumer.pause(&list) {
        tracing::warn!(%error, topic = message.topic(), partition = message.partition(), "pausing a partition");
    }
}

/// Resumes a paused partition just after `message` (records fetched while
/// it was paused were skipped and are read again).
fn resume_after(consumer: &StreamConsumer, message: &OwnedMessage) {
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

/// Counts the outcome and stores the record's offset (its effects committed).
fn finish(consumer: &StreamConsumer, settings: &ConsumerSettings, message: &OwnedMessage, outcome: Outcome) {
    tracing::debug!(group = settings.group, ?outcome, offset = message.offset(), "record done");
    metrics::counter!("consumer_records_total", "group" => settings.group.clone(), "outcome" => outcome.as_str())
        .increment(1);
    if let Some(age) = message.timestamp().to_millis().map(|ms| chrono::Utc::now().timestamp_millis() - ms) {
        metrics::histogram!("consumer_lag_seconds", "group" => settings.group.clone())
            .record(age.max(0) as f64 / 1000.0);
    }
    if let Err(error) = consumer.store_offset(message.topic(), message.partition(), message.offset()) {
        tracing::warn!(%error, "storing the consumer offset");
    }
}

/// The consumer span of one record, child of the producer's trace context.
fn consume_span(group: &str, event: &IncomingEvent, topic: &str) -> tracing::Span {
    let headers = &event.headers;
    let span = tracing::info_span!(
        "consume",
        otel.name = %format!("{group} consume {}", headers.event_type),
        otel.kind = "consumer",
        messaging.consumer.group = group,
        messaging.destination = topic,
        ce_type = %headers.event_type,
        ce_id = %headers.id,
        trace_id = tracing::field::Empty,
    );
    crate::trace_context::adopt(&span, crate::trace_context::from_traceparent(headers.traceparent.as_deref()));
    span
}

/// What one try at a record came to; `E` is what a retry keeps (the
/// decoded event, once there is one).
enum Step<E = ()> {
    /// A final outcome; store the offset.
    Done(Outcome),
    /// A transient failure; try again later.
    Retry(anyhow::Error, E),
    /// Shutdown came first.
    Interrupted,
}

/// Tries `event` once: applied, duplicate, ignored, dead-lettered (poison)
/// or to be retried (transient).
async fn try_record(
    pool: &PgPool,
    dlq_producer: &FutureProducer,
    handler: &impl EventHandler,
    settings: &ConsumerSettings,
    message: &OwnedMessage,
    event: &IncomingEvent,
    shutdown: &Shutdown,
) -> Step {
    if !handler.wants(&event.headers.event_type) {
        return Step::Done(Outcome::Ignored);
    }
    match handle_once(pool, handler, &settings.group, event).await {
        Ok(outcome) => Step::Done(outcome),
        Err(HandlerError::Poison(reason)) => {
            match dead_letter(dlq_producer, settings, message, &reason, shutdown).await {
                Some(outcome) => Step::Done(outcome),
                None => Step::Interrupted,
            }
        }
        Err(HandlerError::Transient(error)) => Step::Retry(error, ()),
    }
}

fn to_incoming(message: &OwnedMessage) -> Result<IncomingEvent, String> {
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
    let mut tx = pool.begin().await?;
    let outcome = apply_in(&mut tx, handler, group, event).await?;
    if outcome == Outcome::Duplicate {
        tx.rollback().await?;
        return Ok(outcome);
    }
    tx.commit().await?;
    crate::global_log::committed();
    handler.committed(event).await;
    Ok(outcome)
}

/// In the caller's transaction: records `event` in this consumer's inbox
/// and, unless it was there already (`Duplicate`), applies it (`Applied`).
async fn apply_in(
    tx: &mut PgConnection,
    handler: &impl EventHandler,
    group: &str,
    event: &IncomingEvent,
) -> Result<Outcome, HandlerError> {
    let fresh = sqlx::query("insert into inbox (consumer, event_id, topic) values ($1, $2, $3) on conflict do nothing")
        .bind(group)
        .bind(event.event_id()?)
        .bind(&event.topic)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if !fresh {
        return Ok(Outcome::Duplicate);
    }
    handler.handle(tx, event).await?;
    Ok(Outcome::Applied)
}

/// Publishes the record to `<topic>.dlq` with the reason and its origin,
/// retrying until the DLQ accepts it (the offset must not move before).
async fn dead_letter(
    producer: &FutureProducer,
    settings: &ConsumerSettings,
    message: &OwnedMessage,
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

#[cfg(test)]
mod tests {
    use super::decode_assignment;

    #[test]
    fn a_consumer_protocol_assignment_decodes_to_its_partitions() {
        let mut bytes = vec![0, 1]; // version 1
        bytes.extend(2_i32.to_be_bytes()); // two topics
        for (topic, partitions) in [("a.v1", vec![0_i32, 2]), ("b", vec![1])] {
            bytes.extend((topic.len() as i16).to_be_bytes());
            bytes.extend(topic.as_bytes());
            bytes.extend((partitions.len() as i32).to_be_bytes());
            for p in partitions {
                bytes.extend(p.to_be_bytes());
            }
        }
        bytes.extend((-1_i32).to_be_bytes()); // no user data
        assert_eq!(decode_assignment(&bytes), Some(vec![("a.v1".into(), 0), ("a.v1".into(), 2), ("b".into(), 1)]));
        assert_eq!(decode_assignment(&bytes[..7]), None, "truncated");
    }
}
