//! Idempotency keys (docs/API.md, "Conventions"): the same key and request within the
//! retention replays the first outcome; another request under the key is
//! refused; a request still in flight is refused. Scoped per caller.
//!
//! `begin` claims the key in its own short transaction (so a concurrent
//! duplicate sees it at once); the command then stores its outcome with
//! `complete` inside its own transaction, atomically with its events.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

/// A stored outcome: a success payload or an error (gRPC code + message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredOutcome {
    /// The use case's result, serialised by the service.
    Ok {
        /// The result.
        value: serde_json::Value,
    },
    /// A business refusal.
    Err {
        /// `tonic::Code` as an integer.
        code: i32,
        /// The client-facing message.
        message: String,
    },
}

/// A claimed key; pass it to [`complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    scope: String,
    operation: &'static str,
    key: String,
    fingerprint: String,
}

impl Claim {
    /// The claim of `key` by `scope` for `operation` of the request
    /// `fingerprint`, for a process that settles it on another's behalf
    /// (e.g. a reconciler after a crash).
    pub fn resume(scope: &str, operation: &'static str, key: &str, fingerprint: &str) -> Self {
        Self { scope: scope.to_owned(), operation, key: key.to_owned(), fingerprint: fingerprint.to_owned() }
    }

    /// The client's key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// What `begin` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Run the command, then `complete` the claim.
    Proceed(Claim),
    /// Answer with this earlier outcome.
    Replay(StoredOutcome),
    /// The same key is being executed right now.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
}

/// Claims `key` for `fingerprint`, or reports what is already there.
pub async fn begin(
    pool: &PgPool,
    scope: &str,
    operation: &'static str,
    key: &str,
    fingerprint: &str,
    lease: Duration,
) -> Result<Begin, sqlx::Error> {
    let lease_secs = f64::from(u32::try_from(lease.as_secs()).unwrap_or(u32::MAX));
    let claimed = sqlx::query(
        "insert into idempotency_keys (scope, operation, idempotency_key, fingerprint, state, lease_until) \
         values ($1, $2, $3, $4, 'in_flight', now() + make_interval(secs => $5)) on conflict do nothing",
    )
    .bind(scope)
    .bind(operation)
    .bind(key)
    .bind(fingerprint)
    .bind(lease_secs)
    .execute(pool)
    .await?
    .rows_affected()
        == 1;
    let claim = Claim::resume(scope, operation, key, fingerprint);
    if claimed {
        return Ok(Begin::Proceed(claim));
    }
    let row: Option<(String, String, Option<serde_json::Value>, bool)> = sqlx::query_as(
        "select fingerprint, state, response, lease_until <= now() from idempotency_keys \
         where scope = $1 and operation = $2 and idempotency_key = $3",
    )
    .bind(scope)
    .bind(operation)
    .bind(key)
    .fetch_optional(pool)
    .await?;
    let Some((stored_fingerprint, state, response, lease_lapsed)) = row else {
        // Purged between the two statements: try once more from scratch.
        return Box::pin(begin(pool, scope, operation, key, fingerprint, lease)).await;
    };
    if stored_fingerprint != fingerprint {
        return Ok(Begin::Mismatch);
    }
    match (state.as_str(), response) {
        ("done", Some(response)) => match serde_json::from_value(response) {
            Ok(outcome) => Ok(Begin::Replay(outcome)),
            Err(_) => Ok(Begin::InProgress),
        },
        _ if lease_lapsed => {
            // The holder died mid-flight: take the claim over.
            let taken = sqlx::query(
                "update idempotency_keys set lease_until = now() + make_interval(secs => $4) \
                 where scope = $1 and operation = $2 and idempotency_key = $3 \
                   and state = 'in_flight' and lease_until <= now()",
            )
            .bind(scope)
            .bind(operation)
            .bind(key)
            .bind(lease_secs)
            .execute(pool)
            .await?
            .rows_affected()
                == 1;
            Ok(if taken { Begin::Proceed(claim) } else { Begin::InProgress })
        }
        _ => Ok(Begin::InProgress),
    }
}

/// Stores the outcome of a claimed key on `conn` (inside the command's
/// transaction). The record is written even if the claim was lost in the
/// meantime (a retry took it over and gave it up), so an outcome that
/// happened, such as a charge the reconciler settled, is never forgotten.
pub async fn complete(conn: &mut PgConnection, claim: &Claim, outcome: &StoredOutcome) -> Result<(), sqlx::Error> {
    let response = serde_json::to_value(outcome).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "insert into idempotency_keys (scope, operation, idempotency_key, fingerprint, state, response, lease_until) \
         values ($1, $2, $3, $4, 'done', $5, now()) \
         on conflict (scope, operation, idempotency_key) do update set state = 'done', response = excluded.response \
          where idempotency_keys.fingerprint = excluded.fingerprint",
    )
    .bind(&claim.scope)
    .bind(claim.operation)
    .bind(&claim.key)
    .bind(&claim.fingerprint)
    .bind(response)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets a claim whose command failed for a retryable reason, so a retry runs it.
pub async fn release(pool: &PgPool, claim: &Claim) -> Result<(), sqlx::Error> {
    sqlx::query(
        "delete from idempotency_keys where scope = $1 and operation = $2 and idempotency_key = $3 and state = 'in_flight'",
    )
    .bind(&claim.scope)
    .bind(claim.operation)
    .bind(&claim.key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes records older than `retention`; returns how many.
pub async fn purge(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let secs = f64::from(u32::try_from(retention.as_secs()).unwrap_or(u32::MAX));
    Ok(sqlx::query("delete from idempotency_keys where created_at < now() - make_interval(secs => $1)")
        .bind(secs)
        .execute(pool)
        .await?
        .rows_affected())
}

/// How long keys are remembered (docs/API.md: 24 h).
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Purges expired keys hourly until `shutdown`.
pub async fn run_purge(pool: PgPool, shutdown: edge::shutdown::Shutdown) {
    loop {
        match purge(&pool, RETENTION).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "purged expired idempotency keys"),
            Err(error) => tracing::warn!(%error, "purging idempotency keys"),
        }
        if !edge::shutdown::sleep_or_shutdown(Duration::from_secs(3600), &shutdown).await {
            return;
        }
    }
}
