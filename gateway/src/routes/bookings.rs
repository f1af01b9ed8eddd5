//! `POST /bookings`, `GET /bookings/my`, `GET /bookings/{id}`, `DELETE /bookings/{id}`.

use std::sync::Arc;

use axum::{
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    Json,
};
use proto::booking as pb;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::upstream::{grpc_request, idempotent_grpc_request, replay_headers, seed_time};
use crate::{auth::AuthUser, error::ApiError, json::JsonBody, path_id::PathId, AppState};

/// `POST /bookings` body (every field optional here so a missing one gets the seed's message).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateBookingBody {
    /// e.g. `perf_001`.
    #[schema(example = "perf_001")]
    pub performance_id: Option<String>,
    /// Seats to lock, e.g. `["A2"]`.
    #[schema(example = json!(["A2"]))]
    pub seat_ids: Option<Vec<String>>,
    /// `CREDIT_CARD` (default), `BANK_TRANSFER` or `EASY_PAY`.
    #[schema(example = "CREDIT_CARD")]
    pub payment_method: Option<String>,
    /// Must equal the token's subject.
    #[schema(example = "user_123")]
    pub user_id: Option<String>,
}

/// `POST /bookings` as the server checks it (the body above is lenient so
/// that a missing field gets the contract's message). The seats must also
/// exist and be free, and the user's seats for the performance stay within
/// the per-user limit: refused with 400, as the contract says.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct CreateBooking {
    /// An existing performance (1-64 letters, digits, `_`, `-`).
    #[schema(example = "perf_001", min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    performance_id: String,
    /// 1 to `MAX_SEATS_PER_USER` (10 unless configured) different seats of
    /// the performance (a seat listed twice is refused).
    #[schema(example = json!(["A2"]), min_items = 1, max_items = 10)]
    seat_ids: Vec<SeatId>,
    /// `CREDIT_CARD` when absent.
    #[schema(example = "CREDIT_CARD")]
    payment_method: Option<PaymentMethod>,
    /// The token's subject.
    #[schema(example = "user_123", min_length = 1, max_length = 128, pattern = "\\S")]
    user_id: String,
}

/// A seat: its row label (1-3 capital letters) and number.
#[derive(ToSchema)]
#[schema(pattern = "^[A-Z]{1,3}[1-9][0-9]{0,2}$", example = "A2")]
#[allow(dead_code)]
pub struct SeatId(String);

/// How the booking will be paid.
#[derive(ToSchema)]
#[schema(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(dead_code)]
pub enum PaymentMethod {
    /// A card.
    CreditCard,
    /// A bank transfer.
    BankTransfer,
    /// Easy pay.
    EasyPay,
}

/// `201` answer of `POST /bookings`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BookingCreated {
    /// Always "Booking initiated. Please proceed to payment."
    pub message: &'static str,
    /// The new booking.
    pub booking_id: String,
    /// Pay it with `POST /payments/execute`.
    pub payment_intent_id: String,
    /// Sum of the seat prices in won.
    pub total_amount: i64,
}

/// A booking as `GET /bookings/my` lists it (note the seed's `total_amount`).
#[derive(Debug, Serialize, ToSchema)]
pub struct BookingView {
    /// The booking.
    #[serde(rename = "bookingId")]
    pub booking_id: String,
    /// The performance.
    #[serde(rename = "performanceId")]
    pub performance_id: String,
    /// Its seats.
    #[serde(rename = "seatIds")]
    pub seat_ids: Vec<String>,
    /// Total in won.
    pub total_amount: i64,
    /// pending | confirmed | cancelled | expired | failed | refunded
    #[schema(value_type = crate::openapi::BookingStatus)]
    pub status: String,
    /// The owner.
    #[serde(rename = "userId")]
    pub user_id: String,
    /// RFC 3339 UTC, seconds precision.
    #[serde(rename = "createdAt")]
    #[schema(format = DateTime, example = "2026-11-30T12:00:00Z")]
    pub created_at: String,
}

/// A message-only answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageBody {
    /// What happened.
    pub message: &'static str,
}

/// Paging of `GET /bookings/my`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1-500 (default 100).
    #[param(value_type = u32, required = false, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// A bookingId: list bookings created before it.
    #[param(value_type = String, required = false, min_length = 1, max_length = 128,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{1,128}$")]
    pub before: Option<String>,
}

fn view(b: pb::Booking) -> BookingView {
    BookingView {
        created_at: seed_time(b.created_at.as_ref()).unwrap_or_default(),
        booking_id: b.booking_id,
        performance_id: b.performance_id,
        seat_ids: b.seat_ids,
        total_amount: b.total_amount,
        status: b.status,
        user_id: b.user_id,
    }
}

