//! gRPC plumbing both services share: the caller's identity from its
//! verified bearer token, request context into event metadata, binding,
//! and reflection (TLS is `edge::tls`; idempotency keys are [`crate::idempotent`]).

use std::net::SocketAddr;

use tonic::{metadata::MetadataMap, Status};

use edge::{
    auth::{self, AuthUser, Verifier},
    wire::{AUTHORIZATION, REQUEST_ID, TRACEPARENT},
};
use kernel::event_store::EventMetadata;

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
    authenticate_token(verifier, token).await
}

/// The caller named by `token` (a JWT carried in a request's body, as each
/// joiner of a batch is), verified like a bearer token of the metadata.
pub async fn authenticate_token(verifier: &Verifier, token: &str) -> Result<Credentials, Status> {
    match verifier.verify(token).await {
        Ok(user) => Ok(Credentials { user, token: token.to_owned() }),
        Err(error) => {
            tracing::debug!(%error, "gRPC bearer token refused");
            Err(Status::unauthenticated(UNAUTHENTICATED))
        }
    }
}

/// Event metadata from a gRPC request: its request id becomes the
/// correlation and causation id, its traceparent is kept.
pub fn event_metadata(metadata: &MetadataMap, actor: &str) -> EventMetadata {
    let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let request_id = text(REQUEST_ID);
    EventMetadata {
        correlation_id: request_id.clone(),
        causation_id: request_id,
        traceparent: edge::trace_context::current_traceparent().or_else(|| text(TRACEPARENT)),
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
