//! Liveness and readiness.

use std::sync::Arc;

use axum::{extract::State, http::StatusCode, Json};
use serde::Serialize;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
use utoipa::ToSchema;

use crate::AppState;

/// Health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    /// `ok`, or `unavailable` with the failing checks.
    pub status: &'static str,
    /// Checks that failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<&'static str>,
}

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "Health", responses((status = 200, body = HealthBody)))]
pub async fn healthz() -> Json<HealthBody> {
    Json(HealthBody { status: "ok", failing: Vec::new() })
}

/// Ready: both services answer their gRPC health check as serving.
#[utoipa::path(get, path = "/readyz", tag = "Health",
    responses((status = 200, body = HealthBody), (status = 503, body = HealthBody)))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<HealthBody>) {
    let mut failing = Vec::new();
    if state.shutting_down.is_cancelled() {
        failing.push("shutting-down");
    }
    for (name, channel) in [("booking-service", &state.booking_channel), ("payment-service", &state.payment_channel)] {
        let mut client = HealthClient::new(channel.clone());
        let check = client.check(HealthCheckRequest { service: String::new() });
        let serving = tokio::time::timeout(std::time::Duration::from_secs(2), check)
            .await
            .ok()
            .and_then(Result::ok)
            .is_some_and(|r| r.into_inner().status() == ServingStatus::Serving);
        if !serving {
            failing.push(name);
        }
    }
    if failing.is_empty() {
        (StatusCode::OK, Json(HealthBody { status: "ok", failing }))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(HealthBody { status: "unavailable", failing }))
    }
}
