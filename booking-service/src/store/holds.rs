//! Seat holds: where "a seat can't be sold twice" is enforced.
//!
//! `hold_seats` inserts one row per seat; the `(performance_id, seat_id)`
//! primary key is what makes a second holder impossible. A new booking
//! takes two round trips here (`prepare_booking`, then `hold_seats`, which
//! also writes its `booking_view` row) before its event is appended.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::booking::{Booking, BookingEvent, SeatLocked};

/// What a new booking reads before it holds seats.
#[derive(Debug, Clone)]
pub struct BookingContext {
    /// The performance exists.
    pub performance_exists: bool,
    /// Prices of the requested seats that exist, as (seat_id, price).
    pub prices: Vec<(String, i64)>,
    /// The database clock (the transaction's start).
    pub now: DateTime<Utc>,
}

/// One round trip: takes the user's quota lock for the performance (one
/// user's bookings for one performance queue here, because the per-user
/// limit is a count-then-insert), reads the performance, the requested
/// seats' prices and the database clock. Run it first in the transaction;
/// [`hold_seats`] must follow as a later statement, so that its count sees
/// everything committed before the lock was granted.
pub async fn prepare_booking(
    conn: &mut PgConnection,
    performance_id: &str,
    seat_ids: &[String],
    user_id: &str,
) -> Result<BookingContext, sqlx::Error> {
    /// Performance exists, seat, its price, the clock: one row per found seat (or one with no seat).
    type Row = (bool, Option<String>, Option<i64>, DateTime<Utc>);
    let rows: Vec<Row> = sqlx::query_as(
        "select p.performance_id is not null, s.seat_id, s.price, now() \
           from (select pg_advisory_xact_lock(hashtextextended($3, 0))) as quota_lock \
           left join performances p on p.performance_id = $1 \
           left join seats s on s.performance_id = p.performance_id and s.seat_id = any($2)",
    )
    .bind(performance_id)
    .bind(seat_ids)
    .bind(format!("quota:{performance_id}:{user_id}"))
    .fetch_all(conn)
    .await?;
    let now = rows.first().map(|row| row.3).ok_or(sqlx::Error::RowNotFound)?;
    Ok(BookingContext {
        performance_exists: rows.iter().any(|row| row.0),
        prices: rows.into_iter().filter_map(|(_, seat, price, _)| Some((seat?, price?))).collect(),
        now,
    })
}

/// What [`hold_seats`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Every seat is held and the sweeper's deadline is set.
    Held,
    /// The user already holds or owns `held` seats of the performance, and
    /// these would take them over the limit; nothing was written.
    OverQuota {
        /// Seats the user holds or owns already.
        held: i64,
    },
    /// This seat (the first unavailable one in request order) is taken; the
    /// caller must roll back.
    Taken(String),
}

/// One round trip: counts the seats the user holds live or owns for the
/// performance; within `max_seats`, holds every requested seat of `created`,
/// sets the booking's deadline for the sweeper and writes its
/// `booking_view` row (version 1), so the booking's transaction needs no
/// statement of its own for either.
///
/// Rows are inserted in sorted seat order (so overlapping requests lock in
/// the same order and cannot deadlock); a row that exists is taken over only
/// if its hold has lapsed (`locked_until <= now()`) and no charge is
/// admitted. The primary key does the rest. The caller runs this after
/// [`prepare_booking`], in the transaction that appends `SeatLocked`, and
/// rolls back unless it returns [`Hold::Held`].
pub async fn hold_seats(conn: &mut PgConnection, created: &SeatLocked, max_seats: usize) -> Result<Hold, sqlx::Error> {
    let seat_ids = &created.seat_ids;
    let mut sorted: Vec<&str> = seat_ids.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let room = i64::try_from(max_seats).unwrap_or(i64::MAX) - i64::try_from(seat_ids.len()).unwrap_or(i64::MAX);
    let (held, locked): (i64, Vec<String>) = sqlx::query_as(
        "with prior as ( \
           select count(*) as held from seat_holds where performance_id = $1 and user_id = $3 \
              and (status = 'booked' or locked_until > now() or admitted_until > now())), \
         hold as ( \
           insert into seat_holds (performance_id, seat_id, booking_id, user_id, status, locked_until) \
           select $1, seat, $2, $3, 'locked', $4 from unnest($5::text[]) with ordinality as s(seat, n) \
            where (select held from prior) <= $6 order by n \
           on conflict (performance_id, seat_id) do update \
              set booking_id = excluded.booking_id, user_id = excluded.user_id, status = 'locked', \
                  locked_until = excluded.locked_until, admitted_until = null \
            where seat_holds.status = 'locked' and seat_holds.locked_until <= now() \
              and (seat_holds.admitted_until is null or seat_holds.admitted_until <= now()) \
           returning seat_id), \
         deadline as ( \
           insert into booking_deadlines (booking_id, due_at) \
           select $2, $4 where (select held from prior) <= $6 \
           on conflict (booking_id) do update set due_at = excluded.due_at), \
         view as ( \
           insert into booking_view (booking_id, user_id, performance_id, seat_ids, total_amount, status, \
              payment_intent_id, created_at, version) \
           select $2, $3, $1, $7, $8, 'pending', $9, $10, 1 where (select held from prior) <= $6 \
           on conflict (booking_id) do nothing) \
         select (select held from prior), array(select seat_id from hold)",
    )
    .bind(&created.performance_id)
    .bind(&created.booking_id)
    .bind(&created.user_id)
    .bind(created.locked_until)
    .bind(&sorted)
    .bind(room)
    .bind(seat_ids)
    .bind(created.total_amount)
    .bind(&created.payment_intent_id)
    .bind(created.created_at)
    .fetch_one(&mut *conn)
    .await?;
    if held > room {
        return Ok(Hold::OverQuota { held });
    }
    if locked.len() == seat_ids.len() {
        return Ok(Hold::Held);
    }
    let first_taken = seat_ids.iter().find(|id| !locked.contains(id)).cloned().unwrap_or_default();
    Ok(Hold::Taken(first_taken))
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
        // `hold_seats` wrote the holds, the deadline and the view row in one statement.
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
