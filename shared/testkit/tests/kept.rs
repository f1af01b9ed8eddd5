//! `runtime::db::Kept`: connections passed from one request to the next
//! without going back through the pool, against a real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use runtime::db::{Kept, KEEP_FOR};
use sqlx::{postgres::PgPoolOptions, PgConnection, PgPool};

/// A pool of `size` connections on a fresh database.
async fn pool_of(size: u32) -> PgPool {
    let fresh = common::fresh_db("kept").await;
    let options = fresh.connect_options().as_ref().clone();
    PgPoolOptions::new().max_connections(size).connect_with(options).await.expect("pool")
}

/// Waits up to a second for the pool to hold one idle connection (a
/// connection dropped goes back on a task of its own, after sqlx's ping).
async fn idle_soon(pool: &PgPool) {
    for _ in 0..50 {
        if pool.num_idle() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn backend(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("select pg_backend_pid()").fetch_one(conn).await.expect("pid")
}

#[tokio::test]
async fn a_kept_connection_serves_the_next_request_as_it_is() {
    let pool = pool_of(4).await;
    let kept = Kept::new(pool.clone(), 2);
    let mut first = kept.acquire().await.expect("acquire");
    let pid = backend(&mut first).await;
    first.keep();
    assert_eq!(kept.on_shelf(), 1);
    // Still checked out of the pool: it never went back, so no ping either.
    assert_eq!(pool.num_idle(), 0);

    let mut second = kept.acquire().await.expect("acquire");
    assert_eq!(kept.on_shelf(), 0);
    assert_eq!(backend(&mut second).await, pid, "the same session serves the next request");
}

#[tokio::test]
async fn a_connection_not_kept_goes_back_to_the_pool() {
    let pool = pool_of(4).await;
    let kept = Kept::new(pool.clone(), 2);
    let mut conn = kept.acquire().await.expect("acquire");
    // A request that fails (or is cancelled) mid-transaction just drops it.
    let tx = sqlx::Connection::begin(&mut *conn).await.expect("begin");
    drop(tx);
    drop(conn);
    assert_eq!(kept.on_shelf(), 0);
    idle_soon(&pool).await;
    assert_eq!(pool.num_idle(), 1, "the pool took it back (and rolled it back)");
    let mut again = kept.acquire().await.expect("acquire");
    // SAVEPOINT is refused outside a transaction block.
    let savepoint = sqlx::query("savepoint probe").execute(&mut *again).await;
    assert!(savepoint.is_err(), "no transaction is left open on it");
}

#[tokio::test]
async fn requests_beyond_the_share_wait_their_turn_and_the_pool_keeps_the_rest() {
    let pool = pool_of(2).await;
    let kept = Kept::new(pool.clone(), 1);
    let mut first = kept.acquire().await.expect("acquire");
    let pid = backend(&mut first).await;

    let waiting = tokio::spawn({
        let kept = kept.clone();
        async move {
            let mut conn = kept.acquire().await.expect("acquire");
            backend(&mut conn).await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "a second request waits for the share of one");
    // The pool's other users still have the other connection.
    let mut other = tokio::time::timeout(Duration::from_secs(2), pool.acquire()).await.expect("not starved").unwrap();
    assert_ne!(backend(&mut other).await, pid);

    first.keep();
    let served_by = tokio::time::timeout(Duration::from_secs(2), waiting).await.expect("its turn came").unwrap();
    assert_eq!(served_by, pid, "the waiting request got the kept connection");
}

#[tokio::test]
async fn a_kept_connection_unused_for_a_while_goes_back_to_the_pool() {
    let pool = pool_of(2).await;
    let kept = Kept::new(pool.clone(), 2);
    kept.acquire().await.expect("acquire").keep();
    assert_eq!(kept.on_shelf(), 1);
    tokio::time::sleep(KEEP_FOR + Duration::from_millis(500)).await;
    assert_eq!(kept.on_shelf(), 0);
    idle_soon(&pool).await;
    assert_eq!(pool.num_idle(), 1);
}

#[tokio::test]
async fn the_pool_closes_with_connections_on_the_shelf() {
    let pool = pool_of(2).await;
    let kept = Kept::new(pool.clone(), 2);
    let (a, b) = (kept.acquire().await.expect("a"), kept.acquire().await.expect("b"));
    a.keep();
    b.keep();
    assert_eq!(kept.on_shelf(), 2);
    tokio::time::timeout(Duration::from_secs(5), pool.close()).await.expect("close does not wait for kept connections");
    assert_eq!(kept.on_shelf(), 0);
    assert!(kept.acquire().await.is_err(), "a closed pool serves nothing");
}
