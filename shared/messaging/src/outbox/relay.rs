//! The relay's loop: one active relay per database (a session advisory
//! lock), reading the global log past what it sent, sending what may go
//! now, and moving its checkpoint only over batches acknowledged with all
//! before them.

use std::{collections::VecDeque, time::Duration};

use edge::shutdown::{sleep_or_shutdown, Shutdown};
use kernel::global_log::{self, LogPosition, WakeUp};
use sqlx::{PgConnection, PgPool};

use super::{
    order::{ready_records, Unacknowledged},
    producer::{send_batch, Delivery, RelayProducer},
    IntegrationMapper, RelaySettings,
};

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
    let lock_key = kernel::advisory_key(&format!("outbox-relay:{}", settings.name));
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
    Store(#[from] kernel::event_store::EventStoreError),
    #[error("leadership lost")]
    LeadershipLost,
}

/// How often an idle relay proves its leadership connection alive.
const PROVE_LEADERSHIP_EVERY: Duration = Duration::from_secs(10);

/// Batches sent and not yet fully acknowledged at once, while the log has
/// more than a batch to send (a backlog): the relay reads and sends the
/// next full batch while the broker acknowledges the earlier ones.
const MAX_BATCHES_IN_FLIGHT: usize = 4;

/// While batches keep being acknowledged, the checkpoint is written at
/// most this often (each write is a commit and a WAL flush); a relay with
/// nothing more to send writes it once this much has passed. A crash
/// re-sends at most what was acknowledged since the last write, which
/// at-least-once delivery allows (consumers dedupe on `ce_id`).
const SAVE_CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// A sent batch: where the checkpoint moves once all of it is acknowledged,
/// when its events were recorded (for the publish-latency histogram), the
/// keys it holds records of, and its delivery.
struct SentBatch {
    last: LogPosition,
    recorded: Vec<chrono::DateTime<chrono::Utc>>,
    keys: Vec<String>,
    delivery: std::pin::Pin<Box<dyn std::future::Future<Output = Delivery> + Send>>,
}

/// One leadership term's state: what is sent, what is acknowledged, and
/// what is in flight between them.
struct Publisher<'a, M> {
    pool: &'a PgPool,
    producer: &'a mut RelayProducer,
    mapper: &'a M,
    settings: &'a RelaySettings,
    /// Acknowledged with everything before it: where a resend starts.
    checkpoint: LogPosition,
    /// The checkpoint as written to the database, and when.
    saved: (LogPosition, tokio::time::Instant),
    /// Everything up to here is in `in_flight` or acknowledged.
    sent: LogPosition,
    in_flight: VecDeque<SentBatch>,
    unacknowledged: Unacknowledged,
    /// The next event's key has a record in flight: read again only after an ack.
    blocked: bool,
    /// Failed batches in a row.
    failures: u32,
}

/// What a read of the log found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Nothing past what is sent.
    Nothing,
    /// Events up to the end the log showed: read again when woken (a
    /// commit during the read wakes the next wait at once).
    ToTheEnd,
    /// A full batch (look again now), or a batch stopped at a key still
    /// in flight (look again once it is acknowledged).
    More,
}

/// What became of a delivery.
#[derive(PartialEq, Eq)]
enum Settled {
    /// The checkpoint moved.
    Acknowledged,
    /// Everything in flight is dropped; send again from the checkpoint after a pause.
    SendAgain,
}

