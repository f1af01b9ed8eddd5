//! The on-sale waiting room (docs/WAITING-ROOM.md): an admin sets up and
//! closes an on-sale; users join, read and stream their place; and
//! `POST /bookings` carries the admission (`Admission` header), checked here
//! and again by the booking-service.

use std::{convert::Infallible, sync::Arc};

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
    Json,
};
use bytes::Bytes;
use proto::booking as pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::queue_watch::{StreamOpen, WatchError};
use crate::upstream::{grpc_request, seed_time};
use crate::{auth::AuthUser, error::ApiError, json::JsonBody, path_id::PathId, AppState};

/// `PUT /performances/{id}/onsale` body: only `opensAt` is required.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnSaleBody {
    /// RFC 3339: when the pre-queue is shuffled and admission starts.
    #[schema(format = DateTime, example = "2026-12-24T10:00:00Z")]
    pub opens_at: Option<String>,
    /// Unexpired admissions at most at once (1-100000, default 200).
    #[schema(minimum = 1, maximum = 100000)]
    pub max_active: Option<u32>,
    /// Admissions per minute at most (1-1000000, default 1200).
    #[schema(minimum = 1, maximum = 1000000)]
    pub admit_per_minute: Option<u32>,
    /// How long an admission lasts (30-3600, default 600).
    #[schema(minimum = 30, maximum = 3600)]
    pub admission_seconds: Option<u32>,
    /// How long a place is kept unlooked-at (15-3600, default 300).
    #[schema(minimum = 15, maximum = 3600)]
    pub place_keep_seconds: Option<u32>,
}

/// An on-sale: its settings and live figures.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnSaleView {
    /// The performance.
    pub performance_id: String,
    /// RFC 3339 UTC.
    #[schema(format = DateTime)]
    pub opens_at: Option<String>,
    /// Settings, defaults filled in.
    pub max_active: u32,
    /// Settings, defaults filled in.
    pub admit_per_minute: u32,
    /// Settings, defaults filled in.
    pub admission_seconds: u32,
    /// Settings, defaults filled in.
    pub place_keep_seconds: u32,
    /// People waiting.
    pub waiting: u64,
    /// Unexpired admissions.
    pub active: u64,
    /// Admissions so far.
    pub admitted_total: u64,
    /// Every seat is sold.
    pub sold_out: bool,
}

/// A place in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlaceBody {
    /// The performance.
    pub performance_id: String,
    /// queued | waiting | admitted | sold_out | closed
    #[schema(pattern = "^(queued|waiting|admitted|sold_out|closed)$")]
    pub state: String,
    /// Null while queued.
    pub position: Option<i64>,
    /// Null while queued.
    pub ahead: Option<i64>,
    /// From the measured admission rate.
    pub estimated_wait_seconds: Option<u64>,
    /// With `admitted`: send it as the `Admission` header of `POST /bookings`.
    pub admission: Option<String>,
    /// With `admitted`: RFC 3339 UTC.
    #[schema(format = DateTime)]
    pub admission_expires_at: Option<String>,
}

fn onsale_view(o: pb::OnSale) -> OnSaleView {
    OnSaleView {
        opens_at: seed_time(o.opens_at.as_ref()),
        performance_id: o.performance_id,
        max_active: o.max_active,
        admit_per_minute: o.admit_per_minute,
        admission_seconds: o.admission_seconds,
        place_keep_seconds: o.place_keep_seconds,
        waiting: o.waiting,
        active: o.active,
        admitted_total: o.admitted_total,
        sold_out: o.sold_out,
    }
}

fn place_body(p: pb::QueuePlace) -> PlaceBody {
    PlaceBody {
        performance_id: p.performance_id,
        state: p.state,
        position: p.position,
        ahead: p.ahead,
        estimated_wait_seconds: p.estimated_wait_seconds,
        admission: Some(p.admission).filter(|a| !a.is_empty()),
        admission_expires_at: seed_time(p.admission_expires_at.as_ref()),
    }
}

