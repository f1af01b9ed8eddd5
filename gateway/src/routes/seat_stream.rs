//! `GET /performances/{id}/seats/stream`: the seat map as Server-Sent Events.
//!
//! The stream starts with a `snapshot` event (every seat with its price and
//! state, loaded after the request arrived, so it shows every write answered
//! before) and then sends `seats` events with the seats whose state changed
//! (`available` → `locked` → `booked` → `available`), computed once per
//! performance by its watcher ([`crate::seat_watch`]). Each event's id names
//! the state of the whole map after it; a client that reconnects with
//! `Last-Event-ID` equal to the current state gets no snapshot, otherwise a
//! fresh one (states are absolute, so applying it is always right). A viewer
//! that falls behind gets a fresh snapshot instead of the changes it missed.
//! The stream ends when the viewer's own token expires. Occupants are never
//! named: a seat has only its id, price and state.
//!
//! Events are framed once and shared (`Bytes`) by every viewer of a load or
//! a change: a viewer costs its connection and its sends, not a copy.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;

use crate::{auth::AuthUser, error::ApiError, path_id::PathId, seat_watch::Viewing, AppState};

/// One event of the stream, as a client's EventSource sees it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SeatEvent {
    /// `snapshot` (the whole map, a SeatMapBody) or `seats` (the seats that changed).
    #[schema(pattern = "^(snapshot|seats)$")]
    event: String,
    /// The state of the whole map after this event (send it back as `Last-Event-ID`).
    id: String,
    /// The event's JSON.
    data: String,
}

/// A comment that keeps an idle connection open.
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";
/// How often a quiet stream sends it.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(15);

/// What a viewer has been shown, and until when it may watch.
struct Viewer {
    viewing: Viewing,
    /// The version last sent (or resumed from).
    shown: String,
    /// A snapshot to send first, if any.
    first: Option<Bytes>,
    /// The token's expiry plus the verifiers' leeway.
    until: tokio::time::Instant,
    shutting_down: edge::shutdown::Shutdown,
}

/// The seat map as Server-Sent Events: a `snapshot`, then `seats` events
/// with the seats whose state changed, until the caller's token expires.
#[utoipa::path(get, path = "/performances/{id}/seats/stream", tag = "Performances",
    params(("id" = String, Path, description = "performanceId"),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received: no snapshot if the map is unchanged since")),
    security(("bearer" = [])),
    responses(
        (status = 200, content_type = "text/event-stream", body = SeatEvent,
            description = "`event: snapshot` (a SeatMapBody), then `event: seats` (the changed seats); each `id` names the map's state"),
        (status = 400, body = crate::error::ErrorBody, description = "Invalid id"),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody, description = "Unknown performance"),
        (status = 429, body = crate::error::ErrorBody, description = "This user watches too many streams",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, body = crate::error::ErrorBody, description = "This gateway serves as many streams as it may",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying")))))]
pub async fn seat_stream(
    State(state): State<Arc<AppState>>,
    user: AuthUser,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let viewing = state.seat_watch.view(&id, &user.user_id)?;
    // Loaded after the request arrived (404 for an unknown performance,
    // before the stream starts).
    let map = state.seat_maps.current(&id, &headers).await?;
    let now = &map.state;
    let resumed = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let first = (resumed != Some(now.version.as_str())).then(|| now.snapshot.clone());
    let left = u64::try_from(user.expires_at - chrono::Utc::now().timestamp()).unwrap_or(0) + edge::auth::LEEWAY_SECS;
    let viewer = Viewer {
        viewing,
        shown: now.version.clone(),
        first,
        until: tokio::time::Instant::now() + Duration::from_secs(left),
        shutting_down: state.shutting_down.clone(),
    };
    let stream = futures::stream::unfold(viewer, |mut viewer| async move {
        let frame = viewer.next().await?;
        Some((Ok::<_, Infallible>(frame), viewer))
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

impl Viewer {
    /// The next frame to send; `None` ends the stream (token expired,
    /// shutdown, or the watcher is gone).
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            let received = tokio::select! {
                received = self.viewing.changes.recv() => received,
                () = tokio::time::sleep(KEEP_ALIVE_EVERY) => return Some(Bytes::from_static(KEEP_ALIVE)),
                () = tokio::time::sleep_until(self.until) => return None,
                () = self.shutting_down.cancelled() => return None,
            };
            match received {
                Ok(change) if change.from == self.shown => {
                    self.shown = change.to.clone();
                    return Some(change.frame.clone());
                }
                // Already showing it (the first snapshot was newer than the watcher's look).
                Ok(change) if change.to == self.shown => {}
                // A change it cannot apply: the state as it is now.
                Ok(_) => {
                    if let Some(latest) = self.latest_unless_shown() {
                        return Some(latest);
                    }
                }
                // Too slow for the changes it missed: the state as it is now.
                Err(RecvError::Lagged(_)) => {
                    metrics::counter!("seat_streams_lagged_total").increment(1);
                    if let Some(latest) = self.latest_unless_shown() {
                        return Some(latest);
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// The watcher's newest snapshot, unless it is what the viewer shows.
    fn latest_unless_shown(&mut self) -> Option<Bytes> {
        let latest = self.viewing.watcher.latest().filter(|l| l.version != self.shown)?;
        self.shown = latest.version.clone();
        Some(latest.snapshot.clone())
    }
}
