//! What a request must pass before it may take one of the gateway's
//! in-flight slots: its whole body within `GATEWAY_BODY_READ_TIMEOUT_MS`
//! (so a thousand connections trickling bodies hold no slot, and everyone
//! else is served), and, on the writes that hold seats or move money, its
//! user's rate limit. The token those writes carry is verified here once;
//! the handler's `AuthUser` reuses the result.

use std::{future::Future, time::Duration};

use axum::{
    body::Body,
    extract::Request,
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
};

use crate::{auth::AuthUser, error::ApiError, state::AppState};

/// Request bodies above this are refused with 400 (docs/API.md).
pub const BODY_LIMIT: usize = 64 * 1024;
/// `POST /performances` accepts up to 1 MiB.
pub const PERFORMANCE_BODY_LIMIT: usize = 1024 * 1024;

/// Routes whose requests count against their user's rate limit.
fn rate_limited(method: &Method, path: &str) -> Option<&'static str> {
    match (method, path) {
        (&Method::POST, "/bookings") => Some("POST /bookings"),
        (&Method::POST, "/payments/execute") => Some("POST /payments/execute"),
        _ => None,
    }
}

/// Reads the body (bounded in size and time) and applies the user's rate
/// limit, then hands the request on to the in-flight line (`next`).
pub async fn admit<F, Fut>(state: &AppState, request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let (mut parts, body) = request.into_parts();
    if let Some(route) = rate_limited(&parts.method, parts.uri.path()) {
        // An invalid token is answered 401 by the handler, after the line.
        if let Ok(user) = AuthUser::from_headers(&parts.headers, state).await {
            if let Err(refused) = state.rate_limit.check(&user.user_id, route) {
                return refused.into_response();
            }
            parts.extensions.insert(user);
        }
    }
    let limit = body_limit(&parts.uri);
    let body = match read_body(body, limit, state.body_read_timeout).await {
        Ok(body) => body,
        Err(refused) => return refused.into_response(),
    };
    next(Request::from_parts(parts, body)).await
}

/// The largest body a route accepts.
fn body_limit(uri: &axum::http::Uri) -> usize {
    if uri.path() == "/performances" {
        PERFORMANCE_BODY_LIMIT
    } else {
        BODY_LIMIT
    }
}

/// The whole body, at most `limit` bytes, within `timeout`.
async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Body, ApiError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(Body::from(bytes)),
        Ok(Err(error)) => {
            let too_large =
                std::error::Error::source(&error).is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            Err(ApiError::bad_request(if too_large {
                "Request body is too large."
            } else {
                "The request body could not be read."
            }))
        }
        Err(_) => {
            metrics::counter!("http_requests_body_timed_out_total").increment(1);
            Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "The request body was not received in time."))
        }
    }
}
