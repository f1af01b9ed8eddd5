//! A JSON body extractor whose every rejection is a 400 (413 never leaks:
//! oversized bodies are a 400 too) with an `{"error": ...}` naming the problem.

use axum::{
    extract::{rejection::JsonRejection, FromRequest, Request},
    http::StatusCode,
};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Like `axum::Json`, with the contract's error shape.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(describe(&rejection)),
        }
    }
}

fn describe(rejection: &JsonRejection) -> ApiError {
    let message = match rejection {
        JsonRejection::MissingJsonContentType(_) => "Content-Type must be application/json.".to_owned(),
        JsonRejection::JsonSyntaxError(e) => format!("Malformed JSON: {}", inner(&e.body_text())),
        JsonRejection::JsonDataError(e) => format!("Invalid request body: {}", inner(&e.body_text())),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            "Request body is too large.".to_owned()
        }
        other => format!("Invalid request body: {}", other.body_text()),
    };
    ApiError::bad_request(message)
}

/// Drops axum's "Failed to deserialize the JSON body into the target type: " prefix.
fn inner(text: &str) -> String {
    text.split_once(": ").map_or(text, |(_, rest)| rest).to_owned()
}
