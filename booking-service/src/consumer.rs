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

fn outcome(event: &IncomingEvent, result: Result<impl Sized, BookingError>) -> Result<(), HandlerError> {
    match result {
        Ok(_) => Ok(()),
        // Forged or misrouted: the booking trusts only its own intent. Ignored
        // (the inbox remembers it), counted and logged for a person to look at.
        Err(BookingError::Rejected(BookingRejection::ForeignPayment)) => {
            metrics::counter!("payment_events_ignored_total", "reason" => "foreign_intent").increment(1);
            tracing::warn!(
                ce_id = event.headers.id,
                ce_type = event.headers.event_type,
                booking_id = event.key.as_deref().unwrap_or_default(),
                "ignored a payment event for another payment intent than the booking's"
            );
            Ok(())
        }
        // Any other refusal (an unknown booking, a refund of a sale) is
        // deterministic: retrying cannot change it, so it is dead-lettered.
        Err(BookingError::Rejected(rejection)) => {
            Err(HandlerError::Poison(format!("payment event refused by the booking: {rejection}")))
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
            outcome(
                event,
                record_payment_succeeded(tx, &paid.booking_id, &paid.payment_intent_id, processed_at, &meta).await,
            )
        } else if ce_type == payment_type("PaymentFailed") {
            let failed: pb::PaymentFailed = event.decode()?;
            let client_error = failed.failure_concept() == pb::FailureConcept::ClientError;
            let max_attempts = self.max_payment_attempts;
            let code = failed.failure_code.clone();
            let intent = failed.payment_intent_id.clone();
            outcome(
                event,
                execute_in(tx, &failed.booking_id, &meta, move |_, now| BookingCommand::RecordPaymentFailed {
                    payment_intent_id: intent.clone(),
                    failure_code: code.clone(),
                    client_error,
                    max_attempts,
                    now,
                })
                .await,
            )
        } else if ce_type == payment_type("PaymentRefunded") {
            let refunded: pb::PaymentRefunded = event.decode()?;
            let intent = refunded.payment_intent_id.clone();
            outcome(
                event,
                execute_in(tx, &refunded.booking_id, &meta, move |_, now| BookingCommand::RecordRefund {
                    payment_intent_id: intent.clone(),
                    now,
                })
                .await,
            )
        } else {
            // PaymentIntentCreated and future types need nothing here.
            Ok(())
        }
    }
}
