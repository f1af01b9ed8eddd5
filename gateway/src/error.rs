//! The gateway's one error type: every rejection is JSON `{"error": ...}`
//! with a 4xx/5xx status. gRPC statuses are mapped to HTTP here, once.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use tonic::Code;

/// An HTTP error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// The `error` message.
    pub message: String,
    /// A replayed idempotent outcome (adds `Idempotent-Replayed: true`).
    pub replayed: bool,
    /// Seconds the client should wait before retrying (adds `Retry-After`).
    pub retry_after: Option<u64>,
}

/// The JSON body of every error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for humans.
    pub error: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), replayed: false, retry_after: None }
    }

    /// The same error, telling the client to retry after `secs` seconds.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401 with the contract's message.
    pub fn unauthenticated() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Missing or invalid bearer token.")
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let reason = status.metadata().get(edge::wire::ERROR_REASON).and_then(|v| v.to_str().ok());
        let key_reused = reason == Some(edge::wire::KEY_REUSED_REASON);
        if reason == Some(edge::wire::RETRY_SHORTLY_REASON) {
            return Self::new(StatusCode::SERVICE_UNAVAILABLE, status.message()).retry_after(1);
        }
        let http = match status.code() {
            _ if key_reused => StatusCode::UNPROCESSABLE_ENTITY,
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match http {
            StatusCode::INTERNAL_SERVER_ERROR => {
                tracing::error!(code = ?status.code(), message = status.message(), "service call failed");
                "Internal server error.".to_owned()
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(code = ?status.code(), message = status.message(), "service unavailable");
                "Service temporarily unavailable; please retry.".to_owned()
            }
            _ => status.message().to_owned(),
        };
        let mut error = Self::new(http, message);
        error.replayed = status.metadata().contains_key(edge::wire::REPLAYED);
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorBody { error: self.message })).into_response();
        if self.replayed {
            response.headers_mut().insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
        }
        response
    }
}