impl<M: IntegrationMapper> Publisher<'_, M> {
    fn has_room(&self) -> bool {
        self.in_flight.len() < MAX_BATCHES_IN_FLIGHT && !self.blocked
    }

    /// Reads past what is sent and sends what may go now.
    async fn send_next(&mut self, wake: &mut WakeUp) -> Result<Read, RelayError> {
        let batch = {
            let mut conn = self.pool.acquire().await?;
            let read = global_log::read_after(&mut conn, self.sent, self.settings.batch_size).await?;
            wake.held_back(read.held_back);
            read.events
        };
        if batch.is_empty() {
            return Ok(Read::Nothing);
        }
        // A short batch reached the end the log showed: reading again at
        // once finds nothing unless a commit came meanwhile, and such a
        // commit makes the next wait return at once.
        let after = if i64::try_from(batch.len()).unwrap_or(i64::MAX) < self.settings.batch_size {
            Read::ToTheEnd
        } else {
            Read::More
        };
        let ready = ready_records(self.mapper, self.settings, &batch, &self.unacknowledged);
        self.blocked = ready.blocked;
        let Some(last) = ready.upto.checked_sub(1).and_then(|i| batch.get(i)) else {
            return Ok(Read::More);
        };
        let last = LogPosition::of(last);
        let keys: Vec<String> = ready.records.iter().map(|(_, record)| record.key.clone()).collect();
        let delivery = match (ready.unmappable, self.producer.get()) {
            (true, _) => Box::pin(std::future::ready(Delivery::Unmappable)),
            (false, Ok(current)) => send_batch(current, &ready.records),
            (false, Err(error)) => {
                tracing::warn!(%error, "outbox relay cannot build a Kafka producer");
                Box::pin(std::future::ready(Delivery::Failed { fatal: false }))
            }
        };
        self.unacknowledged.sent(&keys);
        let recorded = batch.iter().take(ready.upto).map(|e| e.recorded_at).collect();
        self.in_flight.push_back(SentBatch { last, recorded, keys, delivery });
        self.sent = last;
        Ok(if self.blocked { Read::More } else { after })
    }

    /// Takes the oldest batch's delivery report.
    async fn settle(&mut self, delivered: Delivery) -> Result<Settled, RelayError> {
        self.blocked = false;
        if let Delivery::All = delivered {
            self.failures = 0;
            let Some(done) = self.in_flight.pop_front() else { return Ok(Settled::Acknowledged) };
            self.unacknowledged.acknowledged(&done.keys);
            self.checkpoint = done.last;
            record_latency(self.settings, &done.recorded);
            if self.saved.1.elapsed() >= SAVE_CHECKPOINT_EVERY {
                self.save().await?;
            }
            return Ok(Settled::Acknowledged);
        }
        // Never skip: send again from the checkpoint (what followed the
        // failed batch may arrive twice). A record that cannot be mapped
        // stalls the relay loudly instead.
        self.in_flight.clear();
        self.unacknowledged = Unacknowledged::default();
        self.sent = self.checkpoint;
        if let Delivery::Failed { fatal } = delivered {
            self.failures += 1;
            if fatal {
                self.producer.rebuild(&self.settings.name, "fatal producer error");
                self.failures = 0;
            } else if self.failures >= self.settings.rebuild_after_failures {
                self.producer.rebuild(&self.settings.name, "batches keep failing");
                self.failures = 0;
            }
        }
        Ok(Settled::SendAgain)
    }

    /// The acknowledged checkpoint is not written yet.
    fn unsaved(&self) -> bool {
        self.checkpoint != self.saved.0
    }

    /// Writes the checkpoint, and the backlog gauge beside it.
    async fn save(&mut self) -> Result<(), RelayError> {
        let mut conn = self.pool.acquire().await?;
        global_log::save_checkpoint(&mut conn, &self.settings.name, self.checkpoint).await?;
        self.saved = (self.checkpoint, tokio::time::Instant::now());
        record_backlog(&mut conn, self.settings, self.checkpoint).await?;
        Ok(())
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
    let checkpoint = {
        let mut conn = pool.acquire().await?;
        global_log::load_checkpoint(&mut conn, &settings.name).await?
    };
    let mut publisher = Publisher {
        pool,
        producer,
        mapper,
        settings,
        checkpoint,
        saved: (checkpoint, tokio::time::Instant::now()),
        sent: checkpoint,
        in_flight: VecDeque::new(),
        unacknowledged: Unacknowledged::default(),
        blocked: false,
        failures: 0,
    };
    let mut last_proof = tokio::time::Instant::now();
    while !shutdown.is_cancelled() {
        if publisher.has_room() && publisher.send_next(wake).await? == Read::More {
            continue;
        }
        let Some(head) = publisher.in_flight.front_mut() else {
            // Idle: write the checkpoint once it is due, prove the lock
            // connection alive now and then, then sleep until woken.
            publisher.blocked = false;
            let due = publisher.saved.1 + SAVE_CHECKPOINT_EVERY;
            if publisher.unsaved() && tokio::time::Instant::now() >= due {
                publisher.save().await?;
            }
            publisher.producer.let_go_if_idle();
            if last_proof.elapsed() >= PROVE_LEADERSHIP_EVERY {
                sqlx::query("select 1").execute(&mut leader).await.map_err(|_| RelayError::LeadershipLost)?;
                last_proof = tokio::time::Instant::now();
            }
            let unsaved = publisher.unsaved();
            tokio::select! {
                () = wake.wait() => {}
                () = tokio::time::sleep_until(due), if unsaved => {}
                () = shutdown.cancelled() => {}
            }
            continue;
        };
        // Commits made while a batch is in flight wait for its ack and go
        // in the next read together: a read per commit costs a query and a
        // produce request of one record, each waking librdkafka's broker
        // thread (four fifths of the booking-service's relay CPU went to
        // that). A backlog, read as full batches, still keeps several in
        // flight.
        let delivered = tokio::select! {
            delivered = &mut head.delivery => delivered,
            () = shutdown.cancelled() => continue,
        };
        if publisher.settle(delivered).await? == Settled::SendAgain
            && !sleep_or_shutdown(settings.retry_backoff, shutdown).await
        {
            break;
        }
    }
    // Stopping: what is acknowledged is not sent again by the next leader.
    if publisher.unsaved() {
        publisher.save().await?;
    }
    Ok(())
}

/// Publish latency of the events of an acknowledged batch.
fn record_latency(settings: &RelaySettings, recorded: &[chrono::DateTime<chrono::Utc>]) {
    let now = chrono::Utc::now();
    let histogram = metrics::histogram!("outbox_publish_seconds", "relay" => settings.name.clone());
    for at in recorded {
        histogram.record((now - *at).num_milliseconds().max(0) as f64 / 1000.0);
    }
}

/// The backlog behind the written checkpoint.
async fn record_backlog(
    conn: &mut PgConnection,
    settings: &RelaySettings,
    checkpoint: LogPosition,
) -> Result<(), sqlx::Error> {
    let head: Option<i64> = sqlx::query_scalar("select max(global_position) from events").fetch_one(conn).await?;
    let backlog = head.unwrap_or(0).saturating_sub(checkpoint.position).max(0) as f64;
    metrics::gauge!("outbox_backlog_events", "relay" => settings.name.clone()).set(backlog);
    Ok(())
}
