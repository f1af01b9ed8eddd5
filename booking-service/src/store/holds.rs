//! Seat holds: where "a seat can't be sold twice" is enforced.
//!
//! `lock_seats` inserts one row per seat in sorted order (so overlapping
//! requests lock in the same order and cannot deadlock); a row that exists
//! is taken over only if its hold has lapsed (`locked_until <= now()`) and
//! no charge is admitted. The primary key does the rest. The caller runs
//! this in the transaction that appends `SeatLocked`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::booking::{Booking, BookingEvent};

/// Holds every seat or none; on failure returns the first unavailable seat
/// in request order (the caller must roll back).
pub async fn lock_seats(
    conn: &mut PgConnection,
    performance_id: &str,
    seat_ids: &[String],
    booking_id: &str,
    user_id: &str,
    locked_until: DateTime<Utc>,
) -> Result<Result<(), String>, sqlx::Error> {
    let mut sorted: Vec<&str> = seat_ids.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let locked: Vec<String> = sqlx::query_scalar(
        "insert into seat_holds (performance_id, seat_id, booking_id, user_id, status, locked_until) \
         select $1, seat, $2, $3, 'locked', $4 from unnest($5::text[]) with ordinality as s(seat, n) order by n \
         on conflict (performance_id, seat_id) do update \
            set booking_id = excluded.booking_id, user_id = excluded.user_id, status = 'locked', \
                locked_until = excluded.locked_until, admitted_until = null \
          where seat_holds.status = 'locked' and seat_holds.locked_until <= now() \
            and (seat_holds.admitted_until is null or seat_holds.admitted_until <= now()) \
         returning seat_id",
    )
    .bind(performance_id)
    .bind(booking_id)
    .bind(user_id)
    .bind(locked_until)
    .bind(&sorted)
    .fetch_all(&mut *conn)
    .await?;
    if locked.len() == seat_ids.len() {
        return Ok(Ok(()));
    }
    let first_taken = seat_ids.iter().find(|id| !locked.contains(id)).cloned().unwrap_or_default();
    Ok(Err(first_taken))
}

/// Seats this user holds live or owns for the performance.
pub async fn seats_held_by_user(
    conn: &mut PgConnection,
    performance_id: &str,
    user_id: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "select count(*) from seat_holds where performance_id = $1 and user_id = $2 \
           and (status = 'booked' or locked_until > now() or admitted_until > now())",
    )
    .bind(performance_id)
    .bind(user_id)
    .fetch_one(conn)
    .await
}

/// Serialises one user's bookings for one performance (the per-user limit
/// is a count-then-insert, so concurrent requests of one user must queue).
pub async fn lock_user_quota(conn: &mut PgConnection, performance_id: &str, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("quota:{performance_id}:{user_id}"))
        .execute(conn)
        .await?;
    Ok(())
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
        BookingEvent::SeatLocked(created) => {
            set_deadline(conn, id, created.locked_until).await?;
        }
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

/// Pending bookings whose deadline has passed, oldest first.
pub async fn due_bookings(conn: &mut PgConnection, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("select booking_id from booking_deadlines where due_at <= now() order by due_at limit $1")
        .bind(limit)
        .fetch_all(conn)
        .await
}