/// Sets up (or changes) an on-sale (admin).
#[utoipa::path(put, path = "/performances/{id}/onsale", tag = "Waiting room", request_body = OnSaleBody,
    params(("id" = String, Path, description = "performanceId")), security(("bearer" = [])),
    responses((status = 200, body = OnSaleView), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody, description = "Unknown performance"),
        (status = 409, body = crate::error::ErrorBody, description = "No key for admission tokens is configured")))]
pub async fn set_up_onsale(
    State(state): State<Arc<AppState>>,
    _user: AuthUser,
    headers: HeaderMap,
    PathId(id): PathId,
    JsonBody(body): JsonBody<OnSaleBody>,
) -> Result<Json<OnSaleView>, ApiError> {
    let text = body.opens_at.ok_or_else(|| ApiError::bad_request("opensAt is required (RFC 3339)."))?;
    let opens_at = chrono::DateTime::parse_from_rfc3339(&text)
        .map_err(|_| ApiError::bad_request("opensAt must be an RFC 3339 date-time."))?
        .with_timezone(&chrono::Utc);
    let request = pb::SetUpOnSaleRequest {
        performance_id: id,
        opens_at: Some(proto::time::timestamp(opens_at)),
        max_active: body.max_active,
        admit_per_minute: body.admit_per_minute,
        admission_seconds: body.admission_seconds,
        place_keep_seconds: body.place_keep_seconds,
    };
    let onsale = state.booking.clone().set_up_on_sale(grpc_request(request, &headers)).await?.into_inner();
    Ok(Json(onsale_view(onsale)))
}

/// An on-sale's settings and live figures.
#[utoipa::path(get, path = "/performances/{id}/onsale", tag = "Waiting room",
    params(("id" = String, Path, description = "performanceId")), security(("bearer" = [])),
    responses((status = 200, body = OnSaleView), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody, description = "This performance has no waiting room (or it was closed)")))]
pub async fn get_onsale(
    State(state): State<Arc<AppState>>,
    _user: AuthUser,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Json<OnSaleView>, ApiError> {
    let request = pb::GetOnSaleRequest { performance_id: id };
    let onsale = state.booking.clone().get_on_sale(grpc_request(request, &headers)).await?.into_inner();
    Ok(Json(onsale_view(onsale)))
}

/// `DELETE /performances/{id}/onsale` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Closed {
    /// "On-sale closed."
    pub message: &'static str,
}

/// Closes an on-sale (admin): open sale again; everyone waiting is told `closed`.
#[utoipa::path(delete, path = "/performances/{id}/onsale", tag = "Waiting room",
    params(("id" = String, Path, description = "performanceId")), security(("bearer" = [])),
    responses((status = 200, body = Closed), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody, description = "This performance has no waiting room")))]
pub async fn close_onsale(
    State(state): State<Arc<AppState>>,
    _user: AuthUser,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Json<Closed>, ApiError> {
    let request = pb::CloseOnSaleRequest { performance_id: id };
    state.booking.clone().close_on_sale(grpc_request(request, &headers)).await?;
    Ok(Json(Closed { message: "On-sale closed." }))
}

/// Joins the queue (idempotent: the same place from any device).
#[utoipa::path(post, path = "/performances/{id}/queue", tag = "Waiting room",
    params(("id" = String, Path, description = "performanceId")), security(("bearer" = [])),
    responses((status = 200, body = PlaceBody), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody, description = "This performance has no waiting room")))]
