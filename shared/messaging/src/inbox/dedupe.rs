//! What a consumer writes beside a handler's effects, in the same
//! transaction: the inbox row `(consumer, ce_id)` that makes a redelivered
//! event a no-op, and the partition's next offset under the member's lease
//! epoch. And the hourly purge of old inbox rows.

use std::{collections::HashSet, time::Duration};

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    handler::{EventHandler, HandlerError, IncomingEvent},
    leases::Partition,
    settings::ConsumerSettings,
    Outcome,
};
use edge::shutdown::{sleep_or_shutdown, Shutdown};

/// Where a lane stands in its partition: the lease it works under.
#[derive(Debug, Clone)]
pub struct Position {
    /// The partition.
    pub partition: Partition,
    /// The lease epoch offsets are stored under.
    pub epoch: i64,
}

/// In the caller's transaction: records `event` in this consumer's inbox
/// and, unless it was there already (`Duplicate`), applies it (`Applied`).
pub async fn apply_in(
    tx: &mut PgConnection,
    handler: &impl EventHandler,
    consumer: &str,
    event: &IncomingEvent,
) -> Result<Outcome, HandlerError> {
    let fresh = sqlx::query("insert into inbox (consumer, event_id, topic) values ($1, $2, $3) on conflict do nothing")
        .bind(consumer)
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

/// In the caller's transaction, one statement for a batch: records the
/// events `ids` (from `topics`) in this consumer's inbox and says, in
/// order, whether each is new. An event that was there already, or that
/// comes earlier in `ids`, is not.
pub async fn record_all(
    tx: &mut PgConnection,
    consumer: &str,
    ids: &[Uuid],
    topics: &[&str],
) -> Result<Vec<bool>, sqlx::Error> {
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "insert into inbox (consumer, event_id, topic) \
         select $1, e.event_id, e.topic from unnest($2::uuid[], $3::text[]) as e(event_id, topic) \
         on conflict do nothing returning event_id",
    )
    .bind(consumer)
    .bind(ids)
    .bind(topics)
    .fetch_all(&mut *tx)
    .await?;
    let mut fresh: HashSet<Uuid> = inserted.into_iter().collect();
    Ok(ids.iter().map(|id| fresh.remove(id)).collect())
}

/// The member lost the partition's lease: another member works it now.
#[derive(Debug, thiserror::Error)]
#[error("the lease of {}/{} moved to another member", .0 .0, .0 .1)]
pub struct Fenced(pub Partition);

/// In the caller's transaction: the partition's next offset is `next`,
/// if this member still holds the lease it acquired.
pub async fn store_offset(
    tx: &mut PgConnection,
    consumer: &str,
    at: &Position,
    next: i64,
) -> Result<Result<(), Fenced>, sqlx::Error> {
    let stored = sqlx::query(
        "update consumer_partitions set next_offset = $5 \
          where consumer = $1 and topic = $2 and partition = $3 and epoch = $4",
    )
    .bind(consumer)
    .bind(&at.partition.0)
    .bind(at.partition.1)
    .bind(at.epoch)
    .bind(next)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(if stored == 1 { Ok(()) } else { Err(Fenced(at.partition.clone())) })
}

/// Stores `next` in a transaction of its own (records that needed no
/// other write: ignored or dead-lettered ones).
pub async fn store_offset_alone(
    pool: &PgPool,
    consumer: &str,
    at: &Position,
    next: i64,
) -> Result<Result<(), Fenced>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    store_offset(&mut conn, consumer, at, next).await
}

/// Forgets where every consumer of this database stood, for a broker that
/// is new: the embedded broker of `ticketing dev` starts empty each time,
/// and offsets stored against its last run point into a log that is gone
/// (read from there, the new log's first records would be skipped). The
/// consumers start at the beginning; the inbox drops what they handled
/// before. Returns the partitions forgotten.
pub async fn forget_offsets(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let forgotten = sqlx::query("update consumer_partitions set next_offset = null where next_offset is not null")
        .execute(pool)
        .await?;
    Ok(forgotten.rows_affected())
}

/// Deletes inbox rows older than the retention, hourly, until `shutdown`.
pub async fn purge_inbox(pool: PgPool, settings: ConsumerSettings, shutdown: Shutdown) {
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
