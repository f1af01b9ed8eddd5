//! Reading the global log in commit-safe order, shared by the outbox relay
//! and the projection runners.
//!
//! `global_position` comes from a sequence, so it is handed out at insert
//! time, not at commit time: a transaction can commit position 7 while
//! position 6's transaction is still open. A reader that remembered "I am at
//! 7" would skip 6 forever. So readers order by the appending transaction's
//! id (`tx_id`, then position) and only read events whose transaction is
//! older than every transaction still running
//! (`tx_id < pg_snapshot_xmin(pg_current_snapshot())`): all of those have
//! finished, so nothing can ever appear behind the reader's checkpoint.

use std::time::Duration;

use sqlx::PgConnection;

use crate::event_store::{stored_event_from_row, EventStoreError, StoredEvent, LOGGED_EVENT_COLUMNS};

/// A reader's place in the global log: the last (tx_id, position) it consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPosition {
    /// The appending transaction id of the last event read.
    pub tx_id: i64,
    /// Its global position.
    pub position: i64,
}

impl LogPosition {
    /// The position just after `event`.
    pub fn of(event: &StoredEvent) -> Self {
        Self { tx_id: event.tx_id, position: event.global_position }
    }
}

/// Reads up to `limit` committed events after `after`, in commit-safe order.
pub async fn read_after(
    conn: &mut PgConnection,
    after: LogPosition,
    limit: i64,
) -> Result<Vec<StoredEvent>, EventStoreError> {
    let rows = sqlx::query(&format!(
        "select {LOGGED_EVENT_COLUMNS} from events \
         where (tx_id, global_position) > ($1::bigint::text::xid8, $2) \
           and tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
         order by tx_id, global_position \
         limit $3"
    ))
    .bind(after.tx_id)
    .bind(after.position)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(stored_event_from_row).collect()
}

/// Loads a subscription's checkpoint, creating it at the start if missing.
pub async fn load_checkpoint(conn: &mut PgConnection, subscription: &str) -> Result<LogPosition, sqlx::Error> {
    sqlx::query("insert into subscription_checkpoints (subscription) values ($1) on conflict do nothing")
        .bind(subscription)
        .execute(&mut *conn)
        .await?;
    let (tx_id, position): (i64, i64) =
        sqlx::query_as("select last_tx, last_position from subscription_checkpoints where subscription = $1")
            .bind(subscription)
            .fetch_one(&mut *conn)
            .await?;
    Ok(LogPosition { tx_id, position })
}

/// Stores a subscription's checkpoint.
pub async fn save_checkpoint(conn: &mut PgConnection, subscription: &str, at: LogPosition) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update subscription_checkpoints set last_tx = $2, last_position = $3, updated_at = now() \
         where subscription = $1",
    )
    .bind(subscription)
    .bind(at.tx_id)
    .bind(at.position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Every commit that appended events in this process, counted. Writers
/// call [`committed`] after their transaction commits; readers (the outbox
/// relay, projections) wait on it. No database trigger is involved: a
/// `pg_notify` in the appending transaction takes a cluster-wide lock at
/// commit and serialises every event-appending commit.
static COMMITS: std::sync::LazyLock<tokio::sync::watch::Sender<u64>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(0));

/// Tells this process's global-log readers that a transaction which
/// appended events has committed.
pub fn committed() {
    COMMITS.send_modify(|n| *n = n.wrapping_add(1));
}

/// Wakes a global-log reader when a transaction of this process that
/// appended events commits, or after `poll` at the latest (events other
/// processes append, a wake-up missed while reading).
pub struct WakeUp {
    commits: tokio::sync::watch::Receiver<u64>,
    poll: Duration,
}

impl WakeUp {
    /// A reader's wake-up, polling every `poll` besides.
    pub fn new(poll: Duration) -> Self {
        Self { commits: COMMITS.subscribe(), poll }
    }

    /// Waits for the next commit (one since the last wait counts) or the
    /// poll interval, whichever is first.
    pub async fn wait(&mut self) {
        let _ = tokio::time::timeout(self.poll, self.commits.changed()).await;
    }
}
