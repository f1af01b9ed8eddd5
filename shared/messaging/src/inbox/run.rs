//! The consumer's main loop: balance partition leases every second, read
//! rounds of records into per-partition lanes, and retry held records with
//! backoff. A transient failure pauses only its partition; a permanent one
//! is dead-lettered after a few tries; poison at once.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use futures::FutureExt;
use rdkafka::{
    consumer::StreamConsumer,
    error::KafkaResult,
    message::{BorrowedMessage, Message, OwnedMessage},
    Offset,
};
use sqlx::PgPool;
use tokio::time::Instant;

use super::{
    client,
    dead_letter::DeadLetterProducer,
    dedupe::{purge_inbox, store_offset_alone, Fenced, Position},
    handler::{EventHandler, IncomingEvent},
    lanes::{Lanes, Step},
    leases::{self, Leases, Partition},
    settings::ConsumerSettings,
    Outcome,
};
use edge::shutdown::{sleep_or_shutdown, Shutdown};

use crate::{kafka::dlq_topic, Signals};

/// Records drained from librdkafka's queue into one round at most.
const MAX_ROUND: usize = 256;

/// How long the topics' partition lists are trusted before they are read again.
const PARTITIONS_FRESH_FOR: Duration = Duration::from_secs(30);

/// Consumes until `shutdown`: each record is applied, deduplicated,
/// ignored or dead-lettered, and its offset stored with its effects.
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
    let consumer = loop {
        match client::build(&brokers, &settings) {
            Ok(built) => break built,
            Err(error) => {
                tracing::warn!(group = settings.group, %error, "cannot build the Kafka consumer; retrying");
                signals.problem(&component, error.to_string());
                if !sleep_or_shutdown(Duration::from_secs(1), &shutdown).await {
                    purge.abort();
                    return;
                }
            }
        }
    };
    let mut worker = Worker {
        leases: Leases::new(&settings.group),
        pool,
        consumer: Arc::new(consumer),
        dlq: DeadLetterProducer::new(&brokers),
        handler,
        settings,
        signals,
        component,
        shutdown,
        owned: BTreeMap::new(),
        held: HashMap::new(),
        partitions: None,
        receive_errors: ErrorSummary::default(),
    };
    worker.run().await;
    worker.stop().await;
    purge.abort();
}

/// A partition this member works, and where it stands in it.
struct Owned {
    epoch: i64,
    /// The next offset to handle (`None` before the first record).
    next: Option<i64>,
    /// The next offset as stored in `consumer_partitions`.
    stored: Option<i64>,
}

/// A record whose handler failed; its partition is paused until it is handled.
struct Held {
    message: OwnedMessage,
    event: IncomingEvent,
    attempts: u32,
    permanent_failures: u32,
    backoff: Duration,
    next_try: Instant,
}

struct Worker<H> {
    pool: PgPool,
    consumer: Arc<StreamConsumer>,
    dlq: DeadLetterProducer,
    handler: H,
    settings: ConsumerSettings,
    signals: Signals,
    component: String,
    shutdown: Shutdown,
    leases: Leases,
    owned: BTreeMap<Partition, Owned>,
    held: HashMap<Partition, Held>,
    partitions: Option<(Vec<Partition>, Instant)>,
    receive_errors: ErrorSummary,
}

impl<H: EventHandler> Worker<H> {
    async fn run(&mut self) {
        let mut tick = tokio::time::interval(self.settings.rebalance_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let consumer = Arc::clone(&self.consumer);
        loop {
            let next_retry = self.held.values().map(|h| h.next_try).min();
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => self.rebalance().await,
                () = sleep_until_opt(next_retry), if next_retry.is_some() => {
                    if !self.retry_due().await {
                        return;
                    }
                }
                received = consumer.recv() => {
                    let round = drain_round(&consumer, received);
                    if !self.round(round).await {
                        return;
                    }
                }
            }
        }
    }

