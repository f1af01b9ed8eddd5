//! gRPC plumbing both services share: the caller's identity from its
//! verified bearer token, TLS, request context into event metadata, and a
//! server with health and reflection always registered.

pub mod tls;

use std::net::SocketAddr;

use tonic::{metadata::MetadataMap, Status};

use crate::{
    auth::{self, AuthUser, Verifier},
    event_store::EventMetadata,
};

/// Metadata key of the caller's bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// `error-reason` of a status whose message is for the client as it is:
/// the request is sound but came too early; retry in a second.
pub const RETRY_SHORTLY_REASON: &str = "RETRY_SHORTLY";

/// Marks `status` as [`RETRY_SHORTLY_REASON`].
pub fn retry_shortly(mut status: Status) -> Status {
    if let Ok(value) = RETRY_SHORTLY_REASON.parse() {
        status.metadata_mut().insert(crate::idempotency::ERROR_REASON_METADATA, value);
    }
    status
}

/// The answer to a call without valid credentials.
pub const UNAUTHENTICATED: &str = "Missing or invalid bearer token.";

/// A caller whose bearer token verified.
#[derive(Clone)]
pub struct Credentials {
    /// Who the token names.
    pub user: AuthUser,
    /// The token itself, to forward on calls made for this caller.
    pub token: String,
}

/// The token is a credential: never printed.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("token", &"***").finish()
    }
}

/// The caller named by the request's verified `authorization: Bearer`
/// token; `UNAUTHENTICATED` without one. Nothing in the request body is
/// trusted for identity.
pub async fn authenticate(verifier: &Verifier, metadata: &MetadataMap) -> Result<Credentials, Status> {
    let token = metadata.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(auth::bearer);
    let Some(token) = token else {
        return Err(Status::unauthenticated(UNAUTHENTICATED));
    };
    match verifier.verify(token).await {
        Ok(user) => Ok(Credentials { user, token: token.to_owned() }),
        Err(error) => {
            tracing::debug!(%error, "gRPC bearer token refused");
            Err(Status::unauthenticated(UNAUTHENTICATED))
        }
    }
}

/// Sends `token` as the request's bearer credential.
pub fn forward_bearer<T>(request: &mut tonic::Request<T>, token: &str) {
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert(AUTHORIZATION, value);
    }
}

/// Metadata key of the request id the gateway assigns.
pub const REQUEST_ID: &str = "x-request-id";
/// Metadata key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Event metadata from a gRPC request: its request id becomes the
/// correlation and causation id, its traceparent is kept.
pub fn event_metadata(metadata: &MetadataMap, actor: &str) -> EventMetadata {
    let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let request_id = text(REQUEST_ID);
    EventMetadata {
        correlation_id: request_id.clone(),
        causation_id: request_id,
        traceparent: crate::trace_context::current_traceparent().or_else(|| text(TRACEPARENT)),
        actor: Some(actor.to_owned()),
    }
}

/// Errors binding a gRPC server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("binding gRPC address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reflection could not be built from the descriptor set.
    #[error("building gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Binds `addr` (port 0 picks a free one) and returns the listener and its real address.
pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
    Ok((listener, local))
}

/// The reflection services over the project's descriptor set: v1, and
/// v1alpha for older tools (Evans, older grpcurl builds, IDE plugins).
#[allow(clippy::type_complexity)]
pub fn reflection(
    descriptor_set: &'static [u8],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ServeError,
> {
    let builder =
        || tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(descriptor_set);
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// Idempotency plumbing of the gRPC adapters: one way to claim a key, replay
/// an outcome and settle a failure, for both services.
pub mod idempotent {
    use std::time::Duration;

    use serde::{de::DeserializeOwned, Serialize};
    use sqlx::PgPool;
    use tonic::{metadata::MetadataMap, Code, Status};

    use crate::idempotency::{
        self, Begin, Claim, StoredOutcome, ERROR_REASON_METADATA, KEY_REUSED_REASON, METADATA_KEY, REPLAYED_METADATA,
    };

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
        match metadata.get(METADATA_KEY) {
            None => Ok(None),
            Some(value) => match value.to_str() {
                Ok(key) if idempotency::valid_key(key) => Ok(Some(key.to_owned())),
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
            Begin::InProgress => {
                Step::Answer(Err(Status::aborted("A request with this idempotency key is in progress.")))
            }
            Begin::Mismatch => {
                let mut status = Status::failed_precondition("Idempotency key reused with a different request.");
                if let Ok(value) = KEY_REUSED_REASON.parse() {
                    status.metadata_mut().insert(ERROR_REASON_METADATA, value);
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
                    status.metadata_mut().insert(REPLAYED_METADATA, value);
                }
                Step::Answer(Err(status))
            }
        })
    }

    fn mark_replayed<T>(mut response: tonic::Response<T>) -> tonic::Response<T> {
        if let Ok(value) = "true".parse() {
            response.metadata_mut().insert(REPLAYED_METADATA, value);
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
}
