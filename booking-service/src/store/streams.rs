//! Loading and appending booking streams.

use shared::event_store::{self, EventMetadata, ExpectedVersion, NewEvent};
use sqlx::PgConnection;

use crate::{
    domain::booking::{replay, Booking, BookingEvent},
    error::BookingError,
};

/// The stream type of bookings in the event store.
pub const STREAM_TYPE: &str = "booking";

/// A booking's state and the version it was loaded at.
pub struct Loaded {
    /// `None` if the stream does not exist.
    pub state: Option<Booking>,
    /// Version of its last event (0 for none).
    pub version: i64,
}

/// Loads and folds a booking stream.
pub async fn load(conn: &mut PgConnection, booking_id: &str) -> Result<Loaded, BookingError> {
    let stored = event_store::load_stream(conn, STREAM_TYPE, booking_id).await?;
    let version = stored.last().map_or(0, |e| e.stream_version);
    let events = stored
        .iter()
        .map(|e| e.decode::<BookingEvent>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BookingError::Internal(format!("booking {booking_id} has an undecodable event: {e}")))?;
    Ok(Loaded { state: replay(&events), version })
}

/// Appends `events` at `expected` version.
pub async fn append(
    conn: &mut PgConnection,
    booking_id: &str,
    expected: i64,
    events: &[BookingEvent],
    metadata: &EventMetadata,
) -> Result<(), BookingError> {
    let new_events = events
        .iter()
        .map(|e| NewEvent::from_serde(e.event_type(), e))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BookingError::Internal(format!("serialising a booking event: {e}")))?;
    let expected = if expected == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(expected) };
    event_store::append(conn, STREAM_TYPE, booking_id, expected, &new_events, metadata).await?;
    Ok(())
}
