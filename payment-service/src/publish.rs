//! Payment domain events → the public `payment.events.v1` integration
//! events (protobuf), keyed by booking id so a booking's payment events
//! stay in order. `PaymentIntentClosed`, the charge attempts and the refund bookkeeping are internal.

use kernel::event_store::StoredEvent;
use messaging::outbox::own_event;
use messaging::outbox::IntegrationMapper;
use messaging::outbox::MappingError;
use messaging::outbox::OutgoingRecord;
use messaging::topics::payment_type;
use prost::Message;
use proto::events as pb;
use proto::time::timestamp;

use crate::domain::intent::{FailureConcept, PaymentEvent, PaymentIntent};

/// Maps stored payment events to Kafka records.
pub struct PaymentEventMapper {
    /// The payment events topic.
    pub topic: String,
}

impl IntegrationMapper for PaymentEventMapper {
    fn to_record(&self, stored: &StoredEvent) -> Result<Option<OutgoingRecord>, MappingError> {
        let Some(event) = own_event::<PaymentIntent>(stored)? else { return Ok(None) };
        let payment_intent_id = stored.stream_id.clone();
        let (booking_id, value) = match event {
            PaymentEvent::PaymentIntentCreated(e) => (
                e.booking_id.clone(),
                pb::PaymentIntentCreated {
                    payment_intent_id,
                    booking_id: e.booking_id,
                    user_id: e.user_id,
                    amount: Some(pb::Money { amount: e.amount, currency: e.currency }),
                    payable_until: Some(timestamp(e.payable_until)),
                    created_at: Some(timestamp(e.created_at)),
                }
                .encode_to_vec(),
            ),
            PaymentEvent::PaymentSucceeded {
                attempt: _,
                booking_id,
                user_id,
                amount,
                currency,
                payment_method_token,
                processed_at,
            } => (
                booking_id.clone(),
                pb::PaymentSucceeded {
                    payment_intent_id,
                    booking_id,
                    user_id,
                    amount: Some(pb::Money { amount, currency }),
                    payment_method_token,
                    processed_at: Some(timestamp(processed_at)),
                }
                .encode_to_vec(),
            ),
            PaymentEvent::PaymentFailed {
                attempt: _,
                booking_id,
                user_id,
                failure_code,
                failure_concept,
                client_failures,
                processed_at,
            } => (
                booking_id.clone(),
                pb::PaymentFailed {
                    payment_intent_id,
                    booking_id,
                    user_id,
                    failure_code,
                    failure_concept: match failure_concept {
                        FailureConcept::ClientError => pb::FailureConcept::ClientError,
                        FailureConcept::ServerError => pb::FailureConcept::ServerError,
                    }
                    .into(),
                    client_failures,
                    processed_at: Some(timestamp(processed_at)),
                }
                .encode_to_vec(),
            ),
            PaymentEvent::PaymentRefunded { booking_id, user_id, amount, currency, refunded_at } => (
                booking_id.clone(),
                pb::PaymentRefunded {
                    payment_intent_id,
                    booking_id,
                    user_id,
                    amount: Some(pb::Money { amount, currency }),
                    reason: pb::RefundReason::BookingNotPayable.into(),
                    refunded_at: Some(timestamp(refunded_at)),
                }
                .encode_to_vec(),
            ),
            PaymentEvent::ChargeRequested { .. }
            | PaymentEvent::ChargeAbandoned { .. }
            | PaymentEvent::PaymentIntentClosed { .. }
            | PaymentEvent::PaymentRefundRequested { .. }
            | PaymentEvent::RefundAttemptFailed { .. }
            | PaymentEvent::RefundNeedsReview { .. }
            | PaymentEvent::RefundRetried { .. }
            | PaymentEvent::RefundResolvedByHand { .. } => return Ok(None),
        };
        Ok(Some(OutgoingRecord::keyed(&self.topic, booking_id, payment_type(&stored.event_type), value)))
    }
}
