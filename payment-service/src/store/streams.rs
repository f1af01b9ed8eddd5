//! Loading and appending payment-intent streams (the typed event-store helpers of
//! `shared` with this aggregate's fold).

use shared::event_store::{self, EventMetadata, TypedStreamError};
use sqlx::PgConnection;

use crate::{
    domain::intent::{replay, PaymentEvent, PaymentIntent},
    error::PaymentError,
};

/// The stream type of payment-intents in the event store.
pub const STREAM_TYPE: &str = "payment_intent";

/// The state and the version it was loaded at.
pub struct Loaded {
    /// `None` if the stream does not exist.
    pub state: Option<PaymentIntent>,
    /// Version of its last event (0 for none).
    pub version: i64,
}

impl shared::event_store::DomainEvent for PaymentEvent {
    fn event_type(&self) -> &'static str {
        PaymentEvent::event_type(self)
    }
}

impl From<TypedStreamError> for PaymentError {
    fn from(error: TypedStreamError) -> Self {
        match error {
            TypedStreamError::Store(e) => e.into(),
            TypedStreamError::Codec { .. } => Self::Internal(error.to_string()),
        }
    }
}

/// Loads and folds a stream.
pub async fn load(conn: &mut PgConnection, payment_intent_id: &str) -> Result<Loaded, PaymentError> {
    let (events, version) = event_store::load_typed::<PaymentEvent>(conn, STREAM_TYPE, payment_intent_id).await?;
    Ok(Loaded { state: replay(&events), version })
}

/// Which of `payment_intent_ids` exist (one indexed query for all of them).
pub async fn existing(pool: &sqlx::PgPool, payment_intent_ids: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select stream_id from events where stream_type = $1 and stream_id = any($2) and stream_version = 1",
    )
    .bind(STREAM_TYPE)
    .bind(payment_intent_ids)
    .fetch_all(pool)
    .await
}

/// Appends `events` after `expected` (0: the stream must not exist).
pub async fn append(
    conn: &mut PgConnection,
    payment_intent_id: &str,
    expected: i64,
    events: &[PaymentEvent],
    metadata: &EventMetadata,
) -> Result<(), PaymentError> {
    Ok(event_store::append_typed(conn, STREAM_TYPE, payment_intent_id, expected, events, metadata).await?)
}
