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

use crate::{
    event_store::{EventStoreError, StoredEvent},
    global_log::{self, LogPosition, WakeUp},
    outbox::advisory_key,
    shutdown::{sleep_or_shutdown, Shutdown},
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
}

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
    Ok(())
}

/// Keeps the projection up to date until `shutdown`. Several instances may
/// run it: the checkpoint row lock lets one batch through at a time.
pub async fn run(pool: PgPool, projection: impl Projection, poll: Duration, shutdown: Shutdown) {
    let mut wake = WakeUp::new(poll);
    while !shutdown.is_cancelled() {
        match catch_up(&pool, &projection).await {
            Ok(_) => {
                tokio::select! {
                    () = wake.wait() => {}
                    () = shutdown.cancelled() => {}
                }
            }
            Err(error) => {
                tracing::error!(projection = projection.name(), %error, "projection batch failed; retrying");
                if !sleep_or_shutdown(Duration::from_secs(1), &shutdown).await {
                    break;
                }
            }
        }
    }
    tracing::info!(projection = projection.name(), "projection runner stopped");
}

/// Brings the projection up to every event committed before this call, so
/// a read that follows sees the caller's own writes (read-your-writes).
/// The newest committed event is the target; the projection is caught up
/// here (the checkpoint row lock keeps this in step with the runner) until
/// its checkpoint reaches it. An older transaction still open anywhere in
/// the cluster holds the commit-order rule back, so this may take a few
/// rounds; after `within` it gives up and answers `false` (the read is then
/// merely a little behind).
pub async fn ensure_fresh(
    pool: &PgPool,
    projection: &dyn Projection,
    within: Duration,
) -> Result<bool, ProjectionError> {
    let newest: Option<(i64, i64)> = sqlx::query_as(
        "select tx_id::text::bigint, global_position from events order by tx_id desc, global_position desc limit 1",
    )
    .fetch_optional(pool)
    .await?;
    let Some((tx_id, position)) = newest else { return Ok(true) };
    let target = LogPosition { tx_id, position };
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let at: Option<(i64, i64)> =
            sqlx::query_as("select last_tx, last_position from subscription_checkpoints where subscription = $1")
                .bind(projection.name())
                .fetch_optional(pool)
                .await?;
        let at = at.map_or_else(LogPosition::default, |(tx_id, position)| LogPosition { tx_id, position });
        if at >= target {
            return Ok(true);
        }
        if catch_up(pool, projection).await? == 0 {
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Applies every committed event past the checkpoint; returns how many.
pub async fn catch_up(pool: &PgPool, projection: &dyn Projection) -> Result<usize, ProjectionError> {
    let mut applied = 0;
    loop {
        let n = apply_batch(pool, projection).await?;
        applied += n;
        if n == 0 {
            return Ok(applied);
        }
    }
}

async fn apply_batch(pool: &PgPool, projection: &dyn Projection) -> Result<usize, ProjectionError> {
    let mut tx = pool.begin().await?;
    // The row lock serialises runners (and the rebuild swap) per projection.
    let row = sqlx::query(
        "select schema_name, last_tx, last_position from subscription_checkpoints \
         where subscription = $1 for update",
    )
    .bind(projection.name())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(0);
    };
    let schema: Option<String> = row.try_get("schema_name")?;
    let Some(schema) = schema else {
        return Ok(0);
    };
    let after = LogPosition { tx_id: row.try_get("last_tx")?, position: row.try_get("last_position")? };
    use_schema(&mut tx, &schema).await?;
    let batch = global_log::read_after(&mut tx, after, BATCH).await?;
    let Some(last) = batch.last() else {
        tx.rollback().await?;
        return Ok(0);
    };
    let next = LogPosition::of(last);
    for event in &batch {
        projection.apply(&mut tx, event).await?;
    }
    global_log::save_checkpoint(&mut tx, projection.name(), next).await?;
    tx.commit().await?;
    let lag = (chrono::Utc::now() - last.recorded_at).num_milliseconds().max(0) as f64 / 1000.0;
    metrics::histogram!("projection_lag_seconds", "projection" => projection.name()).record(lag);
    Ok(batch.len())
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
        let batch = global_log::read_after(&mut tx, at, BATCH).await?;
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
        let batch = global_log::read_after(&mut tx, at, BATCH).await?;
        let Some(last) = batch.last() else { break };
        at = LogPosition::of(last);
        for event in &batch {
            projection.apply(&mut tx, event).await?;
        }
        replayed += batch.len();
    }
    point_views_at(&mut tx, projection, &schema).await?;
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
    tracing::info!(projection = projection.name(), schema, replayed, "projection rebuilt and swapped in");
    Ok(replayed)
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
