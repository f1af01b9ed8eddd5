//! Seat holds: where "a seat can't be sold twice" is enforced.
//!
//! `book_seats` (a database function, migration 1006) inserts one row per
//! seat; the `(performance_id, seat_id)` primary key is what makes a second
//! holder impossible. A new booking takes two round trips here
//! ([`booking_context`], then [`hold_and_start`], which also writes its
//! deadline, its `booking_view` row and its first events).

use chrono::{DateTime, Utc};
use kernel::event_store::{Columns, EventMetadata, NewEvent};
use sqlx::{postgres::PgDatabaseError, PgConnection};

use crate::domain::booking::{Booking, BookingEvent, SeatLocked};

/// What a new booking reads before it holds seats.
#[derive(Debug, Clone)]
pub struct BookingContext {
    /// The performance exists.
    pub performance_exists: bool,
    /// Prices of the requested seats that exist, as (seat_id, price).
    pub prices: Vec<(String, i64)>,
    /// The database clock.
    pub now: DateTime<Utc>,
}

/// One round trip, outside any transaction and with no lock: reads the
/// performance, the requested seats' prices and the database clock. The
/// catalog is insert-only, so what this reads is still true when the seats
/// are held.
pub async fn booking_context(
    conn: &mut PgConnection,
    performance_id: &str,
    seat_ids: &[String],
) -> Result<BookingContext, sqlx::Error> {
    /// Performance exists, seat, its price, the clock: one row per found seat (or one with no seat).
    type Row = (bool, Option<String>, Option<i64>, DateTime<Utc>);
    let rows: Vec<Row> = sqlx::query_as(
        "select p.performance_id is not null, s.seat_id, s.price, now() \
           from (select 1) as one \
           left join performances p on p.performance_id = $1 \
           left join seats s on s.performance_id = p.performance_id and s.seat_id = any($2)",
    )
    .bind(performance_id)
    .bind(seat_ids)
    .fetch_all(conn)
    .await?;
    let now = rows.first().map(|row| row.3).ok_or(sqlx::Error::RowNotFound)?;
    Ok(BookingContext {
        performance_exists: rows.iter().any(|row| row.0),
        prices: rows.into_iter().filter_map(|(_, seat, price, _)| Some((seat?, price?))).collect(),
        now,
    })
}

/// What [`hold_and_start`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Every seat is held, the sweeper's deadline and the `booking_view`
    /// row are written and the booking's events appended.
    Held,
    /// The user already holds or owns `held` seats of the performance, and
    /// these would take them over the limit; nothing was written.
    OverQuota {
        /// Seats the user holds or owns already.
        held: i64,
    },
    /// This seat (the first unavailable one in request order) is taken;
    /// nothing was written.
    Taken(String),
}

/// SQLSTATE of `book_seats` when a seat is taken (detail: the seat).
const SEAT_TAKEN: &str = "BK001";
/// SQLSTATE of `book_seats` when the user would go over the limit (detail: seats held).
const OVER_QUOTA: &str = "BK002";

/// One round trip, one call of `book_seats`: takes the user's quota lock
/// for the performance, counts the seats the user holds live or owns
/// there; within `max_seats`, holds every requested seat of `created`, sets
/// the booking's deadline for the sweeper, writes its `booking_view` row
/// (version 1) and appends `events` as the booking's stream from version 1.
///
/// Called outside a transaction block it is its own transaction, committed
/// when it returns [`Hold::Held`]; inside one (a request with an
/// idempotency key) the caller commits. It writes nothing unless every
/// seat could be held within the limit. A stream that exists already fails
/// with a unique violation.
pub async fn hold_and_start(
    conn: &mut PgConnection,
    created: &SeatLocked,
    max_seats: usize,
    (stream_type, events): (&str, &[NewEvent]),
    metadata: &EventMetadata,
) -> Result<Hold, sqlx::Error> {
    let room = i64::try_from(max_seats).unwrap_or(i64::MAX) - i64::try_from(created.seat_ids.len()).unwrap_or(i64::MAX);
    let metadata = serde_json::to_value(metadata).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let Columns { event_ids, types, schemas, payloads, published } = Columns::of(events.iter());
    let called =
        sqlx::query("select book_seats($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)")
            .bind(&created.performance_id)
            .bind(&created.booking_id)
            .bind(&created.user_id)
            .bind(&created.seat_ids)
            .bind(room)
            .bind(created.locked_until)
            .bind(created.total_amount)
            .bind(&created.payment_intent_id)
            .bind(created.created_at)
            .bind(stream_type)
            .bind(&event_ids)
            .bind(&types)
            .bind(&schemas)
            .bind(&payloads)
            .bind(&published)
            .bind(&metadata)
            .execute(conn)
            .await;
    match called {
        Ok(_) => Ok(Hold::Held),
        Err(sqlx::Error::Database(error)) => {
            let detail = error.try_downcast_ref::<PgDatabaseError>().and_then(PgDatabaseError::detail);
            match (error.code().as_deref(), detail) {
                (Some(SEAT_TAKEN), Some(seat)) => Ok(Hold::Taken(seat.to_owned())),
                (Some(OVER_QUOTA), Some(held)) => Ok(Hold::OverQuota { held: held.parse().unwrap_or(i64::MAX) }),
                _ => Err(sqlx::Error::Database(error)),
            }
        }
        Err(error) => Err(error),
    }
}

