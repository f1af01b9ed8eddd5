//! Reactions of the payment-service to `booking.events.v1`: `SeatLocked`
//! creates the payment intent (amount from the booking-service, never the
//! client); a cancelled, expired or failed booking closes it, and refunds it
//! if it was already paid.

use std::sync::Arc;

use async_trait::async_trait;
use proto::events as pb;
use shared::{
    event_store::EventMetadata,
    inbox::{EventHandler, HandlerError, IncomingEvent},
    topics::{booking_type, from_timestamp},
};
use sqlx::PgConnection;

use crate::{
    arrivals::IntentArrivals,
    domain::intent::{BookingEnd, IntentCreated, PaymentCommand, PaymentRejection},
    error::PaymentError,
    payments::execute_in,
};

/// Handles booking events inside the inbox transaction, and announces each
/// intent it created to the requests waiting for it.
pub struct BookingEventHandler {
    /// Who waits for which intent.
    pub arrivals: Arc<IntentArrivals>,
}

fn metadata(event: &IncomingEvent) -> EventMetadata {
    EventMetadata {
        correlation_id: event.headers.correlation_id.clone(),
        causation_id: Some(event.headers.id.clone()),
        traceparent: shared::trace_context::current_traceparent().or_else(|| event.headers.traceparent.clone()),
        actor: Some("system:booking-events".into()),
    }
}

fn outcome(result: Result<impl Sized, PaymentError>) -> Result<(), HandlerError> {
    match result {
        // Re-created or re-closed: already applied.
        Ok(_) | Err(PaymentError::Rejected(PaymentRejection::AlreadyExists)) => Ok(()),
        // Any other refusal is deterministic: retrying cannot change it.
        Err(PaymentError::Rejected(rejection)) => {
            Err(HandlerError::Poison(format!("booking event refused by the intent: {rejection}")))
        }
        Err(PaymentError::Invalid(reason)) => Err(HandlerError::Poison(reason)),
        Err(error) => Err(HandlerError::Transient(anyhow::anyhow!(error.to_string()))),
    }
}

async fn end(
    tx: &mut PgConnection,
    event: &IncomingEvent,
    booking_id: &str,
    end: BookingEnd,
) -> Result<(), HandlerError> {
    // The booking-service's SeatLocked names the intent; find it by booking.
    let intent = crate::store::work::intent_of_booking(tx, booking_id).await?;
    let Some(intent) = intent else {
        return Err(HandlerError::Poison(format!("no payment intent for booking {booking_id}")));
    };
    let now = chrono::Utc::now();
    outcome(execute_in(tx, &intent, &metadata(event), PaymentCommand::BookingEnded { end, now }).await)
}

#[async_trait]
impl EventHandler for BookingEventHandler {
    fn wants(&self, ce_type: &str) -> bool {
        ["SeatLocked", "BookingCancelled", "BookingExpired", "BookingFailed"].iter().any(|t| ce_type == booking_type(t))
    }

    async fn handle(&self, tx: &mut PgConnection, event: &IncomingEvent) -> Result<(), HandlerError> {
        let ce_type = event.headers.event_type.as_str();
        if ce_type == booking_type("SeatLocked") {
            let locked: pb::SeatLocked = event.decode()?;
            let total = locked.total.clone().unwrap_or_default();
            let payable_until = locked.locked_until.as_ref().and_then(from_timestamp);
            let created_at = locked.created_at.as_ref().and_then(from_timestamp);
            let (Some(payable_until), Some(created_at)) = (payable_until, created_at) else {
                return Err(HandlerError::Poison("SeatLocked without locked_until or created_at".into()));
            };
            if locked.payment_intent_id.is_empty() || total.amount <= 0 {
                return Err(HandlerError::Poison("SeatLocked without an intent id or a positive total".into()));
            }
            let created = IntentCreated {
                payment_intent_id: locked.payment_intent_id.clone(),
                booking_id: locked.booking_id,
                user_id: locked.user_id,
                amount: total.amount,
                currency: if total.currency.is_empty() { "KRW".into() } else { total.currency },
                payable_until,
                created_at,
            };
            outcome(execute_in(tx, &locked.payment_intent_id, &metadata(event), PaymentCommand::Create(created)).await)
        } else if ce_type == booking_type("BookingCancelled") {
            let e: pb::BookingCancelled = event.decode()?;
            end(tx, event, &e.booking_id, BookingEnd::Cancelled).await
        } else if ce_type == booking_type("BookingExpired") {
            let e: pb::BookingExpired = event.decode()?;
            end(tx, event, &e.booking_id, BookingEnd::Expired).await
        } else if ce_type == booking_type("BookingFailed") {
            let e: pb::BookingFailed = event.decode()?;
            end(tx, event, &e.booking_id, BookingEnd::Failed).await
        } else {
            Ok(())
        }
    }

    async fn committed(&self, event: &IncomingEvent) {
        if event.headers.event_type == booking_type("SeatLocked") {
            if let Ok(locked) = event.decode::<pb::SeatLocked>() {
                self.arrivals.announce(&locked.payment_intent_id);
            }
        }
    }
}
