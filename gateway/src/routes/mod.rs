//! REST handlers, one module per resource of the contract.

pub mod bookings;
pub mod catalog;
pub mod health;
pub mod payments;

use axum::http::HeaderMap;

/// Wraps a gRPC message with the request id and trace context of the HTTP request.
pub fn grpc_request<T>(message: T, headers: &HeaderMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for key in [shared::grpc::REQUEST_ID, shared::grpc::TRACEPARENT] {
        if let Some(value) = headers.get(key).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
            request.metadata_mut().insert(key, value);
        }
    }
    request
}

/// Formats a time the way the seed does: RFC 3339 UTC, seconds precision.
pub fn seed_time(ts: Option<&proto::prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    let time = chrono::DateTime::from_timestamp(ts.seconds, 0)?;
    Some(time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}
