//! `GET /performances` (what is on sale, soonest first, paged with a
//! `Link` header) and `GET /performances/{id}`, each with its prices and
//! how many seats are free, held and sold.

use std::sync::Arc;

use axum::{
    extract::{Query, State},
    http::{header, HeaderMap, HeaderValue},
    Json,
};
use proto::booking as pb;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::upstream::{grpc_request, seed_time};
use crate::{auth::AuthUser, error::ApiError, path_id::PathId, AppState};

/// A performance and its availability.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PerformanceItem {
    /// Its id.
    #[schema(example = "perf_001")]
    pub performance_id: String,
    /// Its title.
    pub title: String,
    /// RFC 3339 UTC; null when not announced.
    #[schema(format = DateTime, example = "2026-12-24T19:00:00Z")]
    pub starts_at: Option<String>,
    /// ISO 4217 currency of the prices (won: no minor unit).
    #[schema(example = "KRW")]
    pub currency: &'static str,
    /// The cheapest seat.
    pub min_price: i64,
    /// The dearest seat.
    pub max_price: i64,
    /// Seats free now (a lapsed hold is free).
    pub available: u32,
    /// Seats held by a pending booking.
    pub held: u32,
    /// Seats sold.
    pub sold: u32,
}

/// Paging of `GET /performances`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PerformanceListParams {
    /// 1-100 (default 20).
    #[param(value_type = u32, required = false, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// A performanceId from the list: the page starts after it.
    #[param(value_type = String, required = false, min_length = 1, max_length = 128,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{1,128}$")]
    pub after: Option<String>,
}

fn item(p: pb::PerformanceSummary) -> PerformanceItem {
    PerformanceItem {
        starts_at: seed_time(p.starts_at.as_ref()),
        performance_id: p.performance_id,
        title: p.title,
        currency: "KRW",
        min_price: p.min_price,
        max_price: p.max_price,
        available: p.available,
        held: p.held,
        sold: p.sold,
    }
}

/// Performances, soonest first (unannounced ones last), with availability.
#[utoipa::path(get, path = "/performances", tag = "Performances", params(PerformanceListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = [PerformanceItem], headers(("Link" = String,
            description = "`<…>; rel=\"next\"` naming the next page, when there is one"))),
        (status = 400, body = crate::error::ErrorBody, description = "A bad limit, or an after that is not in the list"),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn list_performances(
    State(state): State<Arc<AppState>>,
    _user: AuthUser,
    headers: HeaderMap,
    params: Result<Query<PerformanceListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<(HeaderMap, Json<Vec<PerformanceItem>>), ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(format!("Invalid query: {}", e.body_text())))?;
    let limit = super::query_limit(params.limit.as_deref(), 20, 100)?;
    super::query_cursor("after", "performanceId", params.after.as_deref())?;
    let request = pb::ListPerformancesRequest { limit, after: params.after.unwrap_or_default() };
    let page = state.booking.clone().list_performances(grpc_request(request, &headers)).await?.into_inner();
    let mut links = HeaderMap::new();
    if let (true, Some(last)) = (page.more, page.performances.last()) {
        let next = format!("</performances?limit={limit}&after={}>; rel=\"next\"", query_escape(&last.performance_id));
        if let Ok(value) = HeaderValue::from_str(&next) {
            links.insert(header::LINK, value);
        }
    }
    Ok((links, Json(page.performances.into_iter().map(item).collect())))
}

/// One performance with its availability.
#[utoipa::path(get, path = "/performances/{id}", tag = "Performances",
    params(("id" = String, Path, description = "performanceId")), security(("bearer" = [])),
    responses((status = 200, body = PerformanceItem), (status = 400, body = crate::error::ErrorBody, description = "Invalid id"),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody, description = "Unknown performance")))]
pub async fn get_performance(
    State(state): State<Arc<AppState>>,
    _user: AuthUser,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Json<PerformanceItem>, ApiError> {
    let request = pb::GetPerformanceRequest { performance_id: id };
    let performance = state.booking.clone().get_performance(grpc_request(request, &headers)).await?.into_inner();
    Ok(Json(item(performance)))
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cursor_is_escaped_for_the_link() {
        assert_eq!(super::query_escape("perf_001"), "perf_001");
        assert_eq!(super::query_escape("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
