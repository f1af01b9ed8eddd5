//! Connections the booking path passes from one request to the next.
//!
//! sqlx pings every connection it takes back into its pool (a `Sync` and
//! its `ReadyForQuery`, on a task of its own), with no option to turn it
//! off. On the booking path, two statements long, that ping is a third
//! round trip: a third wake-up of the service and of a PostgreSQL backend
//! per booking. [`Kept`] is a small fair pool inside the pool instead: at
//! most `share` connections of the pool serve its requests, in the order
//! the requests came (a FIFO semaphore), and a request that ends cleanly
//! puts its connection on a shelf for the next one with
//! [`KeptConnection::keep`], no ping. Anything else (an error, a request
//! cancelled mid-statement) drops the connection into the pool as before,
//! where the ping drains whatever the connection was left waiting for.
//!
//! The kept connections stay part of the pool (its size counts them), so
//! the service's connection budget does not change; the pool's other users
//! always have the rest of it. A connection unused for
//! [`PING_WHEN_IDLE_FOR`](super::PING_WHEN_IDLE_FOR) goes back to the pool,
//! and every one goes back the moment the pool closes (a pool waits for
//! its checked-out connections before it is closed).

use std::{
    ops::{Deref, DerefMut},
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::{Duration, Instant},
};

use sqlx::{pool::PoolConnection, PgConnection, PgPool, Postgres};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a kept connection may wait for the next request before it goes
/// back to the pool (after that the pool pings it before use anyway).
pub const KEEP_FOR: Duration = super::PING_WHEN_IDLE_FOR;

type Shelf = Mutex<Vec<(PoolConnection<Postgres>, Instant)>>;

/// Up to `share` connections of `pool`, passed from one request to the next.
#[derive(Clone)]
pub struct Kept {
    pool: PgPool,
    turns: Arc<Semaphore>,
    shelf: Arc<Shelf>,
    /// Wakes the task that hands stale connections back, when the shelf
    /// gets its first connection.
    shelved: Arc<Notify>,
}

impl Kept {
    /// Serves requests with at most `share` connections of `pool` at once.
    /// Spawns the task that hands back connections unused for
    /// [`KEEP_FOR`], and all of them when the pool closes.
    pub fn new(pool: PgPool, share: usize) -> Self {
        let kept = Self {
            pool,
            turns: Arc::new(Semaphore::new(share.max(1))),
            shelf: Arc::default(),
            shelved: Arc::default(),
        };
        tokio::spawn(hand_back_unused(kept.pool.clone(), Arc::downgrade(&kept.shelf), kept.shelved.clone()));
        kept
    }

    /// Waits for this request's turn (first come, first served), then
    /// takes the freshest kept connection, or one from the pool; all
    /// within the pool's acquire timeout, as the pool's own `acquire`.
    pub async fn acquire(&self) -> Result<KeptConnection, sqlx::Error> {
        if self.pool.is_closed() {
            return Err(sqlx::Error::PoolClosed);
        }
        let within = self.pool.options().get_acquire_timeout();
        tokio::time::timeout(within, self.take_turn()).await.map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    async fn take_turn(&self) -> Result<KeptConnection, sqlx::Error> {
        let turn = self.turns.clone().acquire_owned().await.map_err(|_| sqlx::Error::PoolClosed)?;
        let kept = lock(&self.shelf).pop();
        let conn = match kept {
            Some((conn, since)) if since.elapsed() < KEEP_FOR => conn,
            stale => {
                drop(stale);
                self.pool.acquire().await?
            }
        };
        Ok(KeptConnection { conn, home: self.clone(), _turn: turn })
    }

    fn put_back(&self, conn: PoolConnection<Postgres>) {
        if self.pool.is_closed() {
            return;
        }
        let first = {
            let mut shelf = lock(&self.shelf);
            shelf.push((conn, Instant::now()));
            shelf.len() == 1
        };
        if first {
            self.shelved.notify_one();
        }
    }

    /// Connections waiting on the shelf now.
    pub fn on_shelf(&self) -> usize {
        lock(&self.shelf).len()
    }
}

fn lock(shelf: &Shelf) -> MutexGuard<'_, Vec<(PoolConnection<Postgres>, Instant)>> {
    // A push or a pop cannot be left half-done by a panic, so a poisoned
    // lock still guards a good shelf.
    shelf.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Hands the pool back what waited on the shelf for [`KEEP_FOR`], and
/// everything when the pool closes. Sleeps while the shelf is empty; ends
/// with the pool, or within a minute of the last [`Kept`].
async fn hand_back_unused(pool: PgPool, shelf: Weak<Shelf>, shelved: Arc<Notify>) {
    let mut closed = std::pin::pin!(pool.close_event());
    loop {
        // Not held across the waits: the shelf goes with the last `Kept`.
        let Some(oldest) = shelf.upgrade().map(|shelf| lock(&shelf).first().map(|(_, since)| *since)) else {
            return;
        };
        let closing = match oldest {
            Some(since) => tokio::select! {
                () = &mut closed => true,
                () = tokio::time::sleep_until((since + KEEP_FOR).into()) => false,
            },
            // `notify_one` keeps a wake-up given before this wait begins;
            // the timeout looks again whether any `Kept` is left.
            None => tokio::select! {
                () = &mut closed => true,
                _ = tokio::time::timeout(Duration::from_secs(60), shelved.notified()) => continue,
            },
        };
        let Some(shelf) = shelf.upgrade() else { return };
        let stale: Vec<_> = {
            let mut kept = lock(&shelf);
            let fresh_from = if closing {
                kept.len()
            } else {
                kept.iter().position(|(_, since)| since.elapsed() < KEEP_FOR).unwrap_or(kept.len())
            };
            kept.drain(..fresh_from).collect()
        };
        // Dropped outside the lock: each goes back to the pool on a task of its own.
        drop(stale);
        if closing {
            return;
        }
    }
}

/// A connection from [`Kept::acquire`], with the request's turn. Dropped,
/// it goes back to the pool (with sqlx's ping); [`keep`](Self::keep) puts
/// it on the shelf for the next request.
pub struct KeptConnection {
    conn: PoolConnection<Postgres>,
    home: Kept,
    _turn: OwnedSemaphorePermit,
}

impl KeptConnection {
    /// The request ended cleanly (no transaction open, every reply read):
    /// the next request may use the connection as it is.
    pub fn keep(self) {
        let Self { conn, home, _turn } = self;
        home.put_back(conn);
    }
}

impl Deref for KeptConnection {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for KeptConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}
