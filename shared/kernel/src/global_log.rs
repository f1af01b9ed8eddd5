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

use sqlx::{PgConnection, Row};

use crate::event_store::{
    stored_event_from_row, EventStoreError, StoredEvent, LOGGED_EVENT_COLUMNS, MAX_EVENTS_PER_TRANSACTION,
};

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

/// What one read of the log found.
#[derive(Debug, Default)]
pub struct LogRead {
    /// Committed events past the reader's place, in commit-safe order.
    pub events: Vec<StoredEvent>,
    /// Committed events exist past these that an older, still open
    /// transaction holds back. That transaction may belong to another
    /// database of the cluster (transaction ids are cluster-wide), whose
    /// commit wakes nobody here, so the reader should look again soon
    /// ([`WakeUp::held_back`]).
    pub held_back: bool,
}

/// Reads up to `limit` committed events after `after`, in commit-safe order.
pub async fn read_after(conn: &mut PgConnection, after: LogPosition, limit: i64) -> Result<LogRead, EventStoreError> {
    // One statement, so one snapshot: the events before the horizon, and
    // whether a committed event waits past it. An event past the horizon
    // is past the reader's place too (the reader read below an earlier,
    // lower horizon), so that probe starts at the horizon (or after the
    // reader's transaction) and reads one index entry.
    let rows = sqlx::query(&format!(
        "select held.held_back, e.* from \
           (select (select tx_id from events \
              where tx_id >= greatest(pg_snapshot_xmin(pg_current_snapshot()), $4::bigint::text::xid8) \
              order by tx_id limit 1) is not null as held_back) held \
         left join lateral \
           (select {LOGGED_EVENT_COLUMNS} from events \
              where (tx_id, global_position) > ($1::bigint::text::xid8, $2) \
                and tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
              order by tx_id, global_position \
              limit $3) e on true \
         order by e.tx_id, e.global_position"
    ))
    .bind(after.tx_id)
    .bind(after.position)
    .bind(limit)
    .bind(after.tx_id.saturating_add(1))
    .fetch_all(&mut *conn)
    .await?;
    let mut read = LogRead::default();
    for row in &rows {
        read.held_back = row.try_get("held_back")?;
        // With nothing to read, the one row has no event.
        if row.try_get::<Option<i64>, _>("global_position")?.is_some() {
            read.events.push(stored_event_from_row(row)?);
        }
    }
    Ok(read)
}

/// The reader's place just after the event at `position` (an event's
/// [`crate::event_store::log_position`], as a subscriber of the event feed
/// remembers it); 0 is the start. A position no event has puts the reader
/// after every event of that position's transaction.
pub async fn after_log_position(conn: &mut PgConnection, position: i64) -> Result<LogPosition, sqlx::Error> {
    if position <= 0 {
        return Ok(LogPosition::default());
    }
    let tx_id = position / MAX_EVENTS_PER_TRANSACTION;
    let rank = position % MAX_EVENTS_PER_TRANSACTION;
    let found: Option<i64> = sqlx::query_scalar(
        "select global_position from events where tx_id = $1::bigint::text::xid8 \
          order by global_position offset $2 limit 1",
    )
    .bind(tx_id)
    .bind(rank)
    .fetch_optional(conn)
    .await?;
    Ok(LogPosition { tx_id, position: found.unwrap_or(i64::MAX) })
}

/// The place after the last event a reader can see now (the start of an
/// empty log): where a live-only reader begins.
pub async fn log_end(conn: &mut PgConnection) -> Result<LogPosition, sqlx::Error> {
    let last: Option<(i64, i64)> = sqlx::query_as(
        "select tx_id::text::bigint, global_position from events \
          where tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
          order by tx_id desc, global_position desc limit 1",
    )
    .fetch_optional(conn)
    .await?;
    Ok(last.map(|(tx_id, position)| LogPosition { tx_id, position }).unwrap_or_default())
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

/// The channel on which processes tell each other's log readers that
/// events were committed (database-wide: each service has its own database).
pub const CHANNEL: &str = "ticketing_events_committed";

/// How long commits are gathered into one notification.
const NOTIFY_GATHER: Duration = Duration::from_millis(10);

/// Tells the log readers of other processes on `pool`'s database that
/// this process committed events: one `NOTIFY`, after the commits, for the
/// commits of every [`NOTIFY_GATHER`] (never inside an appending
/// transaction). Skipped while `reader_here` says this process holds the
/// database's relay, which its in-process wake-up already reaches.
pub async fn tell_other_processes(
    pool: sqlx::PgPool,
    reader_here: std::sync::Arc<std::sync::atomic::AtomicBool>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut commits = COMMITS.subscribe();
    loop {
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = shutdown.cancelled() => return,
        }
        if reader_here.load(std::sync::atomic::Ordering::Relaxed) {
            continue;
        }
        tokio::time::sleep(NOTIFY_GATHER).await;
        commits.borrow_and_update();
        if let Err(error) = sqlx::query("select pg_notify($1, '')").bind(CHANNEL).execute(&pool).await {
            tracing::debug!(%error, "telling other processes about new events");
        }
    }
}

/// Wakes a global-log reader when a transaction of this process that
/// appended events commits, when another process says it did (`LISTEN`),
/// or after `poll` at the latest (a notification lost while reconnecting).
pub struct WakeUp {
    commits: tokio::sync::watch::Receiver<u64>,
    listener: Option<sqlx::postgres::PgListener>,
    poll: Duration,
    /// While the last read was held back: how soon to look again.
    retry: Option<Duration>,
}

/// The first look again after a held-back read; it doubles up to
/// [`HELD_BACK_RETRY_MAX`] while the log stays held back.
const HELD_BACK_RETRY_FIRST: Duration = Duration::from_millis(5);
const HELD_BACK_RETRY_MAX: Duration = Duration::from_millis(200);

impl WakeUp {
    /// A reader's wake-up from this process's commits, polling every `poll` besides.
    pub fn new(poll: Duration) -> Self {
        Self { commits: COMMITS.subscribe(), listener: None, poll, retry: None }
    }

    /// Also woken by other processes' commits on `pool`'s database (if it
    /// cannot listen, it polls as [`WakeUp::new`] does).
    pub async fn listening(pool: &sqlx::PgPool, poll: Duration) -> Self {
        let mut wake = Self::new(poll);
        let listener = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listener.await {
            Ok(listener) => wake.listener = Some(listener),
            Err(error) => tracing::warn!(%error, "cannot LISTEN for other processes' events; polling"),
        }
        wake
    }

    /// Tells the wake-up what the last read found: while an open
    /// transaction holds committed events back, [`WakeUp::wait`] returns
    /// after a short, growing delay instead of the poll interval.
    pub fn held_back(&mut self, held_back: bool) {
        self.retry = held_back.then(|| {
            self.retry.map_or(HELD_BACK_RETRY_FIRST, |last| (last * 2).min(HELD_BACK_RETRY_MAX)).min(self.poll)
        });
    }

    /// Waits for the next commit (one since the last wait counts), another
    /// process's notification, or the poll interval (shorter while the log
    /// is held back), whichever is first.
    pub async fn wait(&mut self) {
        let Self { commits, listener, poll, retry } = self;
        let poll = retry.unwrap_or(*poll);
        let notified = async {
            match listener.as_mut() {
                // A lost connection is re-established by the next `try_recv`.
                Some(listener) => {
                    if listener.try_recv().await.is_err() {
                        tokio::time::sleep(poll).await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = commits.changed() => {}
            () = notified => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}
