//! The read side: projections of booking events into `booking_view`
//! (behind `GET /bookings/my`) and `occupied_seats` (the seed's
//! occupiedSeats documents). Rebuildable from the event store.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shared::{
    event_store::StoredEvent,
    projection::{Projection, ProjectionError},
};
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

/// One occupiedSeats document.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OccupiedSeatRow {
    /// The holding booking.
    pub booking_id: String,
    /// Its owner.
    pub user_id: String,
    /// End of the hold; `None` once booked.
    pub locked_until: Option<DateTime<Utc>>,
    /// `locked` or `booked`.
    pub status: String,
}

/// Bookings by user and occupied seats, from booking events.
pub struct BookingViews;

#[async_trait]
impl Projection for BookingViews {
    fn name(&self) -> &'static str {
        "booking_views"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["booking_view", "occupied_seats"]
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
        create index booking_view_by_user on booking_view (user_id, created_at desc, booking_id desc);
        create table occupied_seats (
            performance_id text not null,
            seat_id        text not null,
            booking_id     text not null,
            user_id        text not null,
            locked_until   timestamptz,
            status         text not null,
            primary key (performance_id, seat_id)
        );
        create index occupied_seats_booking on occupied_seats (booking_id);"
    }

    async fn apply(&self, conn: &mut PgConnection, stored: &StoredEvent) -> Result<(), ProjectionError> {
        if stored.stream_type != <crate::domain::booking::Booking as shared::aggregate::Aggregate>::STREAM_TYPE {
            return Ok(());
        }
        let event: BookingEvent = stored.decode().map_err(|e| ProjectionError::decode(stored, e))?;
        let id = stored.stream_id.as_str();
        let status = match &event {
            BookingEvent::SeatLocked(created) => {
                sqlx::query(
                    "insert into booking_view (booking_id, user_id, performance_id, seat_ids, total_amount, status, \
                        payment_intent_id, created_at, version) values ($1, $2, $3, $4, $5, 'pending', $6, $7, $8) \
                     on conflict (booking_id) do nothing",
                )
                .bind(id)
                .bind(&created.user_id)
                .bind(&created.performance_id)
                .bind(&created.seat_ids)
                .bind(created.total_amount)
                .bind(&created.payment_intent_id)
                .bind(created.created_at)
                .bind(stored.stream_version)
                .execute(&mut *conn)
                .await?;
                // A later hold on the same seat replaces a lapsed one.
                sqlx::query(
                    "insert into occupied_seats (performance_id, seat_id, booking_id, user_id, locked_until, status) \
                     select $1, seat, $2, $3, $4, 'locked' from unnest($5::text[]) seat \
                     on conflict (performance_id, seat_id) do update set booking_id = excluded.booking_id, \
                        user_id = excluded.user_id, locked_until = excluded.locked_until, status = 'locked'",
                )
                .bind(&created.performance_id)
                .bind(id)
                .bind(&created.user_id)
                .bind(created.locked_until)
                .bind(&created.seat_ids)
                .execute(&mut *conn)
                .await?;
                return Ok(());
            }
            BookingEvent::PaymentAdmitted { .. } | BookingEvent::PaymentDeclined { .. } => return Ok(()),
            BookingEvent::BookingConfirmed { .. } => {
                sqlx::query("update occupied_seats set status = 'booked', locked_until = null where booking_id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                BookingStatus::Confirmed
            }
            BookingEvent::BookingCancelled { .. } => BookingStatus::Cancelled,
            BookingEvent::BookingExpired { .. } => BookingStatus::Expired,
            BookingEvent::BookingFailed { .. } => BookingStatus::Failed,
            BookingEvent::BookingRefunded { .. } => BookingStatus::Refunded,
        };
        if event.releases_seats() {
            sqlx::query("delete from occupied_seats where booking_id = $1").bind(id).execute(&mut *conn).await?;
        }
        sqlx::query("update booking_view set status = $2, version = $3 where booking_id = $1 and version < $3")
            .bind(id)
            .bind(status.as_str())
            .bind(stored.stream_version)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
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

/// The occupiedSeats document of a seat, unless the seat is free (a lapsed
/// hold counts as free whether or not the sweeper has run).
pub async fn occupied_seat(
    conn: &mut PgConnection,
    performance_id: &str,
    seat_id: &str,
) -> Result<Option<OccupiedSeatRow>, sqlx::Error> {
    sqlx::query_as(
        "select booking_id, user_id, locked_until, status from occupied_seats \
         where performance_id = $1 and seat_id = $2 and (status = 'booked' or locked_until > now())",
    )
    .bind(performance_id)
    .bind(seat_id)
    .fetch_optional(conn)
    .await
}
