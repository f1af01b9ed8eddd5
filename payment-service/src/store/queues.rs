//! The payment-service's two work queues, written in the transactions of
//! the events that open and close them: `pending_charges` (attempts whose
//! PSP answer is not recorded yet, for the reconciler) and
//! `pending_refunds` (refunds the worker still has to make).
//!
//! Workers take items by pushing their due time forward (a lease) in one
//! statement with `for update skip locked`: replicas never work on one
//! item at the same time, and no lock outlives the statement, so nothing
//! can leak onto a pooled connection.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// An attempt the reconciler should settle.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DueCharge {
    /// The intent.
    pub payment_intent_id: String,
    /// The attempt.
    pub attempt: i32,
    /// Its PSP idempotency key.
    pub attempt_key: String,
}

/// Opens the attempt (with `ChargeRequested`).
pub async fn open_charge(
    conn: &mut PgConnection,
    payment_intent_id: &str,
    attempt: i32,
    attempt_key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into pending_charges (payment_intent_id, attempt, attempt_key) values ($1, $2, $3) \
         on conflict (payment_intent_id) do update \
           set attempt = excluded.attempt, attempt_key = excluded.attempt_key, \
               requested_at = now(), leased_until = null",
    )
    .bind(payment_intent_id)
    .bind(attempt)
    .bind(attempt_key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Closes the attempt (with its outcome or abandonment).
pub async fn close_charge(conn: &mut PgConnection, payment_intent_id: &str, attempt: i32) -> Result<(), sqlx::Error> {
    sqlx::query("delete from pending_charges where payment_intent_id = $1 and attempt = $2")
        .bind(payment_intent_id)
        .bind(attempt)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes up to `limit` attempts requested more than `grace` ago (so no
/// live execute is still working on them), leasing them for `lease`.
pub async fn take_due_charges(
    pool: &PgPool,
    limit: i64,
    grace: Duration,
    lease: Duration,
) -> Result<Vec<DueCharge>, sqlx::Error> {
    sqlx::query_as(
        "update pending_charges set leased_until = now() + make_interval(secs => $3) \
         where payment_intent_id in ( \
           select payment_intent_id from pending_charges \
           where requested_at <= now() - make_interval(secs => $2) \
             and (leased_until is null or leased_until <= now()) \
           order by requested_at limit $1 for update skip locked) \
         returning payment_intent_id, attempt, attempt_key",
    )
    .bind(limit)
    .bind(secs(grace))
    .bind(secs(lease))
    .fetch_all(pool)
    .await
}

/// Opens a refund, due now.
pub async fn open_refund(conn: &mut PgConnection, payment_intent_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("insert into pending_refunds (payment_intent_id, due_at) values ($1, now()) on conflict do nothing")
        .bind(payment_intent_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a failed refund attempt and when to try next.
pub async fn retry_refund_after(
    conn: &mut PgConnection,
    payment_intent_id: &str,
    attempts: i32,
    delay: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update pending_refunds set attempts = $2, due_at = now() + make_interval(secs => $3) \
         where payment_intent_id = $1",
    )
    .bind(payment_intent_id)
    .bind(attempts)
    .bind(secs(delay))
    .execute(conn)
    .await?;
    Ok(())
}

/// Closes a refund (made, or left for review).
pub async fn close_refund(conn: &mut PgConnection, payment_intent_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("delete from pending_refunds where payment_intent_id = $1")
        .bind(payment_intent_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes up to `limit` due refunds, leasing them for `lease`.
pub async fn take_due_refunds(pool: &PgPool, limit: i64, lease: Duration) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "update pending_refunds set due_at = now() + make_interval(secs => $2) \
         where payment_intent_id in ( \
           select payment_intent_id from pending_refunds where due_at <= now() \
           order by due_at limit $1 for update skip locked) \
         returning payment_intent_id",
    )
    .bind(limit)
    .bind(secs(lease))
    .fetch_all(pool)
    .await
}

/// The intent of the booking `booking_id` (booking events name the booking).
pub async fn intent_of_booking(conn: &mut PgConnection, booking_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select stream_id from events where stream_type = $1 and stream_version = 1 \
           and payload->>'booking_id' = $2 limit 1",
    )
    .bind(<crate::domain::intent::PaymentIntent as kernel::aggregate::Aggregate>::STREAM_TYPE)
    .bind(booking_id)
    .fetch_optional(conn)
    .await
}
