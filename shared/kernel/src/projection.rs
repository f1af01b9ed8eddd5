//! Read models kept in step with the global log.
//!
//! Each projection's tables live in a schema of their own
//! (`proj_<name>_<n>`); readers query same-named views in `public` that
//! point at the live schema. The runner applies a batch of events and moves
//! the checkpoint in one transaction, so a read model is never ahead of or
//! behind its checkpoint. A rebuild replays the whole log into a fresh
//! schema while the live one keeps serving, then swaps the views and the
//! checkpoint in one short transaction (blue/green).

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{PgConnection, PgPool, Row};
use tokio_util::sync::CancellationToken;

use crate::{
    advisory_key,
    event_store::{EventStoreError, StoredEvent},
    global_log::{self, LogPosition, WakeUp},
};

/// A read model fed from the global log.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name; also the checkpoint's name.
    fn name(&self) -> &'static str;
    /// The tables it owns; readers see them as views of the same names in `public`.
    fn tables(&self) -> &'static [&'static str];
    /// DDL creating those tables, with unqualified names (run inside the projection's schema).
    fn create_tables_sql(&self) -> &'static str;
    /// Applies one event; writes use unqualified table names.
    async fn apply(&self, conn: &mut PgConnection, event: &StoredEvent) -> Result<(), ProjectionError>;
    /// Written by the commands themselves, in the transaction that appends
    /// the events (so always current), rather than by a runner that follows
    /// the log. Such a projection's checkpoint stays at the end of the log:
    /// only a rebuild replays it.
    fn inline(&self) -> bool {
        false
    }
}

/// The checkpoint of an inline projection: past every event there will be.
const KEPT_BY_WRITERS: LogPosition = LogPosition { tx_id: i64::MAX, position: i64::MAX };

/// Projection failures.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Reading the log failed.
    #[error("event store: {0}")]
    Store(#[from] EventStoreError),
    /// An event's payload does not have the expected shape.
    #[error("event {event_id} ({event_type}) does not decode: {reason}")]
    Decode {
        /// The event.
        event_id: uuid::Uuid,
        /// Its type.
        event_type: String,
        /// The decoder's message.
        reason: String,
    },
}

impl ProjectionError {
    /// A decode failure of `event`.
    pub fn decode(event: &StoredEvent, error: impl std::fmt::Display) -> Self {
        Self::Decode { event_id: event.event_id, event_type: event.event_type.clone(), reason: error.to_string() }
    }
}

const BATCH: i64 = 500;

/// Creates the projection's schema, tables and views on first use.
pub async fn ensure(pool: &PgPool, projection: &dyn Projection) -> Result<(), ProjectionError> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(advisory_key(&format!("projection-setup:{}", projection.name())))
        .execute(&mut *tx)
        .await?;
    let exists: Option<Option<String>> =
        sqlx::query_scalar("select schema_name from subscription_checkpoints where subscription = $1")
            .bind(projection.name())
            .fetch_optional(&mut *tx)
            .await?;
    if exists.flatten().is_none() {
        let schema = new_schema_name(&mut tx, projection).await?;
        create_schema(&mut tx, projection, &schema).await?;
        point_views_at(&mut tx, projection, &schema).await?;
        sqlx::query(
            "insert into subscription_checkpoints (subscription, schema_name) values ($1, $2) \
             on conflict (subscription) do update set schema_name = excluded.schema_name, last_tx = 0, last_position = 0",
        )
        .bind(projection.name())
        .bind(&schema)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    if projection.inline() {
        hand_over_to_writers(pool, projection).await?;
    }
    Ok(())
}

/// From here on the commands keep an inline projection current: whatever a
/// runner (an older version) had not applied yet is applied now, and the
/// checkpoint moves past the end of the log.
async fn hand_over_to_writers(pool: &PgPool, projection: &dyn Projection) -> Result<(), ProjectionError> {
    catch_up(pool, projection).await?;
    let mut conn = pool.acquire().await?;
    global_log::save_checkpoint(&mut conn, projection.name(), KEPT_BY_WRITERS).await?;
    Ok(())
}

