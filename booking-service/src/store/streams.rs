//! Loading and appending booking streams (the typed event-store helpers of
//! `shared` with this aggregate's fold).

use shared::event_store::{self, EventMetadata, TypedStreamError};
use sqlx::PgConnection;

use crate::{
    domain::booking::{replay, Booking, BookingEvent},
    error::BookingError,
};

/// The stream type of bookings in the event store.
pub const STREAM_TYPE: &str = "booking";

/// The state and the version it was loaded at.
pub struct Loaded {
    /// `None` if the stream does not exist.
    pub state: Option<Booking>,
    /// Version of its last event (0 for none).
    pub version: i64,
}

impl shared::event_store::DomainEvent for BookingEvent {
    fn event_type(&self) -> &'static str {
        BookingEvent::event_type(self)
    }
}

impl From<TypedStreamError> for BookingError {
    fn from(error: TypedStreamError) -> Self {
        match error {
            TypedStreamError::Store(e) => e.into(),
            TypedStreamError::Codec { .. } => Self::Internal(error.to_string()),
        }
    }
}

/// Loads and folds a stream.
pub async fn load(conn: &mut PgConnection, booking_id: &str) -> Result<Loaded, BookingError> {
    let (events, version) = event_store::load_typed::<BookingEvent>(conn, STREAM_TYPE, booking_id).await?;
    Ok(Loaded { state: replay(&events), version })
}

/// Appends `events` after `expected` (0: the stream must not exist).
pub async fn append(
    conn: &mut PgConnection,
    booking_id: &str,
    expected: i64,
    events: &[BookingEvent],
    metadata: &EventMetadata,
) -> Result<(), BookingError> {
    Ok(event_store::append_typed(conn, STREAM_TYPE, booking_id, expected, events, metadata).await?)
}
