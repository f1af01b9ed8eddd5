//! `GET /occupiedSeats/{performanceId}_{seatId}`, `POST /performances`,
//! `GET /performances/{id}/seats`.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use proto::booking as pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{auth::AuthUser, error::ApiError, json::JsonBody, path_id::PathId, AppState};
use crate::{seat_maps::SeatMapBody, upstream::grpc_request};

/// A Firestore-style timestamp.
#[derive(Debug, Serialize, ToSchema)]
pub struct LockedUntil {
    /// Seconds since the epoch.
    pub seconds: i64,
    /// Nanoseconds within the second.
    pub nanoseconds: i32,
}

/// An occupiedSeats document.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OccupiedSeatDoc {
    /// The holding booking; null unless the caller holds the seat or is an admin.
    pub booking_id: Option<String>,
    /// Its owner; null unless the caller holds the seat or is an admin.
    pub user_id: Option<String>,
    /// End of the hold; null once booked.
    pub locked_until: Option<LockedUntil>,
    /// `locked` or `booked`.
    #[schema(value_type = crate::openapi::HoldStatus)]
    pub status: String,
}

/// The seat lock document of one seat; 404 when the seat is free.
#[utoipa::path(get, path = "/occupiedSeats/{docId}", tag = "Seats",
    params(("docId" = String, Path, description = "`{performanceId}_{seatId}`, e.g. perf_001_A2")),
    security(("bearer" = [])),
    responses((status = 200, body = OccupiedSeatDoc), (status = 400, body = crate::error::ErrorBody, description = "Invalid id"), (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody, description = "The seat is free")))]
pub async fn occupied_seat(
    State(state): State<Arc<AppState>>,
    _user: AuthUser,
    headers: HeaderMap,
    PathId(doc_id): PathId,
) -> Result<Json<OccupiedSeatDoc>, ApiError> {
    let Some((performance_id, seat_id)) = doc_id.rsplit_once('_').filter(|(p, s)| !p.is_empty() && !s.is_empty())
    else {
        return Err(ApiError::not_found(format!("Seat {doc_id} is not occupied.")));
    };
    let request = pb::GetOccupiedSeatRequest {
        performance_id: performance_id.to_owned(),
        seat_id: seat_id.to_owned(),
        ..Default::default()
    };
    let seat = state.booking.clone().get_occupied_seat(grpc_request(request, &headers)).await?.into_inner();
    Ok(Json(OccupiedSeatDoc {
        booking_id: Some(seat.booking_id).filter(|id| !id.is_empty()),
        user_id: Some(seat.user_id).filter(|id| !id.is_empty()),
        locked_until: seat.locked_until.map(|t| LockedUntil { seconds: t.seconds, nanoseconds: t.nanos }),
        status: seat.status,
    }))
}

/// One row of a new performance.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RowBody {
    /// `^[A-Z]{1,3}$`.
    pub row: String,
    /// 1-500.
    pub seats: u32,
    /// Won, > 0.
    pub price: i64,
}

/// `POST /performances` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterPerformanceBody {
    /// New id, e.g. `perf_x`.
    pub performance_id: Option<String>,
    /// Title.
    pub title: Option<String>,
    /// RFC 3339.
    pub starts_at: Option<String>,
    /// Rows of seats.
    pub rows: Option<Vec<RowBody>>,
}

/// `POST /performances` as the server checks it (the body above is lenient
/// so that a missing field gets the contract's message). Row labels must
/// also differ, and a performance holds at most 100,000 seats: 400s.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct RegisterPerformance {
    /// A new id (1-64 letters, digits, `_`, `-`).
    #[schema(example = "perf_x", min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    performance_id: String,
    /// At most 200 characters.
    #[schema(example = "Hamlet", max_length = 200)]
    title: Option<String>,
    /// When it starts.
    #[schema(example = "2027-01-15T19:30:00Z", format = DateTime)]
    starts_at: Option<String>,
    /// 1 or more rows of seats.
    #[schema(min_items = 1)]
    rows: Vec<Row>,
}

/// One row of a new performance, as the server checks it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Row {
    /// 1-3 capital letters.
    #[schema(example = "A", pattern = "^[A-Z]{1,3}$")]
    row: String,
    /// 1-500 seats.
    #[schema(example = 20, minimum = 1, maximum = 500)]
    seats: u32,
    /// Won, more than 0.
    #[schema(example = 30000, minimum = 1)]
    price: i64,
}

/// `201` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PerformanceRegistered {
    /// The id.
    pub performance_id: String,
    /// Seats created.
    pub seat_count: u32,
}

/// Registers a performance and its seats (admin).
#[utoipa::path(post, path = "/performances", tag = "Performances", request_body = RegisterPerformance,
    security(("bearer" = [])),
    responses((status = 201, body = PerformanceRegistered, links(
            ("SeatMap" = (operation_id = "seat_map", parameters(("id" = "$response.body#/performanceId")))),
            ("Book" = (operation_id = "create_booking",
                request_body = json!({"performanceId": "$response.body#/performanceId"}))),
        )), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub async fn register_performance(
    State(state): State<Arc<AppState>>,
    user: AuthUser,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RegisterPerformanceBody>,
) -> Result<(StatusCode, Json<PerformanceRegistered>), ApiError> {
    if !user.admin {
        return Err(ApiError::forbidden("Admin role required."));
    }
    let (Some(performance_id), Some(rows)) = (body.performance_id, body.rows) else {
        return Err(ApiError::bad_request("performanceId and rows are required."));
    };
    let starts_at = match body.starts_at.as_deref() {
        None => None,
        Some(text) => Some(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|_| ApiError::bad_request("startsAt must be an RFC 3339 date-time."))?
                .with_timezone(&chrono::Utc),
        ),
    };
    let request = pb::RegisterPerformanceRequest {
        performance_id,
        title: body.title.unwrap_or_default(),
        starts_at: starts_at.map(proto::time::timestamp),
        rows: rows.into_iter().map(|r| pb::SeatRow { row: r.row, seats: r.seats, price: r.price }).collect(),
        ..Default::default()
    };
    let done = state.booking.clone().register_performance(grpc_request(request, &headers)).await?.into_inner();
    Ok((
        StatusCode::CREATED,
        Json(PerformanceRegistered { performance_id: done.performance_id, seat_count: done.seat_count }),
    ))
}

/// Every seat of a performance with its price and state.
#[utoipa::path(get, path = "/performances/{id}/seats", tag = "Performances",
    params(("id" = String, Path, description = "performanceId")), security(("bearer" = [])),
    responses((status = 200, body = SeatMapBody), (status = 400, body = crate::error::ErrorBody, description = "Invalid id"), (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn seat_map(
    State(state): State<Arc<AppState>>,
    _user: AuthUser,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let map = state.seat_maps.current(&id, &headers).await?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], map.json.clone()).into_response())
}
