//! Loading and appending payment-intent streams.

use shared::event_store::{self, EventMetadata, ExpectedVersion, NewEvent};
use sqlx::PgConnection;

use crate::{
    domain::intent::{replay, PaymentEvent, PaymentIntent},
    error::PaymentError,
};

/// The stream type of payment intents in the event store.
pub const STREAM_TYPE: &str = "payment_intent";

/// An intent's state and the version it was loaded at.
pub struct Loaded {
    /// `None` if the stream does not exist.
    pub state: Option<PaymentIntent>,
    /// Version of its last event (0 for none).
    pub version: i64,
}

/// Loads and folds an intent stream.
pub async fn load(conn: &mut PgConnection, payment_intent_id: &str) -> Result<Loaded, PaymentError> {
    let stored = event_store::load_stream(conn, STREAM_TYPE, payment_intent_id).await?;
    let version = stored.last().map_or(0, |e| e.stream_version);
    let events = stored
        .iter()
        .map(|e| e.decode::<PaymentEvent>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PaymentError::Internal(format!("intent {payment_intent_id} has an undecodable event: {e}")))?;
    Ok(Loaded { state: replay(&events), version })
}

/// Appends `events` at `expected` version.
pub async fn append(
    conn: &mut PgConnection,
    payment_intent_id: &str,
    expected: i64,
    events: &[PaymentEvent],
    metadata: &EventMetadata,
) -> Result<(), PaymentError> {
    let new_events = events
        .iter()
        .map(|e| NewEvent::from_serde(e.event_type(), e))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PaymentError::Internal(format!("serialising a payment event: {e}")))?;
    let expected = if expected == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(expected) };
    event_store::append(conn, STREAM_TYPE, payment_intent_id, expected, &new_events, metadata).await?;
    Ok(())
}