/// True if the booking still holds all of its seats (row-locked until commit).
pub async fn still_holds_all(conn: &mut PgConnection, booking: &Booking) -> Result<bool, sqlx::Error> {
    let held: Vec<String> =
        sqlx::query_scalar("select seat_id from seat_holds where performance_id = $1 and booking_id = $2 for update")
            .bind(&booking.created.performance_id)
            .bind(&booking.created.booking_id)
            .fetch_all(conn)
            .await?;
    Ok(held.len() == booking.created.seat_ids.len())
}

/// Brings the seat holds and the sweeper's deadline in line with `event`.
pub async fn follow(conn: &mut PgConnection, booking: &Booking, event: &BookingEvent) -> Result<(), sqlx::Error> {
    let id = booking.created.booking_id.as_str();
    match event {
        // `hold_and_start` wrote the holds, the deadline and the view row with the event.
        BookingEvent::SeatLocked(_) => {}
        BookingEvent::PaymentAdmitted { admitted_until, .. } => {
            sqlx::query("update seat_holds set admitted_until = $2 where booking_id = $1 and status = 'locked'")
                .bind(id)
                .bind(admitted_until)
                .execute(&mut *conn)
                .await?;
            set_deadline(conn, id, booking.created.locked_until.max(*admitted_until)).await?;
        }
        BookingEvent::PaymentDeclined { .. } => {
            sqlx::query("update seat_holds set admitted_until = null where booking_id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            set_deadline(conn, id, booking.created.locked_until).await?;
        }
        BookingEvent::BookingConfirmed { .. } => {
            sqlx::query(
                "update seat_holds set status = 'booked', locked_until = null, admitted_until = null \
                 where booking_id = $1",
            )
            .bind(id)
            .execute(&mut *conn)
            .await?;
            clear_deadline(conn, id).await?;
        }
        BookingEvent::BookingCancelled { .. }
        | BookingEvent::BookingExpired { .. }
        | BookingEvent::BookingFailed { .. } => {
            // Only this booking's rows: seats re-held by others after a lapse stay theirs.
            sqlx::query("delete from seat_holds where booking_id = $1").bind(id).execute(&mut *conn).await?;
            clear_deadline(conn, id).await?;
        }
        BookingEvent::BookingRefunded { .. } => {}
    }
    Ok(())
}

async fn set_deadline(conn: &mut PgConnection, booking_id: &str, due_at: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into booking_deadlines (booking_id, due_at) values ($1, $2) \
         on conflict (booking_id) do update set due_at = excluded.due_at",
    )
    .bind(booking_id)
    .bind(due_at)
    .execute(conn)
    .await?;
    Ok(())
}

async fn clear_deadline(conn: &mut PgConnection, booking_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("delete from booking_deadlines where booking_id = $1").bind(booking_id).execute(conn).await?;
    Ok(())
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

/// The occupiedSeats document of a seat, read from the hold itself (so it
/// is as current as the seat's last commit), unless the seat is free: a
/// lapsed hold counts as free whether or not the sweeper has run.
pub async fn occupied_seat(
    conn: &mut PgConnection,
    performance_id: &str,
    seat_id: &str,
) -> Result<Option<OccupiedSeatRow>, sqlx::Error> {
    sqlx::query_as(
        "select booking_id, user_id, locked_until, status from seat_holds \
         where performance_id = $1 and seat_id = $2 and (status = 'booked' or locked_until > now())",
    )
    .bind(performance_id)
    .bind(seat_id)
    .fetch_optional(conn)
    .await
}

/// Pending bookings whose deadline has passed, oldest first.
pub async fn due_bookings(conn: &mut PgConnection, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("select booking_id from booking_deadlines where due_at <= now() order by due_at limit $1")
        .bind(limit)
        .fetch_all(conn)
        .await
}
