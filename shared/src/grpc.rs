//! gRPC plumbing both services share: request context into event metadata,
//! and a server with health and reflection always registered.

use std::net::SocketAddr;

use tonic::metadata::MetadataMap;

use crate::event_store::EventMetadata;

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
        traceparent: text(TRACEPARENT),
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

/// The reflection service over the project's descriptor set.
pub fn reflection(
    descriptor_set: &'static [u8],
) -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    ServeError,
> {
    Ok(tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(descriptor_set)
        .build_v1()?)
}