    fn lanes(&self) -> Lanes<'_, H> {
        Lanes {
            pool: &self.pool,
            dlq: &self.dlq,
            handler: &self.handler,
            settings: &self.settings,
            shutdown: &self.shutdown,
        }
    }

    fn position(&self, partition: &Partition) -> Option<Position> {
        self.owned.get(partition).map(|owned| Position { partition: partition.clone(), epoch: owned.epoch })
    }

    /// Proves the lease session alive, then gives back partitions beyond a
    /// fair share and takes free ones up to it.
    async fn rebalance(&mut self) {
        // Alive: alerts fire when this stops moving, records or not.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!("consumer_heartbeat_timestamp_seconds", "group" => self.settings.group.clone()).set(now);
        let members = match self.leases.members(&self.pool).await {
            Ok(members) => members,
            Err(error) => {
                self.lost_session(error.to_string()).await;
                return;
            }
        };
        let Some(all) = self.known_partitions().await else {
            self.signals.problem(&self.component, "Kafka does not answer: the topics' partitions are unknown");
            return;
        };
        self.take_share(all, members).await;
        self.flush_positions().await;
        self.dlq.let_go_if_idle();
        self.signals.ok(&self.component);
        self.gauges();
    }

    /// Every lease is gone with the session: stop working every partition.
    async fn lost_session(&mut self, error: String) {
        if !self.owned.is_empty() {
            tracing::warn!(
                group = self.settings.group,
                error,
                "lost the partition lease session; stopping work on every partition"
            );
        }
        let owned: Vec<Partition> = std::mem::take(&mut self.owned).into_keys().collect();
        for partition in owned {
            client::unassign(&self.consumer, &partition).await;
        }
        self.held.clear();
        self.signals.problem(&self.component, format!("cannot hold partition leases: {error}"));
        self.gauges();
    }

    /// Gives back what is beyond a fair share among `members`, then takes
    /// free partitions up to it.
    async fn take_share(&mut self, all: Vec<Partition>, members: usize) {
        let held: BTreeSet<Partition> = self.owned.keys().cloned().collect();
        let (give_back, share) = leases::balance(&all, &held, members);
        for partition in give_back {
            self.give_back(&partition).await;
        }
        let held: BTreeSet<Partition> = self.owned.keys().cloned().collect();
        let candidates = leases::candidates(&all, &held, self.leases.member());
        for partition in candidates {
            if self.owned.len() >= share {
                break;
            }
            self.try_take(&partition).await;
        }
    }

    async fn known_partitions(&mut self) -> Option<Vec<Partition>> {
        let fresh = self.partitions.as_ref().is_some_and(|(_, at)| at.elapsed() < PARTITIONS_FRESH_FOR);
        if !fresh {
            if let Some(all) = client::partitions(&self.consumer, &self.settings.topics).await {
                self.partitions = Some((all, Instant::now()));
            }
        }
        self.partitions.as_ref().map(|(all, _)| all.clone())
    }

    async fn try_take(&mut self, partition: &Partition) {
        let lease = match self.leases.try_acquire(partition).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(group = self.settings.group, %error, "taking a partition lease");
                return;
            }
        };
        let from = match lease.next_offset {
            Some(next) => Offset::Offset(next),
            None => client::first_offset(&self.consumer, partition).await,
        };
        if let Err(error) = client::assign(&self.consumer, partition, from).await {
            tracing::warn!(group = self.settings.group, %error, "reading a leased partition");
            if let Err(error) = self.leases.release(partition).await {
                tracing::warn!(%error, "giving a partition lease back");
            }
            return;
        }
        tracing::info!(
            group = self.settings.group,
            member = self.leases.member(),
            topic = partition.0,
            partition = partition.1,
            epoch = lease.epoch,
            ?from,
            "took a partition"
        );
        self.owned.insert(
            partition.clone(),
            Owned { epoch: lease.epoch, next: lease.next_offset, stored: lease.next_offset },
        );
    }

    async fn give_back(&mut self, partition: &Partition) {
        self.flush_position(partition).await;
        client::unassign(&self.consumer, partition).await;
        self.held.remove(partition);
        self.owned.remove(partition);
        if let Err(error) = self.leases.release(partition).await {
            tracing::warn!(%error, "giving a partition lease back");
        }
        tracing::info!(
            group = self.settings.group,
            topic = partition.0,
            partition = partition.1,
            "gave a partition back to share the work with another member"
        );
    }

    /// The lease moved without this member noticing: stop working the partition.
    async fn lose(&mut self, partition: &Partition) {
        tracing::warn!(
            group = self.settings.group,
            topic = partition.0,
            partition = partition.1,
            "partition lease moved to another member"
        );
        client::unassign(&self.consumer, partition).await;
        self.held.remove(partition);
        self.owned.remove(partition);
    }

    /// Stores offsets that moved without a transaction (ignored records).
    async fn flush_positions(&mut self) {
        let behind: Vec<Partition> =
            self.owned.iter().filter(|(_, o)| o.next > o.stored).map(|(p, _)| p.clone()).collect();
        for partition in behind {
            self.flush_position(&partition).await;
        }
    }

    async fn flush_position(&mut self, partition: &Partition) {
        let (Some(at), Some(owned)) = (self.position(partition), self.owned.get(partition)) else { return };
        let Some(next) = owned.next.filter(|next| owned.stored < Some(*next)) else { return };
        match store_offset_alone(&self.pool, &self.settings.group, &at, next).await {
            Ok(Ok(())) => {
                if let Some(owned) = self.owned.get_mut(partition) {
                    owned.stored = Some(next);
                }
            }
            Ok(Err(Fenced(_))) => self.lose(partition).await,
            Err(error) => tracing::debug!(%error, "storing a consumer offset; it is stored with the next record"),
        }
    }

    /// Runs a round: one lane per partition, lanes side by side, each in
    /// offset order. False when shutdown interrupted it.
    async fn round(&mut self, round: Vec<KafkaResult<OwnedMessage>>) -> bool {
        let mut lanes: Vec<(Position, Vec<OwnedMessage>)> = Vec::new();
        for received in round {
            let message = match received {
                Ok(message) => message,
                Err(error) => {
                    self.receive_errors.record(&self.settings.group, &error);
                    continue;
                }
            };
            let partition = (message.topic().to_owned(), message.partition());
            // Not leased here (any more), or fetched before a pause took
            // effect: read again when it matters.
            if self.held.contains_key(&partition) {
                continue;
            }
            let Some(owned) = self.owned.get_mut(&partition) else { continue };
            if owned.next.is_some_and(|next| message.offset() < next) {
                // librdkafka only goes back when the broker's log no longer
                // reaches our place (it restarted empty, or the topic was
                // made again) and it reset to the beginning: the log we
                // stood in is gone, so read the new one; the inbox drops
                // what was handled before.
                tracing::warn!(
                    group = self.settings.group,
                    topic = partition.0,
                    partition = partition.1,
                    stood_at = owned.next,
                    offset = message.offset(),
                    "the broker's log restarted behind this consumer's place; reading it from where the broker is"
                );
                owned.next = Some(message.offset());
                owned.stored = None;
            }
            match lanes.iter_mut().find(|(at, _)| at.partition == partition) {
                Some((_, records)) => records.push(message),
                None => {
                    let Some(at) = self.position(&partition) else { continue };
                    lanes.push((at, vec![message]));
                }
            }
        }
        let results = {
            let runner = self.lanes();
            let mut runs = Vec::with_capacity(lanes.len());
            for (at, records) in lanes {
                runs.push(run_lane(&runner, at, records));
            }
            futures::future::join_all(runs).await
        };
        for (at, results) in results {
            for (message, step) in results {
                match step {
                    Step::Done { outcome, stored } => self.finish(&at.partition, &message, outcome, stored),
                    Step::Retry { error, permanent, event } => {
                        log_retry(&self.settings, &event, 1, permanent, &error);
                        client::pause(&self.consumer, &message);
                        let backoff = self.settings.retry_backoff;
                        let held = Held {
                            message,
                            event,
                            attempts: 1,
                            permanent_failures: u32::from(permanent),
                            backoff,
                            next_try: Instant::now() + backoff,
                        };
                        self.held.insert(at.partition.clone(), held);
                    }
                    Step::Fenced => self.lose(&at.partition).await,
                    Step::Interrupted => return false,
                }
            }
        }
        self.gauges();
        true
    }

    /// Tries every held record that is due. False when shutdown interrupted it.
    async fn retry_due(&mut self) -> bool {
        let now = Instant::now();
        let due: Vec<Partition> = self.held.iter().filter(|(_, h)| h.next_try <= now).map(|(p, _)| p.clone()).collect();
        for partition in due {
            let (Some(mut held), Some(at)) = (self.held.remove(&partition), self.position(&partition)) else {
                continue;
            };
            let step = self.lanes().try_record(&at, &held.message, &held.event).await;
            let step = match step {
                Step::Retry { error, permanent, event: () } => {
                    held.attempts += 1;
                    held.permanent_failures += u32::from(permanent);
                    log_retry(&self.settings, &held.event, held.attempts, permanent, &error);
                    if held.permanent_failures < self.settings.permanent_failure_tries {
                        held.backoff = (held.backoff * 2).min(self.settings.max_backoff);
                        held.next_try = Instant::now() + held.backoff;
                        self.held.insert(partition, held);
                        continue;
                    }
                    let reason = format!("the database refused it {} times: {error}", held.permanent_failures);
                    self.lanes().dead_letter::<()>(&at, &held.message, &reason).await
                }
                other => other,
            };
            match step {
                Step::Done { outcome, stored } => {
                    self.finish(&partition, &held.message, outcome, stored);
                    client::resume_after(&self.consumer, &held.message);
                }
                Step::Fenced => self.lose(&partition).await,
                Step::Interrupted => return false,
                Step::Retry { .. } => {}
            }
        }
        self.gauges();
        true
    }

    /// Counts a record's outcome and moves the partition past it.
    fn finish(&mut self, partition: &Partition, message: &OwnedMessage, outcome: Outcome, stored: bool) {
        let group = &self.settings.group;
        tracing::debug!(group, ?outcome, offset = message.offset(), "record done");
        metrics::counter!("consumer_records_total", "group" => group.clone(), "outcome" => outcome.as_str())
            .increment(1);
        if let Some(age) = message.timestamp().to_millis().map(|ms| chrono::Utc::now().timestamp_millis() - ms) {
            metrics::histogram!("consumer_lag_seconds", "group" => group.clone()).record(age.max(0) as f64 / 1000.0);
        }
        if let Some(owned) = self.owned.get_mut(partition) {
            let next = message.offset() + 1;
            owned.next = Some(next);
            if stored {
                owned.stored = Some(owned.stored.map_or(next, |at| at.max(next)));
            }
        }
    }

    fn gauges(&self) {
        let group = self.settings.group.clone();
        metrics::gauge!("consumer_assigned_partitions", "group" => group.clone()).set(self.owned.len() as f64);
        metrics::gauge!("consumer_paused_partitions", "group" => group).set(self.held.len() as f64);
    }

    /// Stores what moved, gives every lease back and closes the client.
    async fn stop(mut self) {
        self.flush_positions().await;
        self.leases.close();
        self.signals.ok(&self.component);
        // Closing the client waits on librdkafka's threads: off the async workers.
        let consumer = Arc::clone(&self.consumer);
        drop(self);
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    }
}

