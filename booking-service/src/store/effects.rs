//! What a booking's events change besides its stream, in the same
//! transaction: its user's booking list, the seat holds that keep a seat
//! from being sold twice, the waiting-room admission it used, and the
//! booking metrics.

use async_trait::async_trait;
use sqlx::PgConnection;

use crate::{
    domain::booking::{Booking, BookingEvent},
    error::BookingError,
    store::{holds, queue, views},
};

/// The booking-service's [`kernel::aggregate::Effects`] of a booking.
pub struct BookingEffects;

#[async_trait]
impl kernel::aggregate::Effects<Booking> for BookingEffects {
    type Error = BookingError;

    async fn follow(
        &self,
        conn: &mut PgConnection,
        id: &str,
        version: i64,
        event: &BookingEvent,
        after: &Booking,
    ) -> Result<(), BookingError> {
        // A new booking's row was written by `holds::hold_and_start`, with its holds.
        if !matches!(event, BookingEvent::SeatLocked(_)) {
            views::follow(conn, id, version, event).await?;
        }
        let outcome = match event {
            // Counted where it is written (`BookingService::create`), with no effects of its own.
            BookingEvent::SeatLocked(_) => None,
            BookingEvent::BookingConfirmed { .. } => Some("confirmed"),
            BookingEvent::BookingCancelled { .. } => Some("cancelled"),
            BookingEvent::BookingExpired { .. } => Some("expired"),
            BookingEvent::BookingFailed { .. } => Some("failed"),
            BookingEvent::BookingRefunded { .. } => Some("refunded"),
            BookingEvent::PaymentAdmitted { .. } | BookingEvent::PaymentDeclined { .. } => None,
        };
        if let Some(outcome) = outcome {
            metrics::counter!("bookings_total", "outcome" => outcome).increment(1);
        }
        holds::follow(conn, after, event).await?;
        // A booking that ended gives its holder's waiting-room slot back.
        if matches!(
            event,
            BookingEvent::BookingConfirmed { .. }
                | BookingEvent::BookingCancelled { .. }
                | BookingEvent::BookingExpired { .. }
                | BookingEvent::BookingFailed { .. }
        ) {
            queue::end_admission(conn, &after.created.performance_id, &after.created.user_id).await?;
        }
        Ok(())
    }
}
