//! Joins, written in batches. Tens of thousands of people join at the
//! opening; one transaction per join would make each of them wait for the
//! commits of everyone ahead. Here one task takes every join that arrived
//! while the previous batch was committing and writes them together: two
//! statements and one commit per batch and performance, whatever its size.
//! A batch's places take the back of the queue in the order they arrived.

use std::collections::{HashMap, HashSet};

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::store::queue::{self, OnSaleRow, PlaceRow};

/// Most joins written in one transaction.
const MOST_PER_BATCH: usize = 2_000;
/// Joins waiting for a batch at most; beyond, a join waits to be queued.
const WAITING_AT_MOST: usize = 50_000;
/// A batch that deadlocked with another writer is tried again this often.
const ATTEMPTS: usize = 3;

/// A joined place as its holder is first told it.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The on-sale, as the batch read it.
    pub onsale: OnSaleRow,
    /// The place.
    pub place: PlaceRow,
    /// Waiting in front, for a waiting place with a position.
    pub ahead: Option<i64>,
    /// Admissions per minute lately (0 before any).
    pub rate: f64,
}

/// What a join gets.
pub type JoinResult = Result<Joined, JoinFailed>;

/// Why a batch could not join its people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinFailed {
    /// The performance has no on-sale.
    NoWaitingRoom,
    /// The database failed (the message says how).
    Database(String),
}

struct Join {
    performance_id: String,
    user_id: String,
    reply: oneshot::Sender<JoinResult>,
}

/// The way in: sends a join to the batching task, started on first use.
#[derive(Default)]
pub struct Joins {
    sender: std::sync::OnceLock<mpsc::Sender<Join>>,
}

impl Joins {
    /// Joins `user_id` to the queue of `performance_id` (idempotent).
    pub async fn join(&self, pool: &PgPool, performance_id: &str, user_id: &str) -> JoinResult {
        let sender = self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(WAITING_AT_MOST);
            tokio::spawn(run(pool.clone(), receiver));
            sender
        });
        let (reply, answer) = oneshot::channel();
        let join = Join { performance_id: performance_id.to_owned(), user_id: user_id.to_owned(), reply };
        if sender.send(join).await.is_err() {
            return Err(JoinFailed::Database("the join writer stopped".into()));
        }
        answer.await.unwrap_or_else(|_| Err(JoinFailed::Database("the join writer stopped".into())))
    }
}

/// The batching task: one batch at a time, so joins that arrive while one
/// commits make up the next.
async fn run(pool: PgPool, mut receiver: mpsc::Receiver<Join>) {
    let mut batch = Vec::with_capacity(MOST_PER_BATCH);
    while receiver.recv_many(&mut batch, MOST_PER_BATCH).await > 0 {
        let mut by_performance: HashMap<String, Vec<Join>> = HashMap::new();
        for join in batch.drain(..) {
            by_performance.entry(join.performance_id.clone()).or_default().push(join);
        }
        for (performance_id, joins) in by_performance {
            write(&pool, &performance_id, joins).await;
        }
    }
}

/// Writes one performance's joins and answers each of them.
async fn write(pool: &PgPool, performance_id: &str, joins: Vec<Join>) {
    // One user may join from two devices at once: written once, both answered.
    let mut seen = HashSet::with_capacity(joins.len());
    let users: Vec<String> =
        joins.iter().filter(|j| seen.insert(j.user_id.as_str())).map(|j| j.user_id.clone()).collect();
    let mut outcome = written(pool, performance_id, &users).await;
    for attempt in 1..ATTEMPTS {
        if !matches!(&outcome, Err(error) if retryable(error)) {
            break;
        }
        tracing::debug!(attempt, "a batch of joins met another writer; trying again");
        outcome = written(pool, performance_id, &users).await;
    }
    let answers = match outcome {
        Ok(Some(batch)) => {
            // Labelled only for a real on-sale: a made-up performance id
            // must not add a metric series.
            metrics::histogram!("waiting_room_join_batch_size", "performance" => performance_id.to_owned())
                .record(users.len() as f64);
            Ok(batch)
        }
        Ok(None) => Err(JoinFailed::NoWaitingRoom),
        Err(error) => {
            tracing::warn!(%error, performance_id, joins = users.len(), "a batch of joins failed");
            Err(JoinFailed::Database(error.to_string()))
        }
    };
    for join in joins {
        let answer = match &answers {
            Ok(batch) => batch
                .places
                .get(&join.user_id)
                .map(|(place, ahead)| Joined {
                    onsale: batch.onsale.clone(),
                    place: place.clone(),
                    ahead: *ahead,
                    rate: batch.rate,
                })
                .ok_or_else(|| JoinFailed::Database("a joined place was not found".into())),
            Err(failed) => Err(failed.clone()),
        };
        let _ = join.reply.send(answer);
    }
}

/// A written batch: the on-sale, each user's place and how many wait in
/// front of it, the admission rate.
struct Batch {
    onsale: OnSaleRow,
    places: HashMap<String, (PlaceRow, Option<i64>)>,
    rate: f64,
}

/// One transaction: the on-sale (none: no waiting room) and the joins;
/// then, for the waiting places, how many are in front.
async fn written(pool: &PgPool, performance_id: &str, users: &[String]) -> Result<Option<Batch>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let Some(onsale) = queue::onsale(&mut tx, performance_id).await? else { return Ok(None) };
    let places = queue::join_many(&mut tx, performance_id, users).await?;
    // Committed before the counting: the on-sale's row, locked when the
    // batch took places at the back, is not held while others are counted.
    tx.commit().await?;
    let waiting: Vec<i64> = if onsale.opened_at.is_some() {
        places.iter().filter(|(_, p)| p.state == "waiting").filter_map(|(_, p)| p.position).collect()
    } else {
        Vec::new()
    };
    let (ahead, rate) = if waiting.is_empty() {
        (Vec::new(), 0.0)
    } else {
        (
            queue::ahead_of_each(&mut conn, performance_id, &waiting).await?,
            queue::admission_rate(&mut conn, performance_id).await?,
        )
    };
    let ahead: HashMap<i64, i64> = waiting.into_iter().zip(ahead).collect();
    let places = places
        .into_iter()
        .map(|(user, place)| {
            let in_front = place.position.filter(|_| place.state == "waiting").and_then(|p| ahead.get(&p).copied());
            (user, (place, in_front))
        })
        .collect();
    Ok(Some(Batch { onsale, places, rate }))
}

/// A deadlock or a serialization failure: the batch may simply run again.
fn retryable(error: &sqlx::Error) -> bool {
    error.as_database_error().and_then(|e| e.code()).is_some_and(|code| code == "40P01" || code == "40001")
}
