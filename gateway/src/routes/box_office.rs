//! What people look at in a browser: the box-office page at `/` (plain
//! HTML and JavaScript compiled into the binary, no CDN, no build step),
//! and, in `ticketing dev` only, `POST /dev/token`, which gives the page a
//! token for a typed-in user name.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, HeaderValue, StatusCode},
    response::{Html, IntoResponse, Response},
    Json,
};
use serde::Deserialize;

use crate::{error::ApiError, json::JsonBody, AppState};

/// The box-office page: plain HTML and JavaScript, served from the binary.
const BOX_OFFICE: &str = include_str!("../../assets/box-office.html");

/// `GET /`: the box-office page.
pub async fn box_office() -> Response {
    let mut response = Html(BOX_OFFICE).into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
        ),
    );
    response
}

/// `POST /dev/token` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevTokenBody {
    /// Who the token is for.
    pub user_id: Option<String>,
}

/// `POST /dev/token`, in `ticketing dev` only: a one-hour token for the
/// user name typed into the box-office page (never an admin).
pub async fn dev_token(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<DevTokenBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(secret) = state.dev_token_secret.as_deref() else {
        return Err(ApiError::not_found("Not found."));
    };
    let user = body.user_id.unwrap_or_default();
    let valid = !user.is_empty()
        && user.len() <= 64
        && user.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(ApiError::bad_request("userId must be 1-64 letters, digits, '_', '-' or '.'."));
    }
    let token = edge::auth::issue_token(secret, &user, false, 3600).map_err(|error| {
        tracing::error!(%error, "signing a dev token");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error.")
    })?;
    Ok(Json(serde_json::json!({ "userId": user, "token": token })))
}
