//! Between an HTTP request and the gRPC calls it makes: the caller's token,
//! request id, trace context and Idempotency-Key go along; replays and
//! times come back in the contract's form.

use axum::http::HeaderMap;

/// Wraps a gRPC message with the request id and trace context of the HTTP request.
pub fn grpc_request<T>(message: T, headers: &HeaderMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    // The caller's own token (verified by the `AuthUser` extractor): the
    // services verify it again and take the caller from it, not from us.
    if let Some(token) = crate::auth::bearer_token(headers) {
        edge::wire::forward_bearer(&mut request, token);
    }
    if let Some(value) = headers.get(edge::wire::REQUEST_ID).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
    {
        request.metadata_mut().insert(edge::wire::REQUEST_ID, value);
    }
    // The handler runs inside the request's span: its context goes along.
    edge::trace_context::inject_grpc(request.metadata_mut());
    request
}

/// Like [`grpc_request`], also forwarding a valid `Idempotency-Key` (400 if malformed).
pub fn idempotent_grpc_request<T>(
    message: T,
    headers: &HeaderMap,
) -> Result<tonic::Request<T>, crate::error::ApiError> {
    let mut request = grpc_request(message, headers);
    if let Some(value) = headers.get("idempotency-key") {
        let key = value.to_str().ok().filter(|k| edge::wire::valid_idempotency_key(k));
        let Some(key) = key.and_then(|k| k.parse().ok()) else {
            return Err(crate::error::ApiError::bad_request("Idempotency-Key must be 1-255 visible ASCII characters."));
        };
        request.metadata_mut().insert(edge::wire::IDEMPOTENCY_KEY, key);
    }
    Ok(request)
}

/// `Idempotent-Replayed: true` when the service replayed a stored outcome.
pub fn replay_headers(metadata: &tonic::metadata::MetadataMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if metadata.contains_key(edge::wire::REPLAYED) {
        headers.insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
    }
    headers
}

/// Formats a time the way the seed does: RFC 3339 UTC, seconds precision.
pub fn seed_time(ts: Option<&proto::prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    let time = chrono::DateTime::from_timestamp(ts.seconds, 0)?;
    Some(time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}