pub async fn join_queue(
    State(state): State<Arc<AppState>>,
    _user: AuthUser,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Json<PlaceBody>, ApiError> {
    // The token the extractor verified; the booking-service verifies it again.
    let token = crate::auth::bearer_token(&headers).ok_or_else(ApiError::unauthenticated)?;
    let place = state.queue_joins.join(id, token.to_owned()).await?;
    Ok(Json(place_body(place)))
}

/// The caller's place (looking keeps it).
#[utoipa::path(get, path = "/performances/{id}/queue", tag = "Waiting room",
    params(("id" = String, Path, description = "performanceId")), security(("bearer" = [])),
    responses((status = 200, body = PlaceBody), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody, description = "Not in the queue")))]
pub async fn get_queue_place(
    State(state): State<Arc<AppState>>,
    _user: AuthUser,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Json<PlaceBody>, ApiError> {
    let request = pb::GetQueuePlaceRequest { performance_id: id };
    let place = state.booking.clone().get_queue_place(grpc_request(request, &headers)).await?.into_inner();
    Ok(Json(place_body(place)))
}

/// One event of the place stream, as a client's EventSource sees it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PlaceEvent {
    /// Always `place`.
    #[schema(pattern = "^place$")]
    event: String,
    /// A PlaceBody as JSON.
    data: String,
}

/// The caller's place as Server-Sent Events named `place`: when it changes
/// and at least every 15 s; the stream ends after `admitted`, `sold_out` or
/// `closed`.
//
// The booking-service decides what to send (on this gateway's
// `WatchQueuePlaces` call for the performance, or `StreamQueuePlace` from
// one that lacks it); this frames it, and ends it when the gateway stops.
#[utoipa::path(get, path = "/performances/{id}/queue/stream", tag = "Waiting room",
    params(("id" = String, Path, description = "performanceId")), security(("bearer" = [])),
    responses((status = 200, content_type = "text/event-stream", body = PlaceEvent,
        description = "Events named `place`, each with a PlaceBody as its data"),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody, description = "Not in the queue")))]
pub async fn queue_stream(
    State(state): State<Arc<AppState>>,
    _user: AuthUser,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    use futures::StreamExt;
    // The token the extractor verified; the booking-service verifies it again.
    let token = crate::auth::bearer_token(&headers).ok_or_else(ApiError::unauthenticated)?;
    // A refusal (not in the queue) is a status, before the stream starts.
    let places = match state.queue_watch.watch(&id, token.to_owned()).await {
        Ok(watching) => watching.places().boxed(),
        Err(WatchError::Refused(status)) => return Err(status.into()),
        Err(WatchError::Unsupported) => {
            let request = pb::StreamQueuePlaceRequest { performance_id: id };
            let places = state.booking.clone().stream_queue_place(grpc_request(request, &headers)).await?.into_inner();
            places
                .take_while(|place| std::future::ready(place.is_ok()))
                .filter_map(|place| std::future::ready(place.ok()))
                .boxed()
        }
    };
    let open = StreamOpen::new();
    let events = places
        .map(move |place| {
            // Counted while the response streams.
            let _open = &open;
            let body = serde_json::to_string(&place_body(place)).unwrap_or_default();
            Ok::<_, Infallible>(Bytes::from(format!("event: place\ndata: {body}\n\n")))
        })
        .take_until(state.shutting_down.clone().cancelled_owned());
    let mut response = Body::from_stream(events).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The `Admission` header of `POST /bookings`, checked here before the
/// booking-service checks it again: a token that is not this user's for
/// this performance, or expired, is refused at the edge.
pub(crate) fn admission_header(
    state: &AppState,
    headers: &HeaderMap,
    user_id: &str,
    performance_id: &str,
) -> Result<String, ApiError> {
    let Some(value) = headers.get("admission") else { return Ok(String::new()) };
    let invalid = || ApiError::forbidden("Your admission is not valid for this booking.");
    let token = value.to_str().map_err(|_| invalid())?.trim();
    if token.is_empty() || token.len() > 4096 {
        return Err(invalid());
    }
    if let Some(key) = &state.admission_key {
        key.verify(token, user_id, performance_id).ok_or_else(invalid)?;
    }
    Ok(token.to_owned())
}