/// Keeps the projection up to date until `shutdown`. Several instances may
/// run it: the checkpoint row lock lets one batch through at a time.
pub async fn run(pool: PgPool, projection: impl Projection, poll: Duration, shutdown: CancellationToken) {
    let mut wake = WakeUp::new(poll);
    while !shutdown.is_cancelled() {
        match catch_up_reporting(&pool, &projection).await {
            Ok(applied) => {
                wake.held_back(applied.held_back);
                tokio::select! {
                    () = wake.wait() => {}
                    () = shutdown.cancelled() => {}
                }
            }
            Err(error) => {
                tracing::error!(projection = projection.name(), %error, "projection batch failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
    tracing::info!(projection = projection.name(), "projection runner stopped");
}

/// Applies every committed event past the checkpoint; returns how many.
pub async fn catch_up(pool: &PgPool, projection: &dyn Projection) -> Result<usize, ProjectionError> {
    Ok(catch_up_reporting(pool, projection).await?.events)
}

/// [`catch_up`], also saying whether an open transaction held events back.
async fn catch_up_reporting(pool: &PgPool, projection: &dyn Projection) -> Result<Applied, ProjectionError> {
    let mut applied = 0;
    loop {
        let batch = apply_batch(pool, projection).await?;
        applied += batch.events;
        if batch.events == 0 {
            return Ok(Applied { events: applied, held_back: batch.held_back });
        }
    }
}

/// What one batch applied, and whether the log held more back.
struct Applied {
    events: usize,
    held_back: bool,
}

async fn apply_batch(pool: &PgPool, projection: &dyn Projection) -> Result<Applied, ProjectionError> {
    let mut tx = pool.begin().await?;
    // The row lock serialises runners (and the rebuild swap) per projection.
    let row = sqlx::query(
        "select schema_name, last_tx, last_position from subscription_checkpoints \
         where subscription = $1 for update",
    )
    .bind(projection.name())
    .fetch_optional(&mut *tx)
    .await?;
    let nothing = Applied { events: 0, held_back: false };
    let Some(row) = row else {
        return Ok(nothing);
    };
    let schema: Option<String> = row.try_get("schema_name")?;
    let Some(schema) = schema else {
        return Ok(nothing);
    };
    let after = LogPosition { tx_id: row.try_get("last_tx")?, position: row.try_get("last_position")? };
    use_schema(&mut tx, &schema).await?;
    let read = global_log::read_after(&mut tx, after, BATCH).await?;
    let batch = read.events;
    let Some(last) = batch.last() else {
        tx.rollback().await?;
        return Ok(Applied { events: 0, held_back: read.held_back });
    };
    let next = LogPosition::of(last);
    for event in &batch {
        projection.apply(&mut tx, event).await?;
    }
    global_log::save_checkpoint(&mut tx, projection.name(), next).await?;
    tx.commit().await?;
    let lag = (chrono::Utc::now() - last.recorded_at).num_milliseconds().max(0) as f64 / 1000.0;
    metrics::histogram!("projection_lag_seconds", "projection" => projection.name()).record(lag);
    Ok(Applied { events: batch.len(), held_back: read.held_back })
}

/// Replays the whole log into fresh tables, then swaps them in; the live
/// read model keeps serving until the swap. Returns the events replayed.
pub async fn rebuild(pool: &PgPool, projection: &dyn Projection) -> Result<usize, ProjectionError> {
    ensure(pool, projection).await?;
    let schema = {
        let mut conn = pool.acquire().await?;
        let schema = new_schema_name(&mut conn, projection).await?;
        let mut tx = pool.begin().await?;
        create_schema(&mut tx, projection, &schema).await?;
        tx.commit().await?;
        schema
    };
    let mut at = LogPosition::default();
    let mut replayed = 0;
    // Replay outside any long transaction, batch by batch.
    loop {
        let mut tx = pool.begin().await?;
        use_schema(&mut tx, &schema).await?;
        let batch = global_log::read_after(&mut tx, at, BATCH).await?.events;
        let Some(last) = batch.last() else { break };
        at = LogPosition::of(last);
        for event in &batch {
            projection.apply(&mut tx, event).await?;
        }
        tx.commit().await?;
        replayed += batch.len();
    }
    // Swap: lock the checkpoint (pauses live runners), catch up the tail,
    // repoint views and checkpoint, commit.
    let mut tx = pool.begin().await?;
    let old: Option<String> =
        sqlx::query_scalar("select schema_name from subscription_checkpoints where subscription = $1 for update")
            .bind(projection.name())
            .fetch_one(&mut *tx)
            .await?;
    use_schema(&mut tx, &schema).await?;
    loop {
        let batch = global_log::read_after(&mut tx, at, BATCH).await?.events;
        let Some(last) = batch.last() else { break };
        at = LogPosition::of(last);
        for event in &batch {
            projection.apply(&mut tx, event).await?;
        }
        replayed += batch.len();
    }
    point_views_at(&mut tx, projection, &schema).await?;
    let swapped_in: i64 = sqlx::query_scalar("select pg_current_xact_id()::text::bigint").fetch_one(&mut *tx).await?;
    sqlx::query(
        "update subscription_checkpoints set schema_name = $2, last_tx = $3, last_position = $4, updated_at = now() \
         where subscription = $1",
    )
    .bind(projection.name())
    .bind(&schema)
    .bind(at.tx_id)
    .bind(at.position)
    .execute(&mut *tx)
    .await?;
    if let Some(old) = old.filter(|old| *old != schema) {
        sqlx::query(&format!("drop schema if exists {old} cascade")).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    replayed += settle_after_swap(pool, projection, swapped_in).await?;
    if projection.inline() {
        hand_over_to_writers(pool, projection).await?;
    }
    tracing::info!(projection = projection.name(), schema, replayed, "projection rebuilt and swapped in");
    Ok(replayed)
}

/// A read model written by commands in their own transactions (inline)
/// may have been written into the old tables by a command that was still
/// running at the swap. Once every transaction older than the swap has
/// ended, this applies again what committed after the swap point (applying
/// an event twice changes nothing).
async fn settle_after_swap(
    pool: &PgPool,
    projection: &dyn Projection,
    swapped_in: i64,
) -> Result<usize, ProjectionError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let oldest: i64 =
            sqlx::query_scalar("select pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetch_one(pool).await?;
        if oldest > swapped_in {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                projection = projection.name(),
                "a transaction older than the swap is still open; settling what has committed"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    catch_up(pool, projection).await
}

async fn new_schema_name(conn: &mut PgConnection, projection: &dyn Projection) -> Result<String, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("select nextval('projection_schema_seq')").fetch_one(&mut *conn).await?;
    Ok(format!("proj_{}_{n}", projection.name()))
}

async fn create_schema(conn: &mut PgConnection, projection: &dyn Projection, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("create schema {schema}")).execute(&mut *conn).await?;
    use_schema(conn, schema).await?;
    sqlx::raw_sql(projection.create_tables_sql()).execute(&mut *conn).await?;
    sqlx::query("select set_config('search_path', 'public', true)").execute(&mut *conn).await?;
    Ok(())
}

async fn point_views_at(conn: &mut PgConnection, projection: &dyn Projection, schema: &str) -> Result<(), sqlx::Error> {
    for table in projection.tables() {
        sqlx::query(&format!("drop view if exists public.{table}")).execute(&mut *conn).await?;
        sqlx::query(&format!("create view public.{table} as select * from {schema}.{table}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Makes unqualified names resolve to `schema` for the rest of the transaction.
async fn use_schema(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::query("select set_config('search_path', $1 || ', public', true)").bind(schema).execute(&mut *conn).await?;
    Ok(())
}