/// Locks the seats and starts a booking.
#[utoipa::path(post, path = "/bookings", tag = "Bookings", request_body = CreateBooking,
    security(("bearer" = [])), params(super::IdempotencyKey),
    responses(
        (status = 201, body = BookingCreated, links(
            ("GetBooking" = (operation_id = "get_booking", parameters(("id" = "$response.body#/bookingId")))),
            ("CancelBooking" = (operation_id = "cancel_booking", parameters(("id" = "$response.body#/bookingId")))),
            ("PayBooking" = (operation_id = "execute_payment",
                request_body = json!({"paymentIntentId": "$response.body#/paymentIntentId"}))),
        )),
        (status = 400, body = crate::error::ErrorBody, description = "Missing fields, a taken or unknown seat, limits"),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody, description = "Unknown performance"),
        (status = 408, body = crate::error::ErrorBody, description = "The body was not received in time"),
        (status = 409, body = crate::error::ErrorBody, description = "Same Idempotency-Key still in flight"),
        (status = 422, body = crate::error::ErrorBody, description = "Idempotency-Key reused with another body"),
        (status = 429, body = crate::error::ErrorBody, description = "This user's booking rate is exceeded",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying")))))]
pub async fn create_booking(
    State(state): State<Arc<AppState>>,
    user: AuthUser,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateBookingBody>,
) -> Result<(StatusCode, HeaderMap, Json<BookingCreated>), ApiError> {
    const REQUIRED: &str = "User, performance, and seats are required.";
    let (Some(performance_id), Some(seat_ids), Some(user_id)) = (body.performance_id, body.seat_ids, body.user_id)
    else {
        return Err(ApiError::bad_request(REQUIRED));
    };
    if performance_id.trim().is_empty() || user_id.trim().is_empty() || seat_ids.is_empty() {
        return Err(ApiError::bad_request(REQUIRED));
    }
    if user_id != user.user_id {
        return Err(ApiError::forbidden("Unauthorized to book for another user."));
    }
    let admission = super::waiting_room::admission_header(&state, &headers, &user.user_id, &performance_id)?;
    let request = pb::CreateBookingRequest {
        performance_id: performance_id.clone(),
        seat_ids,
        payment_method: body.payment_method.unwrap_or_default(),
        user_id,
        admission,
        ..Default::default()
    };
    let reply = state.booking.clone().create_booking(idempotent_grpc_request(request, &headers)?).await?;
    state.seat_watch.changed(&performance_id);
    let replayed = replay_headers(reply.metadata());
    let created = reply.into_inner();
    Ok((
        StatusCode::CREATED,
        replayed,
        Json(BookingCreated {
            message: "Booking initiated. Please proceed to payment.",
            booking_id: created.booking_id,
            payment_intent_id: created.payment_intent_id,
            total_amount: created.total_amount,
        }),
    ))
}

/// The caller's bookings, newest first.
#[utoipa::path(get, path = "/bookings/my", tag = "Bookings", params(ListParams), security(("bearer" = [])),
    responses((status = 200, body = [BookingView]), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn my_bookings(
    State(state): State<Arc<AppState>>,
    _user: AuthUser,
    headers: HeaderMap,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<BookingView>>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(format!("Invalid query: {}", e.body_text())))?;
    let limit = super::query_limit(params.limit.as_deref(), 100, 500)?;
    super::query_cursor("before", "bookingId", params.before.as_deref())?;
    let request =
        pb::ListUserBookingsRequest { limit, before: params.before.unwrap_or_default(), ..Default::default() };
    let list = state.booking.clone().list_user_bookings(grpc_request(request, &headers)).await?.into_inner();
    Ok(Json(list.bookings.into_iter().map(view).collect()))
}

/// One booking (owner or admin).
#[utoipa::path(get, path = "/bookings/{id}", tag = "Bookings", params(("id" = String, Path, description = "bookingId")),
    security(("bearer" = [])),
    responses((status = 200, body = BookingView), (status = 400, body = crate::error::ErrorBody, description = "Invalid id"), (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_booking(
    State(state): State<Arc<AppState>>,
    _user: AuthUser,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Json<BookingView>, ApiError> {
    let request = pb::GetBookingRequest { booking_id: id, ..Default::default() };
    let booking = state.booking.clone().get_booking(grpc_request(request, &headers)).await?.into_inner();
    Ok(Json(view(booking)))
}

/// Cancels a pending booking of the caller; its seats are free at once.
#[utoipa::path(delete, path = "/bookings/{id}", tag = "Bookings", params(("id" = String, Path, description = "bookingId")),
    security(("bearer" = [])),
    responses((status = 200, body = MessageBody), (status = 400, body = crate::error::ErrorBody, description = "Invalid id"), (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub async fn cancel_booking(
    State(state): State<Arc<AppState>>,
    _user: AuthUser,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Json<MessageBody>, ApiError> {
    let request = pb::CancelBookingRequest { booking_id: id, ..Default::default() };
    state.booking.clone().cancel_booking(grpc_request(request, &headers)).await?;
    state.seat_watch.changed_somewhere();
    Ok(Json(MessageBody { message: "Booking cancelled successfully." }))
}
