//! What people look at: `GET /performances/{id}/seats/stream` (the seat
//! map as Server-Sent Events), the box-office page at `/`, and, in `dev`
//! only, `POST /dev/token`.
//!
//! The stream starts with a `snapshot` event (every seat with its price and
//! state) and then sends `seats` events with the seats whose state changed
//! (`available` → `locked` → `booked` → `available`). Each event's id names
//! the state of the whole map after it; a client that reconnects with
//! `Last-Event-ID` equal to the current state gets no snapshot, otherwise
//! a fresh one (states are absolute, so applying it is always right). The
//! gateway reads the map through its seat-map cache, so any number of
//! viewers of one performance cost one load per cache period. Occupants
//! are never named: a seat has only its id, price and state.

use std::{collections::BTreeMap, convert::Infallible, hash::Hasher, sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        Html, IntoResponse, Response,
    },
    Json,
};
use futures::Stream;
use serde::{Deserialize, Serialize};

use super::catalog::{load_seat_map, SeatBody, SeatMapBody};
use crate::{auth::AuthUser, error::ApiError, json::JsonBody, path_id::PathId, AppState};

/// How often a stream looks at the map for changes.
const LOOK_EVERY: Duration = Duration::from_millis(500);

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

/// One seat's state in a `seats` event.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SeatChange {
    seat_id: String,
    state: String,
}

/// `GET /performances/{id}/seats/stream`: the seat map, live.
pub async fn seat_stream(
    State(state): State<Arc<AppState>>,
    _user: AuthUser,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // The first load answers 404 for an unknown performance before the stream starts.
    let first = read_map(&state, &id, &headers).await?;
    let resumed_at = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let stream = futures::stream::unfold(
        Watch { state, id, headers, shown: None, first: Some(first), resumed_at },
        |mut watch| async move {
            loop {
                let map = match watch.first.take() {
                    Some(map) => map,
                    None => {
                        tokio::select! {
                            () = tokio::time::sleep(LOOK_EVERY) => {}
                            () = watch.state.shutting_down.cancelled() => return None,
                        }
                        match read_map(&watch.state, &watch.id, &watch.headers).await {
                            Ok(map) => map,
                            // The token expired (or the performance went): end the
                            // stream; the client reconnects and hears why.
                            Err(error) if error.status.is_client_error() => return None,
                            // The booking-service is away for a moment: keep the stream, look again.
                            Err(_) => continue,
                        }
                    }
                };
                let states: BTreeMap<String, String> =
                    map.seats.iter().map(|s| (s.seat_id.clone(), s.state.clone())).collect();
                let version = version_of(&states);
                let event = match &watch.shown {
                    None if watch.resumed_at.as_deref() == Some(version.as_str()) => None,
                    None => Some(snapshot_event(&map, &version)),
                    Some(shown) => changes_event(shown, &states, &version),
                };
                watch.shown = Some(states);
                if let Some(event) = event {
                    return Some((Ok(event), watch));
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// A stream's state between looks.
struct Watch {
    state: Arc<AppState>,
    id: String,
    headers: HeaderMap,
    /// What the client has been shown (None before the first event).
    shown: Option<BTreeMap<String, String>>,
    /// The first map, read before the stream started.
    first: Option<SeatMapBody>,
    /// The `Last-Event-ID` the client resumed with.
    resumed_at: Option<String>,
}

async fn read_map(state: &AppState, id: &str, headers: &HeaderMap) -> Result<SeatMapBody, ApiError> {
    let json = load_seat_map(state, id, headers).await?;
    serde_json::from_slice(&json).map_err(|error| {
        tracing::error!(%error, "reading a rendered seat map");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error.")
    })
}

/// The id of a map state: FNV-1a over every seat's id and state.
fn version_of(states: &BTreeMap<String, String>) -> String {
    let mut hash = shared::fnv::Fnv1a::default();
    for (seat, state) in states {
        hash.write(seat.as_bytes());
        hash.write(&[0]);
        hash.write(state.as_bytes());
        hash.write(&[0]);
    }
    format!("{:016x}", hash.finish())
}

fn snapshot_event(map: &SeatMapBody, version: &str) -> Event {
    let seats: Vec<&SeatBody> = map.seats.iter().collect();
    let data = serde_json::json!({
        "performanceId": map.performance_id,
        "title": map.title,
        "startsAt": map.starts_at,
        "seats": seats,
    });
    Event::default().event("snapshot").id(version).data(data.to_string())
}

/// The seats whose state differs from what was shown; None when none does.
fn changes_event(shown: &BTreeMap<String, String>, now: &BTreeMap<String, String>, version: &str) -> Option<Event> {
    let changes: Vec<SeatChange> = now
        .iter()
        .filter(|(seat, state)| shown.get(*seat) != Some(*state))
        .map(|(seat, state)| SeatChange { seat_id: seat.clone(), state: state.clone() })
        .collect();
    if changes.is_empty() {
        return None;
    }
    let data = serde_json::json!({ "changes": changes });
    Some(Event::default().event("seats").id(version).data(data.to_string()))
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
    let token = shared::auth::issue_token(secret, &user, false, 3600).map_err(|error| {
        tracing::error!(%error, "signing a dev token");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error.")
    })?;
    Ok(Json(serde_json::json!({ "userId": user, "token": token })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(s, st)| ((*s).to_owned(), (*st).to_owned())).collect()
    }

    #[test]
    fn a_change_names_only_the_seats_that_changed_and_the_version_follows_the_state() {
        let before = states(&[("A1", "available"), ("A2", "available")]);
        let after = states(&[("A1", "locked"), ("A2", "available")]);
        assert_ne!(version_of(&before), version_of(&after));
        assert_eq!(version_of(&before), version_of(&before.clone()));
        assert!(changes_event(&before, &before, "v").is_none(), "no event without a change");
        let changed: Vec<SeatChange> = after
            .iter()
            .filter(|(seat, state)| before.get(*seat) != Some(*state))
            .map(|(seat, state)| SeatChange { seat_id: seat.clone(), state: state.clone() })
            .collect();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].seat_id, "A1");
        assert!(changes_event(&before, &after, "v").is_some());
    }
}
