//! `POST /payments/execute`.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use proto::payment as pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::upstream::{grpc_request, idempotent_grpc_request, replay_headers, seed_time};
use crate::{auth::AuthUser, error::ApiError, json::JsonBody, AppState};

/// `POST /payments/execute` body. The CVV is passed on to the gateway only.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutePaymentBody {
    /// From `POST /bookings`.
    #[schema(example = "i0do0nHZSn4TZr0tKOa9")]
    pub payment_intent_id: Option<String>,
    /// A payment method token of the simulated PSP, e.g. `tok_visa_creditCard`.
    #[schema(example = "tok_visa_creditCard")]
    pub payment_method_token: Option<String>,
    /// 3 or 4 digits.
    #[schema(example = "123")]
    pub cvv: Option<String>,
}

/// `POST /payments/execute` as the server checks it (the body above is
/// lenient so that a missing field gets the contract's message). The token
/// must also be one the PSP issued, and the PSP may decline: both are 400s,
/// as the contract says.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct ExecutePayment {
    /// From `POST /bookings`.
    #[schema(example = "01a22c6a-1e1b-74bf-bc5f-6220fbd251c3", min_length = 1, max_length = 128, pattern = "\\S")]
    payment_intent_id: String,
    /// A payment method token of the PSP, e.g. `tok_visa`.
    #[schema(example = "tok_visa", min_length = 1, max_length = 256, pattern = "\\S")]
    payment_method_token: String,
    /// 3 or 4 digits.
    #[schema(example = "123", pattern = "^[0-9]{3,4}$")]
    cvv: String,
}

/// What the simulated PSP answered (`pgMockData` in the contract).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PgMockData {
    /// Always true here.
    pub is_success: bool,
    /// RFC 3339 UTC.
    #[schema(format = DateTime, example = "2026-11-30T12:00:00Z")]
    pub processed_at: String,
}

/// `200` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentSuccess {
    /// "Payment SUCCESS".
    pub message: &'static str,
    /// The intent.
    pub payment_intent_id: String,
    /// "SUCCESS".
    #[schema(value_type = crate::openapi::Success)]
    pub status: &'static str,
    /// The gateway's answer.
    pub pg_mock_data: PgMockData,
}

/// Why the gateway declined.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureDetail {
    /// e.g. `CARD_DECLINED`.
    pub failure_code: String,
    /// `CLIENT_ERROR` or `SERVER_ERROR` (retry on the latter).
    #[schema(value_type = crate::openapi::FailureConcept)]
    pub failure_concept: String,
}

/// `400` answer when the gateway declined.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentFailure {
    /// "Payment FAILURE".
    pub message: &'static str,
    /// The intent.
    pub payment_intent_id: String,
    /// "FAILURE".
    #[schema(value_type = crate::openapi::Failure)]
    pub status: &'static str,
    /// The decline.
    pub error: FailureDetail,
}

/// A `400` of `POST /payments/execute`: a decline, or a bad request.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum PaymentBadRequest {
    /// The PSP declined.
    Declined(PaymentFailure),
    /// The request was refused before any charge.
    Invalid(crate::error::ErrorBody),
}

/// Charges a payment intent through the payment service provider (simulated in this build).
#[utoipa::path(post, path = "/payments/execute", tag = "Payments", request_body = ExecutePayment,
    security(("bearer" = [])), params(super::IdempotencyKey),
    responses(
        (status = 200, body = PaymentSuccess),
        (status = 400, description = "Declined (PaymentFailure) or a bad request (ErrorBody)",
            body = PaymentBadRequest),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody, description = "Someone else's intent"),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody, description = "Already processed, no longer payable, or key in flight"),
        (status = 408, body = crate::error::ErrorBody, description = "The body was not received in time"),
        (status = 422, body = crate::error::ErrorBody, description = "Idempotency-Key reused with another body"),
        (status = 429, body = crate::error::ErrorBody, description = "This user's payment rate is exceeded",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, body = crate::error::ErrorBody,
            description = "Payment is not ready yet (a pending booking names the intent), or its outcome is being confirmed",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying")))))]
pub async fn execute_payment(
    State(state): State<Arc<AppState>>,
    _user: AuthUser,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ExecutePaymentBody>,
) -> Result<Response, ApiError> {
    const REQUIRED: &str = "paymentIntentId, paymentMethodToken and cvv are required.";
    let (Some(payment_intent_id), Some(payment_method_token), Some(cvv)) =
        (body.payment_intent_id, body.payment_method_token, body.cvv)
    else {
        return Err(ApiError::bad_request(REQUIRED));
    };
    if payment_intent_id.trim().is_empty() || payment_method_token.trim().is_empty() || cvv.is_empty() {
        return Err(ApiError::bad_request(REQUIRED));
    }
    let request = pb::ExecutePaymentRequest { payment_intent_id, payment_method_token, cvv, ..Default::default() };
    let reply = state.payment.clone().execute_payment(idempotent_grpc_request(request, &headers)?).await?;
    let replayed = replay_headers(reply.metadata());
    let answer = reply.into_inner();
    if !answer.booking_id.is_empty() && state.read_your_writes_ms > 0 {
        // Read-your-writes: answer once the booking shows the payment (a
        // success confirms it; a decline ends its admission, so a cancel
        // right after this answer is not refused as "in progress"). Bounded;
        // the outcome stands either way.
        let wait = proto::booking::AwaitDecisionRequest {
            booking_id: answer.booking_id.clone(),
            timeout_ms: state.read_your_writes_ms,
            until_payment_settled: !answer.is_success,
        };
        match state.booking.clone().await_decision(grpc_request(wait, &headers)).await {
            Ok(booking) => state.seat_watch.changed(&booking.into_inner().performance_id),
            Err(status) => tracing::debug!(code = ?status.code(), "waiting for the booking to show the payment"),
        }
    }
    let processed_at = seed_time(answer.processed_at.as_ref()).unwrap_or_default();
    if answer.is_success {
        Ok((
            replayed,
            Json(PaymentSuccess {
                message: "Payment SUCCESS",
                payment_intent_id: answer.payment_intent_id,
                status: "SUCCESS",
                pg_mock_data: PgMockData { is_success: true, processed_at },
            }),
        )
            .into_response())
    } else {
        Ok((
            StatusCode::BAD_REQUEST,
            replayed,
            Json(PaymentFailure {
                message: "Payment FAILURE",
                payment_intent_id: answer.payment_intent_id,
                status: "FAILURE",
                error: FailureDetail { failure_code: answer.failure_code, failure_concept: answer.failure_concept },
            }),
        )
            .into_response())
    }
}
