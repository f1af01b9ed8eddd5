//! The REST edge of authentication: the `AuthUser` extractor verifies the
//! `Authorization: Bearer` token with the shared verifier
//! ([`edge::auth`]), the same one each service runs again on the token the
//! gateway forwards in gRPC metadata.

use std::sync::Arc;

use crate::{error::ApiError, state::AppState};
use axum::{extract::FromRequestParts, http::request::Parts};

/// The caller of a REST request, named by its verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser(pub edge::auth::AuthUser);

impl std::ops::Deref for AuthUser {
    type Target = edge::auth::AuthUser;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl FromRequestParts<Arc<AppState>> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        // Verified already before the request took its place in line.
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(user.clone());
        }
        Self::from_headers(&parts.headers, state).await
    }
}

/// The `Authorization: Bearer` token of `headers`, unverified.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(edge::auth::bearer)
}

impl AuthUser {
    /// The caller named by the `Authorization: Bearer` token of `headers`.
    pub async fn from_headers(headers: &axum::http::HeaderMap, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(headers).ok_or_else(ApiError::unauthenticated)?;
        state.auth.verify(token).await.map(AuthUser).map_err(|error| {
            tracing::debug!(%error, "bearer token refused");
            ApiError::unauthenticated()
        })
    }
}
