//! Idempotency plumbing of the gRPC adapters: one way to claim a key, replay
//! an outcome and settle a failure, for both services.

use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use sqlx::PgPool;
use tonic::{metadata::MetadataMap, Code, Status};

use edge::wire::{valid_idempotency_key, ERROR_REASON, IDEMPOTENCY_KEY, KEY_REUSED_REASON, REPLAYED};

use crate::idempotency::{self, Begin, Claim, StoredOutcome};

/// How long an in-flight claim is protected before another request may take it over.
pub const LEASE: Duration = Duration::from_secs(60);

/// What a handler should do after looking at the key.
pub enum Step<T> {
    /// Run the command (with the claim, if a key was sent).
    Run(Option<Claim>),
    /// Answer with this replayed result.
    Answer(Result<tonic::Response<T>, Status>),
}

/// The Idempotency-Key sent with the request, validated.
pub fn key(metadata: &MetadataMap) -> Result<Option<String>, Status> {
    match metadata.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(value) => match value.to_str() {
            Ok(key) if valid_idempotency_key(key) => Ok(Some(key.to_owned())),
            _ => Err(Status::invalid_argument("Idempotency-Key must be 1-255 visible ASCII characters.")),
        },
    }
}

/// Claims the key or produces the answer (replay, in progress, mismatch).
pub async fn start<T, R>(
    pool: &PgPool,
    metadata: &MetadataMap,
    scope: &str,
    operation: &'static str,
    fingerprint: &str,
    to_response: impl FnOnce(R) -> T,
) -> Result<Step<T>, Status>
where
    R: DeserializeOwned,
{
    let Some(key) = key(metadata)? else {
        return Ok(Step::Run(None));
    };
    let begun = idempotency::begin(pool, scope, operation, &key, fingerprint, LEASE).await.map_err(internal)?;
    Ok(match begun {
        Begin::Proceed(claim) => Step::Run(Some(claim)),
        Begin::InProgress => Step::Answer(Err(Status::aborted("A request with this idempotency key is in progress."))),
        Begin::Mismatch => {
            let mut status = Status::failed_precondition("Idempotency key reused with a different request.");
            if let Ok(value) = KEY_REUSED_REASON.parse() {
                status.metadata_mut().insert(ERROR_REASON, value);
            }
            Step::Answer(Err(status))
        }
        Begin::Replay(StoredOutcome::Ok { value }) => {
            let result = serde_json::from_value::<R>(value)
                .map_err(|e| internal(format!("stored idempotent response does not decode: {e}")))
                .map(|r| mark_replayed(tonic::Response::new(to_response(r))));
            Step::Answer(result)
        }
        Begin::Replay(StoredOutcome::Err { code, message }) => {
            let mut status = Status::new(Code::from_i32(code), message);
            if let Ok(value) = "true".parse() {
                status.metadata_mut().insert(REPLAYED, value);
            }
            Step::Answer(Err(status))
        }
    })
}

fn mark_replayed<T>(mut response: tonic::Response<T>) -> tonic::Response<T> {
    if let Ok(value) = "true".parse() {
        response.metadata_mut().insert(REPLAYED, value);
    }
    response
}

/// The stored form of a successful result.
pub fn ok_outcome<R: Serialize>(result: &R) -> Result<StoredOutcome, serde_json::Error> {
    Ok(StoredOutcome::Ok { value: serde_json::to_value(result)? })
}

/// Settles the claim of a command that failed with `status`: final
/// refusals are stored (and replayed); retryable failures release the key.
/// NotFound is retryable: a payment intent, say, arrives over Kafka.
pub async fn settle_failure(pool: &PgPool, claim: Option<&Claim>, status: &Status) {
    let Some(claim) = claim else { return };
    let business = matches!(
        status.code(),
        Code::InvalidArgument
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
    );
    let settled = if business {
        let outcome = StoredOutcome::Err { code: status.code() as i32, message: status.message().to_owned() };
        async {
            let mut conn = pool.acquire().await?;
            idempotency::complete(&mut conn, claim, &outcome).await
        }
        .await
    } else {
        idempotency::release(pool, claim).await
    };
    if let Err(error) = settled {
        tracing::warn!(%error, "settling an idempotency key");
    }
}

fn internal(error: impl std::fmt::Display) -> Status {
    tracing::error!(%error, "idempotency store failed");
    Status::internal("Internal server error.")
}