async fn run_lane<H: EventHandler>(
    runner: &Lanes<'_, H>,
    at: Position,
    records: Vec<OwnedMessage>,
) -> (Position, Vec<(OwnedMessage, Step<IncomingEvent>)>) {
    let results = runner.run(&at, records).await;
    (at, results)
}

/// This record and whatever librdkafka has already fetched, detached.
fn drain_round(consumer: &StreamConsumer, first: KafkaResult<BorrowedMessage<'_>>) -> Vec<KafkaResult<OwnedMessage>> {
    let mut round = vec![first.map(|m| m.detach())];
    while round.len() < MAX_ROUND {
        match consumer.recv().now_or_never() {
            Some(next) => round.push(next.map(|m| m.detach())),
            None => break,
        }
    }
    round
}

/// Logs receive errors at most every few seconds, with how many there were.
/// librdkafka queues one per failed connection attempt while the broker is
/// away; each is stale once read, so they are drained at once.
#[derive(Default)]
struct ErrorSummary {
    since_logged: u64,
    last_logged: Option<Instant>,
}

impl ErrorSummary {
    fn record(&mut self, group: &str, error: &rdkafka::error::KafkaError) {
        self.since_logged += 1;
        metrics::counter!("consumer_receive_errors_total", "group" => group.to_owned()).increment(1);
        if self.last_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
            tracing::warn!(group, %error, errors = self.since_logged, "Kafka receive failed");
            self.since_logged = 0;
            self.last_logged = Some(Instant::now());
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn log_retry(settings: &ConsumerSettings, event: &IncomingEvent, attempts: u32, permanent: bool, error: &str) {
    let kind = if permanent { "permanent" } else { "transient" };
    metrics::counter!("consumer_retries_total", "group" => settings.group.clone(), "kind" => kind).increment(1);
    tracing::warn!(
        group = settings.group,
        ce_id = event.headers.id,
        attempts,
        kind,
        error,
        "handler failed; its partition is paused and the record retried"
    );
}
