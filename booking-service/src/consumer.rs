//! Reactions of the booking-service to `payment.events.v1`: a success
//! confirms the booking (or, if it came too late, ends it so the payment is
//! refunded), a decline counts an attempt, a refund marks the booking.

use async_trait::async_trait;
use proto::events as pb;
use shared::{
    event_store::EventMetadata,
    inbox::{EventHandler, HandlerError, IncomingEvent},
    topics::{from_timestamp, payment_type},
};
use sqlx::PgConnection;

use crate::{
    bookings::{execute_in, record_payment_succeeded},
    domain::booking::{BookingCommand, BookingRejection},
    error::BookingError,
};

/// Handles payment events inside the inbox transaction.
pub struct PaymentEventHandler {
    /// Client-error declines after which a booking fails.
    pub max_payment_attempts: i32,
}

fn metadata(event: &IncomingEvent) -> EventMetadata {
    EventMetadata {
        correlation_id: event.headers.correlation_id.clone(),
        causation_id: Some(event.headers.id.clone()),
        traceparent: shared::trace_context::current_traceparent().or_else(|| event.headers.traceparent.clone()),
        actor: Some("system:payment-events".into()),
    }
}

fn outcome(result: Result<impl Sized, BookingError>) -> Result<(), HandlerError> {
    match result {
        Ok(_) => Ok(()),
        // A payment for a booking this service never had: nothing to apply.
        Err(BookingError::Rejected(BookingRejection::NotFound)) => {
            Err(HandlerError::Poison("payment event for an unknown booking".into()))
        }
        Err(error) => Err(HandlerError::Transient(anyhow::anyhow!(error.to_string()))),
    }
}

#[async_trait]
impl EventHandler for PaymentEventHandler {
    fn wants(&self, ce_type: &str) -> bool {
        ["PaymentSucceeded", "PaymentFailed", "PaymentRefunded"].iter().any(|t| ce_type == payment_type(t))
    }

    async fn handle(&self, tx: &mut PgConnection, event: &IncomingEvent) -> Result<(), HandlerError> {
        let meta = metadata(event);
        let ce_type = event.headers.event_type.as_str();
        if ce_type == payment_type("PaymentSucceeded") {
            let paid: pb::PaymentSucceeded = event.decode()?;
            let processed_at = paid
                .processed_at
                .as_ref()
                .and_then(from_timestamp)
                .ok_or_else(|| HandlerError::Poison("PaymentSucceeded without processed_at".into()))?;
            outcome(record_payment_succeeded(tx, &paid.booking_id, &paid.payment_intent_id, processed_at, &meta).await)
        } else if ce_type == payment_type("PaymentFailed") {
            let failed: pb::PaymentFailed = event.decode()?;
            let client_error = failed.failure_concept() == pb::FailureConcept::ClientError;
            let max_attempts = self.max_payment_attempts;
            let code = failed.failure_code.clone();
            outcome(
                execute_in(tx, &failed.booking_id, &meta, move |_, now| BookingCommand::RecordPaymentFailed {
                    failure_code: code.clone(),
                    client_error,
                    max_attempts,
                    now,
                })
                .await,
            )
        } else if ce_type == payment_type("PaymentRefunded") {
            let refunded: pb::PaymentRefunded = event.decode()?;
            outcome(execute_in(tx, &refunded.booking_id, &meta, |_, now| BookingCommand::RecordRefund { now }).await)
        } else {
            // PaymentIntentCreated and future types need nothing here.
            Ok(())
        }
    }
}
