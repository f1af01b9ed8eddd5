//! The read side behind `GET /bookings/my`: `booking_view`, one row per
//! booking, written in the same transaction as the booking's events
//! ([`follow`], called by every command; a new booking's row is written by
//! the call that holds its seats, `holds::hold_and_start`), so a read
//! always shows every write committed before it, without waiting for
//! anything. It is still a projection of the event store: `ticketing
//! rebuild-projections` replays the log into fresh tables and swaps them in
//! (blue/green), through [`follow`] for every event.
//!
//! The occupiedSeats documents are read straight from the seat holds
//! (`holds::occupied_seat`), the table that decides them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kernel::event_store::StoredEvent;
use kernel::projection::Projection;
use kernel::projection::ProjectionError;
use sqlx::PgConnection;

use crate::domain::booking::{BookingEvent, BookingStatus};

/// One row of `booking_view`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BookingRow {
    /// The booking.
    pub booking_id: String,
    /// Its owner.
    pub user_id: String,
    /// The performance.
    pub performance_id: String,
    /// Seats in request order.
    pub seat_ids: Vec<String>,
    /// Total in won.
    pub total_amount: i64,
    /// Status name.
    pub status: String,
    /// The payment intent.
    pub payment_intent_id: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Bookings by user, from booking events.
pub struct BookingViews;

#[async_trait]
impl Projection for BookingViews {
    fn name(&self) -> &'static str {
        "booking_views"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["booking_view"]
    }

    fn inline(&self) -> bool {
        true
    }

    fn create_tables_sql(&self) -> &'static str {
        "create table booking_view (
            booking_id        text primary key,
            user_id           text not null,
            performance_id    text not null,
            seat_ids          text[] not null,
            total_amount      bigint not null,
            status            text not null,
            payment_intent_id text not null,
            created_at        timestamptz not null,
            version           bigint not null
        );
        create index booking_view_by_user on booking_view (user_id, created_at desc, booking_id desc);"
    }

    async fn apply(&self, conn: &mut PgConnection, stored: &StoredEvent) -> Result<(), ProjectionError> {
        if stored.stream_type != <crate::domain::booking::Booking as kernel::aggregate::Aggregate>::STREAM_TYPE {
            return Ok(());
        }
        let event: BookingEvent = stored.decode().map_err(|e| ProjectionError::decode(stored, e))?;
        follow(conn, &stored.stream_id, stored.stream_version, &event).await?;
        Ok(())
    }
}

/// Brings `booking_view` in line with `event`, version `version` of the
/// booking's stream: in the command's transaction, or replayed by a
/// rebuild. Applying an event twice, or an older one after a newer one,
/// changes nothing.
pub async fn follow(
    conn: &mut PgConnection,
    booking_id: &str,
    version: i64,
    event: &BookingEvent,
) -> Result<(), sqlx::Error> {
    let status = match event {
        BookingEvent::SeatLocked(created) => {
            sqlx::query(
                "insert into booking_view (booking_id, user_id, performance_id, seat_ids, total_amount, status, \
                    payment_intent_id, created_at, version) values ($1, $2, $3, $4, $5, 'pending', $6, $7, $8) \
                 on conflict (booking_id) do nothing",
            )
            .bind(booking_id)
            .bind(&created.user_id)
            .bind(&created.performance_id)
            .bind(&created.seat_ids)
            .bind(created.total_amount)
            .bind(&created.payment_intent_id)
            .bind(created.created_at)
            .bind(version)
            .execute(&mut *conn)
            .await?;
            return Ok(());
        }
        BookingEvent::PaymentAdmitted { .. } | BookingEvent::PaymentDeclined { .. } => return Ok(()),
        BookingEvent::BookingConfirmed { .. } => BookingStatus::Confirmed,
        BookingEvent::BookingCancelled { .. } => BookingStatus::Cancelled,
        BookingEvent::BookingExpired { .. } => BookingStatus::Expired,
        BookingEvent::BookingFailed { .. } => BookingStatus::Failed,
        BookingEvent::BookingRefunded { .. } => BookingStatus::Refunded,
    };
    sqlx::query("update booking_view set status = $2, version = $3 where booking_id = $1 and version < $3")
        .bind(booking_id)
        .bind(status.as_str())
        .bind(version)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A page of the user's bookings, newest first; `before` is a booking id.
pub async fn user_bookings(
    conn: &mut PgConnection,
    user_id: &str,
    limit: i64,
    before: Option<&str>,
) -> Result<Vec<BookingRow>, sqlx::Error> {
    sqlx::query_as(
        "select booking_id, user_id, performance_id, seat_ids, total_amount, status, payment_intent_id, created_at \
         from booking_view v where user_id = $1 \
           and ($3::text is null or (created_at, booking_id) < \
                (select created_at, booking_id from booking_view where booking_id = $3 and user_id = $1)) \
         order by created_at desc, booking_id desc limit $2",
    )
    .bind(user_id)
    .bind(limit)
    .bind(before)
    .fetch_all(conn)
    .await
}
