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

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::{
    auth::AuthUser,
    error::ApiError,
    path_id::PathId,
    seat_watch::{MapState, Viewing},
    AppState,
};

/// What a viewer has been shown, and until when it may watch.
struct Viewer {
    viewing: Viewing,
    /// The version last sent (or resumed from).
    shown: String,
    /// A snapshot to send first, if any.
    first: Option<Event>,
    /// The token's expiry plus the verifiers' leeway.
    until: tokio::time::Instant,
    shutting_down: shared::shutdown::Shutdown,
}

/// `GET /performances/{id}/seats/stream`: the seat map, live.
pub async fn seat_stream(
    State(state): State<Arc<AppState>>,
    user: AuthUser,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let viewing = state.seat_watch.view(&id, &user.user_id)?;
    // Loaded after the request arrived (404 for an unknown performance,
    // before the stream starts).
    let map = state.seat_maps.current(&id, &headers).await?;
    let now = MapState::of(&map);
    let resumed = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let first = (resumed != Some(now.version.as_str())).then(|| snapshot(&now));
    let left = u64::try_from(user.expires_at - chrono::Utc::now().timestamp()).unwrap_or(0) + shared::auth::LEEWAY_SECS;
    let viewer = Viewer {
        viewing,
        shown: now.version,
        first,
        until: tokio::time::Instant::now() + Duration::from_secs(left),
        shutting_down: state.shutting_down.clone(),
    };
    let stream = futures::stream::unfold(viewer, |mut viewer| async move {
        let event = viewer.next().await?;
        Some((Ok(event), viewer))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

impl Viewer {
    /// The next event to send; `None` ends the stream (token expired,
    /// shutdown, or the watcher is gone).
    async fn next(&mut self) -> Option<Event> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            let received = tokio::select! {
                received = self.viewing.changes.recv() => received,
                () = tokio::time::sleep_until(self.until) => return None,
                () = self.shutting_down.cancelled() => return None,
            };
            match received {
                Ok(change) if change.from == self.shown => {
                    self.shown = change.to.version.clone();
                    return Some(Event::default().event("seats").id(&self.shown).data(&*change.seats));
                }
                // Already showing it (the first snapshot was newer than the watcher's look).
                Ok(change) if change.to.version == self.shown => {}
                Ok(change) => return Some(self.snapshot_of(&change.to)),
                // Too slow for the changes it missed: the state as it is now.
                Err(RecvError::Lagged(_)) => {
                    metrics::counter!("seat_streams_lagged_total").increment(1);
                    match self.viewing.watcher.latest() {
                        Some(latest) if latest.version != self.shown => return Some(self.snapshot_of(&latest)),
                        _ => {}
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    fn snapshot_of(&mut self, state: &MapState) -> Event {
        self.shown = state.version.clone();
        snapshot(state)
    }
}

fn snapshot(state: &MapState) -> Event {
    Event::default().event("snapshot").id(&state.version).data(&*state.snapshot)
}
