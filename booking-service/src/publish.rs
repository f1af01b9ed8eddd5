//! Booking domain events → the public `booking.events.v1` integration
//! events (protobuf). Internal events (payment admissions, declines,
//! refund bookkeeping) are not published.

use kernel::event_store::StoredEvent;
use messaging::outbox::own_event;
use messaging::outbox::IntegrationMapper;
use messaging::outbox::MappingError;
use messaging::outbox::OutgoingRecord;
use messaging::topics::booking_type;
use prost::Message;
use proto::events as pb;
use proto::time::timestamp;

use crate::domain::booking::{Booking, BookingEvent, CancelReason, PaymentMethod};

/// Maps stored booking events to Kafka records keyed by booking id.
pub struct BookingEventMapper {
    /// The booking events topic.
    pub topic: String,
}

impl IntegrationMapper for BookingEventMapper {
    fn to_record(&self, stored: &StoredEvent) -> Result<Option<OutgoingRecord>, MappingError> {
        let Some(event) = own_event::<Booking>(stored)? else { return Ok(None) };
        let booking_id = stored.stream_id.clone();
        let value = match event {
            BookingEvent::SeatLocked(e) => pb::SeatLocked {
                booking_id: booking_id.clone(),
                payment_intent_id: e.payment_intent_id,
                user_id: e.user_id,
                performance_id: e.performance_id,
                seat_ids: e.seat_ids,
                total: Some(pb::Money { amount: e.total_amount, currency: e.currency }),
                payment_method: payment_method(e.payment_method).into(),
                locked_until: Some(timestamp(e.locked_until)),
                created_at: Some(timestamp(e.created_at)),
            }
            .encode_to_vec(),
            BookingEvent::BookingConfirmed { of, payment_intent_id, confirmed_at } => pb::BookingConfirmed {
                booking_id: booking_id.clone(),
                payment_intent_id,
                user_id: of.user_id,
                performance_id: of.performance_id,
                seat_ids: of.seat_ids,
                confirmed_at: Some(timestamp(confirmed_at)),
            }
            .encode_to_vec(),
            BookingEvent::BookingCancelled { of, reason, cancelled_at } => pb::BookingCancelled {
                booking_id: booking_id.clone(),
                user_id: of.user_id,
                performance_id: of.performance_id,
                seat_ids: of.seat_ids,
                reason: match reason {
                    CancelReason::UserRequested => pb::CancellationReason::UserRequested,
                }
                .into(),
                cancelled_at: Some(timestamp(cancelled_at)),
            }
            .encode_to_vec(),
            BookingEvent::BookingExpired { of, expired_at } => pb::BookingExpired {
                booking_id: booking_id.clone(),
                user_id: of.user_id,
                performance_id: of.performance_id,
                seat_ids: of.seat_ids,
                expired_at: Some(timestamp(expired_at)),
            }
            .encode_to_vec(),
            BookingEvent::BookingFailed { of, failed_attempts, failed_at } => pb::BookingFailed {
                booking_id: booking_id.clone(),
                user_id: of.user_id,
                performance_id: of.performance_id,
                seat_ids: of.seat_ids,
                reason: pb::BookingFailureReason::PaymentAttemptsExhausted.into(),
                failed_attempts,
                failed_at: Some(timestamp(failed_at)),
            }
            .encode_to_vec(),
            BookingEvent::PaymentAdmitted { .. }
            | BookingEvent::PaymentDeclined { .. }
            | BookingEvent::BookingRefunded { .. } => return Ok(None),
        };
        Ok(Some(OutgoingRecord::keyed(&self.topic, booking_id, booking_type(&stored.event_type), value)))
    }
}

fn payment_method(method: PaymentMethod) -> pb::PaymentMethod {
    match method {
        PaymentMethod::CreditCard => pb::PaymentMethod::CreditCard,
        PaymentMethod::BankTransfer => pb::PaymentMethod::BankTransfer,
        PaymentMethod::EasyPay => pb::PaymentMethod::EasyPay,
    }
}
