//! The live tail: one reader of the global log per process, started by
//! the first subscriber. It reads what commits, in the log's order, and
//! broadcasts each batch, already encoded, to every live subscriber, so a
//! hundred subscribers cost one read per commit, not a hundred. A
//! subscriber that falls too far behind the broadcast is told so
//! (`Lagged`) and reads the store itself until it catches up.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use edge::shutdown::{sleep_or_shutdown, Shutdown};
use kernel::event_store::StoredEvent;
use kernel::global_log::{self, LogPosition, WakeUp};
use messaging::kafka::CONTENT_TYPE;
use messaging::outbox::IntegrationMapper;
use proto::feed::FeedEvent;
use sqlx::PgPool;
use tokio::sync::broadcast;

/// Events read from the log at once.
pub(super) const READ_AT_MOST: i64 = 1_000;
/// Batches the broadcast keeps for a subscriber that is behind.
const KEPT_BATCHES: usize = 1_024;
/// The longest wait between looks at the log without a wake-up.
const POLL: Duration = Duration::from_secs(1);

/// One event as the feed sends it, and its place in the log.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) at: LogPosition,
    pub(super) event: FeedEvent,
}

/// What one read of the tail found: the published events after `from`;
/// the tail is at `to` after it (past unpublished events too).
#[derive(Debug)]
pub(super) struct LiveBatch {
    pub(super) from: LogPosition,
    pub(super) to: LogPosition,
    pub(super) entries: Vec<Entry>,
}

/// A stored event the feed cannot encode: the relay stalls on it too.
#[derive(Debug, thiserror::Error)]
#[error("event {0} cannot be encoded as the relay would publish it")]
pub(super) struct Unpublishable(pub(super) uuid::Uuid);

/// The event as the relay publishes it (`None` for an internal event).
pub(super) fn encode(mapper: &dyn IntegrationMapper, stored: &StoredEvent) -> Result<Option<Entry>, Unpublishable> {
    let record = messaging::outbox::published_record(mapper, stored).map_err(|_| Unpublishable(stored.event_id))?;
    Ok(record.map(|record| Entry {
        at: LogPosition::of(stored),
        event: FeedEvent {
            position: stored.log_position.unwrap_or_default(),
            stream_id: stored.stream_id.clone(),
            sequence: stored.sequence.unwrap_or_default(),
            event_id: stored.event_id.to_string(),
            r#type: record.ce_type,
            subject: record.subject,
            time: Some(proto::time::timestamp(stored.recorded_at)),
            data: record.value,
            content_type: CONTENT_TYPE.to_owned(),
        },
    }))
}

/// The tail of one service's log; clones share it.
#[derive(Clone)]
pub(super) struct Tail {
    pool: PgPool,
    mapper: Arc<dyn IntegrationMapper>,
    shutdown: Shutdown,
    sender: Arc<OnceLock<broadcast::Sender<Arc<LiveBatch>>>>,
}

impl Tail {
    pub(super) fn new(pool: PgPool, mapper: Arc<dyn IntegrationMapper>, shutdown: Shutdown) -> Self {
        Self { pool, mapper, shutdown, sender: Arc::default() }
    }

    /// The batches read from now on (the tail starts with the first call).
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Arc<LiveBatch>> {
        self.sender
            .get_or_init(|| {
                let (sender, _) = broadcast::channel(KEPT_BATCHES);
                tokio::spawn(run(self.clone(), sender.clone()));
                sender
            })
            .subscribe()
    }
}

async fn run(tail: Tail, sender: broadcast::Sender<Arc<LiveBatch>>) {
    let mut wake = WakeUp::listening(&tail.pool, POLL).await;
    let mut at = loop {
        let end = async { global_log::log_end(&mut *tail.pool.acquire().await?).await };
        match end.await {
            Ok(at) => break at,
            Err(error) => tracing::warn!(%error, "event feed: cannot find the end of the log; trying again"),
        }
        if !sleep_or_shutdown(POLL, &tail.shutdown).await {
            return;
        }
    };
    while !tail.shutdown.is_cancelled() {
        match read_all(&tail, &sender, &mut at).await {
            Ok(held_back) => wake.held_back(held_back),
            Err(error) => {
                tracing::warn!(%error, "event feed: reading the log failed; trying again");
                if !sleep_or_shutdown(POLL, &tail.shutdown).await {
                    return;
                }
            }
        }
        tokio::select! {
            () = wake.wait() => {}
            () = tail.shutdown.cancelled() => return,
        }
    }
}

/// Reads and broadcasts everything committed past `at`; whether an open
/// transaction holds committed events back.
async fn read_all(
    tail: &Tail,
    sender: &broadcast::Sender<Arc<LiveBatch>>,
    at: &mut LogPosition,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    loop {
        let read = global_log::read_after(&mut *tail.pool.acquire().await?, *at, READ_AT_MOST).await?;
        let Some(last) = read.events.last() else { return Ok(read.held_back) };
        let (from, to) = (*at, LogPosition::of(last));
        let mut entries = Vec::with_capacity(read.events.len());
        for stored in &read.events {
            match encode(tail.mapper.as_ref(), stored) {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => {}
                // Subscribers reading the store meet it and end loudly.
                Err(error) => return Err(error.into()),
            }
        }
        *at = to;
        let full = read.events.len() as i64 == READ_AT_MOST;
        // No receiver is not an error: subscribers come and go.
        let _ = sender.send(Arc::new(LiveBatch { from, to, entries }));
        if !full {
            return Ok(read.held_back);
        }
    }
}
