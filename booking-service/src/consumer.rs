//! Reactions of the booking-service to `payment.events.v1`: a success
//! confirms the booking (or, if it came too late, ends it so the payment is
//! refunded), a decline counts an attempt, a refund marks the booking.

use async_trait::async_trait;
use messaging::inbox::EventHandler;
use messaging::inbox::HandlerError;
use messaging::inbox::IncomingEvent;
use messaging::topics::payment_type;
use proto::events as pb;
use proto::time::from_timestamp;
use sqlx::PgConnection;

use crate::{
    domain::booking::{BookingCommand, BookingRejection},
    error::BookingError,
    use_cases::{execute_in, record_payment_succeeded},
};

/// Handles payment events inside the inbox transaction, and announces the
/// bookings they decided to whoever waits for them.
pub struct PaymentEventHandler {
    /// Client-error declines after which a booking fails.
    pub max_payment_attempts: i32,
    /// Who waits for which booking's decision.
    pub decision_waiters: std::sync::Arc<runtime::waiters::Waiters>,
}

/// The payment events this service reacts to, decoded once. Every other
/// type (PaymentIntentCreated, types added later) is acknowledged untouched.
enum PaymentEventIn {
    Succeeded(pb::PaymentSucceeded),
    Failed(pb::PaymentFailed),
    Refunded(pb::PaymentRefunded),
}

type Decoder<T> = fn(&IncomingEvent) -> Result<T, HandlerError>;

impl PaymentEventIn {
    /// How to decode records of `ce_type`, if this service wants them.
    fn decoder(ce_type: &str) -> Option<Decoder<Self>> {
        let name = ce_type.strip_prefix(&payment_type(""))?;
        Some(match name {
            "PaymentSucceeded" => |e| e.decode().map(Self::Succeeded),
            "PaymentFailed" => |e| e.decode().map(Self::Failed),
            "PaymentRefunded" => |e| e.decode().map(Self::Refunded),
            _ => return None,
        })
    }
}

const ACTOR: &str = "system:payment-events";

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
        // The database's own words decide: a lost connection is retried, a
        // refused statement is dead-lettered after a few tries.
        Err(BookingError::Database(error)) => Err(error.into()),
        Err(BookingError::Internal(reason)) => Err(HandlerError::Permanent(reason)),
        Err(error) => Err(HandlerError::Transient(anyhow::anyhow!(error.to_string()))),
    }
}

#[async_trait]
impl EventHandler for PaymentEventHandler {
    fn wants(&self, ce_type: &str) -> bool {
        PaymentEventIn::decoder(ce_type).is_some()
    }

    async fn handle(&self, tx: &mut PgConnection, event: &IncomingEvent) -> Result<(), HandlerError> {
        let Some(decode) = PaymentEventIn::decoder(&event.headers.event_type) else { return Ok(()) };
        let meta = event.caused_metadata(ACTOR);
        match decode(event)? {
            PaymentEventIn::Succeeded(paid) => {
                let processed_at = paid
                    .processed_at
                    .as_ref()
                    .and_then(from_timestamp)
                    .ok_or_else(|| HandlerError::Poison("PaymentSucceeded without processed_at".into()))?;
                outcome(
                    event,
                    record_payment_succeeded(tx, &paid.booking_id, &paid.payment_intent_id, processed_at, &meta).await,
                )
            }
            PaymentEventIn::Failed(failed) => {
                let client_error = failed.failure_concept() == pb::FailureConcept::ClientError;
                let max_attempts = self.max_payment_attempts;
                let (code, intent) = (failed.failure_code.clone(), failed.payment_intent_id.clone());
                let command = move |_: &_, now| BookingCommand::RecordPaymentFailed {
                    payment_intent_id: intent.clone(),
                    failure_code: code.clone(),
                    client_error,
                    max_attempts,
                    now,
                };
                outcome(event, execute_in(tx, &failed.booking_id, &meta, command).await)
            }
            PaymentEventIn::Refunded(refunded) => {
                let intent = refunded.payment_intent_id.clone();
                let command = move |_: &_, now| BookingCommand::RecordRefund { payment_intent_id: intent.clone(), now };
                outcome(event, execute_in(tx, &refunded.booking_id, &meta, command).await)
            }
        }
    }

    async fn committed(&self, event: &IncomingEvent) {
        let Some(Ok(decoded)) = PaymentEventIn::decoder(&event.headers.event_type).map(|decode| decode(event)) else {
            return;
        };
        let booking_id = match &decoded {
            PaymentEventIn::Succeeded(e) => &e.booking_id,
            PaymentEventIn::Failed(e) => &e.booking_id,
            PaymentEventIn::Refunded(e) => &e.booking_id,
        };
        self.decision_waiters.announce(booking_id);
    }
}
