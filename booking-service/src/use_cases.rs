//! The booking-service's use cases. Each command loads the booking stream,
//! asks the pure domain to decide, and appends the events together with
//! their seat-hold effects in one transaction (optimistic concurrency on
//! the stream version; a lost race is retried).

use std::sync::Arc;

use agreements::PaymentPolicy;
use chrono::{DateTime, Duration, Utc};
use futures::future::BoxFuture;
use kernel::aggregate::{self, Aggregate};
use kernel::event_store::{is_unique_violation, EventMetadata};
use runtime::idempotency;
use runtime::idempotency::Claim;
use runtime::idempotent::ok_outcome;
use runtime::waiters::Waiters;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    config::BookingSettings,
    domain::{
        booking::{Booking, BookingCommand, BookingRejection, BookingStatus, Caller, PaymentMethod, SeatLocked},
        catalog::{expand_rows, validate_performance_id, validate_seat_request, RowSpec},
    },
    error::BookingError,
    store::{catalog, effects::BookingEffects, holds, views},
};

/// The booking-service's use cases over its database.
#[derive(Clone)]
pub struct Bookings {
    pool: PgPool,
    /// The booking path's connections, passed from one booking to the next.
    kept: runtime::db::Kept,
    settings: BookingSettings,
    policy: PaymentPolicy,
    decision_waiters: Arc<Waiters>,
    waiting_room: crate::waiting_room::WaitingRoom,
}

/// A `POST /bookings` request.
#[derive(Debug, Clone, Default)]
pub struct NewBooking {
    /// The performance.
    pub performance_id: String,
    /// Seats in request order.
    pub seat_ids: Vec<String>,
    /// `CREDIT_CARD` (default), `BANK_TRANSFER` or `EASY_PAY`.
    pub payment_method: Option<String>,
    /// Must equal the caller.
    pub user_id: String,
    /// The waiting room's admission token, when the performance has an on-sale.
    pub admission: Option<String>,
}

/// What a created booking reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CreatedBooking {
    /// The booking.
    pub booking_id: String,
    /// Its payment intent.
    pub payment_intent_id: String,
    /// Total in won.
    pub total_amount: i64,
    /// End of the hold.
    pub locked_until: DateTime<Utc>,
}

/// A performance to register.
#[derive(Debug, Clone)]
pub struct NewPerformance {
    /// Its id.
    pub performance_id: String,
    /// Its title.
    pub title: String,
    /// When it starts.
    pub starts_at: Option<DateTime<Utc>>,
    /// Its rows.
    pub rows: Vec<RowSpec>,
}

const REQUIRED_FIELDS: &str = "User, performance, and seats are required.";

impl Bookings {
    /// Use cases over `pool` with `settings`.
    pub fn new(
        pool: PgPool,
        settings: BookingSettings,
        policy: PaymentPolicy,
        admission_key: Option<edge::admission::AdmissionKey>,
    ) -> Self {
        let waiting_room = crate::waiting_room::WaitingRoom::new(pool.clone(), admission_key);
        // Half the request pool serves bookings (one connection when the
        // pool has fewer than two); reads and the waiting room have the rest.
        let share = pool.options().get_max_connections() as usize / 2;
        let kept = runtime::db::Kept::new(pool.clone(), share);
        Self { pool, kept, settings, policy, decision_waiters: Arc::new(Waiters::default()), waiting_room }
    }

    /// The same use cases over another pool of the same database (the
    /// sweeper runs on the background pool).
    pub fn on_pool(&self, pool: PgPool) -> Self {
        let waiting_room = self.waiting_room.on_pool(pool.clone());
        Self { pool, waiting_room, ..self.clone() }
    }

    /// The on-sale waiting room.
    pub fn waiting_room(&self) -> &crate::waiting_room::WaitingRoom {
        &self.waiting_room
    }

    /// Who waits for which booking's decision (the consumer announces them).
    pub fn decision_waiters(&self) -> &Arc<Waiters> {
        &self.decision_waiters
    }

    /// Waits, up to `timeout`, until the booking is no longer pending and
    /// returns it (still pending when the time ran out). Owner or admin.
    pub async fn await_decision(
        &self,
        caller: &Caller,
        booking_id: &str,
        timeout: std::time::Duration,
        until_payment_settled: bool,
    ) -> Result<Booking, BookingError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Registered before the first look, so a decision in between wakes us.
        let waiting = self.decision_waiters.wait_for(booking_id);
        loop {
            let decided = waiting.signal().notified();
            tokio::pin!(decided);
            decided.as_mut().enable();
            let booking = self.get(caller, booking_id).await?;
            let settled = until_payment_settled && !booking.payment_in_progress(Utc::now());
            if booking.status != BookingStatus::Pending || settled {
                return Ok(booking);
            }
            if tokio::time::timeout_at(deadline, decided).await.is_err() {
                return Ok(booking);
            }
        }
    }

    /// The database pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Validates, holds the seats and starts a pending booking.
    pub async fn create(
        &self,
        caller: &Caller,
        request: NewBooking,
        metadata: &EventMetadata,
        idempotency: Option<&Claim>,
    ) -> Result<CreatedBooking, BookingError> {
        if request.performance_id.trim().is_empty() || request.user_id.trim().is_empty() || request.seat_ids.is_empty()
        {
            return Err(BookingError::Invalid(REQUIRED_FIELDS.into()));
        }
        if request.user_id != caller.user_id {
            return Err(BookingError::BookForAnotherUser);
        }
        let payment_method = self.check_request(&request)?;
        let max_seats = self.settings.max_seats_per_user as usize;
        self.waiting_room.check_admission(caller, &request.performance_id, request.admission.as_deref()).await?;

        let mut conn = self.kept.acquire().await?;
        let context = holds::booking_context(&mut conn, &request.performance_id, &request.seat_ids).await?;
        if !context.performance_exists {
            return Err(BookingError::PerformanceNotFound(request.performance_id));
        }
        let mut total_amount = 0_i64;
        for seat in &request.seat_ids {
            let price = context.prices.iter().find(|(id, _)| id == seat).map(|(_, p)| *p);
            total_amount += price.ok_or_else(|| BookingError::UnknownSeat(seat.clone()))?;
        }
        let now = context.now;
        let booking_id = Uuid::now_v7();
        let created = SeatLocked {
            booking_id: booking_id.to_string(),
            // Derived, so a payment sent before the intent exists finds its booking.
            payment_intent_id: agreements::ids::payment_intent_of(booking_id).to_string(),
            user_id: caller.user_id.clone(),
            performance_id: request.performance_id.clone(),
            seat_ids: request.seat_ids.clone(),
            total_amount,
            currency: "KRW".into(),
            payment_method,
            locked_until: now + Duration::seconds(i64::from(self.settings.seat_hold_secs)),
            created_at: now,
        };
        let events = aggregate::decide_new::<Booking, BookingError>(
            &created.booking_id,
            BookingCommand::Create(created.clone()),
        )?;
        let result = CreatedBooking {
            booking_id: created.booking_id.clone(),
            payment_intent_id: created.payment_intent_id.clone(),
            total_amount,
            locked_until: created.locked_until,
        };
        let stream = (Booking::STREAM_TYPE, events.as_slice());
        // Without an idempotency key the call is the booking's whole
        // transaction; with one, the key's outcome commits with it.
        let hold = match idempotency {
            None => holds::hold_and_start(&mut conn, &created, max_seats, stream, metadata).await,
            Some(claim) => {
                let outcome = ok_outcome(&result).map_err(|e| BookingError::Internal(e.to_string()))?;
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let hold = holds::hold_and_start(&mut tx, &created, max_seats, stream, metadata).await;
                if matches!(hold, Ok(holds::Hold::Held)) {
                    idempotency::complete(&mut tx, claim, &outcome).await?;
                    tx.commit().await?;
                }
                hold
            }
        };
        match hold.map_err(|e| if is_unique_violation(&e) { BookingError::Contention } else { e.into() })? {
            holds::Hold::Held => {}
            holds::Hold::OverQuota { .. } => return Err(BookingError::UserLimit(max_seats)),
            holds::Hold::Taken(seat) => {
                metrics::counter!("seat_hold_conflicts_total").increment(1);
                return Err(BookingError::SeatUnavailable(seat));
            }
        }
        // Every reply read and no transaction open: the next booking may use it.
        conn.keep();
        kernel::global_log::committed();
        metrics::counter!("bookings_total", "outcome" => "created").increment(1);
        Ok(result)
    }

    /// What can be refused before anything is locked: the payment method,
    /// blank, repeated or too many seats, a malformed performance id.
    fn check_request(&self, request: &NewBooking) -> Result<PaymentMethod, BookingError> {
        let payment_method = match request.payment_method.as_deref() {
            None | Some("") => PaymentMethod::CreditCard,
            Some(text) => PaymentMethod::parse(text).ok_or_else(|| {
                BookingError::Invalid("paymentMethod must be one of CREDIT_CARD, BANK_TRANSFER, EASY_PAY.".into())
            })?,
        };
        if request.seat_ids.iter().any(|s| s.trim().is_empty()) {
            return Err(BookingError::Invalid(REQUIRED_FIELDS.into()));
        }
        validate_seat_request(&request.seat_ids, self.settings.max_seats_per_user as usize)?;
        if validate_performance_id(&request.performance_id).is_err() {
            return Err(BookingError::PerformanceNotFound(request.performance_id.clone()));
        }
        Ok(payment_method)
    }

    /// The owner (or an admin) cancels a pending booking; its seats are free at once.
    pub async fn cancel(
        &self,
        caller: &Caller,
        booking_id: &str,
        metadata: &EventMetadata,
    ) -> Result<(), BookingError> {
        let caller = caller.clone();
        self.execute(booking_id, metadata, move |_, now| BookingCommand::Cancel { caller: caller.clone(), now })
            .await
            .map(|_| ())
    }

    /// Reads one booking from its stream (always current), for its owner or an admin.
    pub async fn get(&self, caller: &Caller, booking_id: &str) -> Result<Booking, BookingError> {
        let mut conn = self.pool.acquire().await?;
        let booking = aggregate::load::<Booking, BookingError>(&mut conn, booking_id)
            .await?
            .state
            .ok_or(BookingRejection::NotFound)?;
        if booking.created.user_id != caller.user_id && !caller.admin {
            return Err(BookingError::NotYourBooking);
        }
        Ok(booking)
    }

    /// The caller's bookings, newest first.
    pub async fn list(
        &self,
        user_id: &str,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<views::BookingRow>, BookingError> {
        let limit = if limit == 0 { 100 } else { limit.min(500) };
        // `booking_view` is written with the events: it shows every commit.
        let mut conn = self.pool.acquire().await?;
        Ok(views::user_bookings(&mut conn, user_id, i64::from(limit), before).await?)
    }

    /// The occupiedSeats document of a seat. Only its holder and admins
    /// learn who holds it: for anyone else the booking and user are empty.
    pub async fn occupied_seat(
        &self,
        caller: &Caller,
        performance_id: &str,
        seat_id: &str,
    ) -> Result<holds::OccupiedSeatRow, BookingError> {
        let mut conn = self.pool.acquire().await?;
        let mut seat = holds::occupied_seat(&mut conn, performance_id, seat_id)
            .await?
            .ok_or_else(|| BookingError::SeatNotOccupied(format!("{performance_id}_{seat_id}")))?;
        if seat.user_id != caller.user_id && !caller.admin {
            seat.booking_id.clear();
            seat.user_id.clear();
        }
        Ok(seat)
    }

    /// The seat map of a performance.
    pub async fn seat_map(
        &self,
        performance_id: &str,
    ) -> Result<(catalog::Performance, Vec<catalog::SeatState>), BookingError> {
        let mut conn = self.pool.acquire().await?;
        let performance = catalog::performance(&mut conn, performance_id)
            .await?
            .ok_or_else(|| BookingError::PerformanceNotFound(performance_id.to_owned()))?;
        let seats = catalog::seat_map(&mut conn, performance_id).await?;
        Ok((performance, seats))
    }

    /// Performances soonest first with their availability, and whether
    /// more follow.
    pub async fn performances(
        &self,
        limit: u32,
        after: Option<&str>,
    ) -> Result<(Vec<catalog::PerformanceSummary>, bool), BookingError> {
        let limit = if limit == 0 { 20 } else { limit.min(100) };
        let mut conn = self.pool.acquire().await?;
        let mut page = catalog::list_performances(&mut conn, i64::from(limit) + 1, after)
            .await?
            .ok_or_else(|| BookingError::Invalid("after must be a performanceId from the list.".into()))?;
        let more = page.len() > limit as usize;
        page.truncate(limit as usize);
        Ok((page, more))
    }

    /// One performance with its availability.
    pub async fn performance(&self, performance_id: &str) -> Result<catalog::PerformanceSummary, BookingError> {
        let mut conn = self.pool.acquire().await?;
        catalog::performance_summary(&mut conn, performance_id)
            .await?
            .ok_or_else(|| BookingError::PerformanceNotFound(performance_id.to_owned()))
    }

    /// An admin registers a performance and its seats.
    pub async fn register_performance(
        &self,
        caller: &Caller,
        performance: NewPerformance,
    ) -> Result<u32, BookingError> {
        if !caller.admin {
            return Err(BookingError::AdminRequired);
        }
        validate_performance_id(&performance.performance_id)?;
        if performance.title.chars().count() > 200 {
            return Err(BookingError::Invalid("title must be at most 200 characters.".into()));
        }
        let seats = expand_rows(&performance.rows)?;
        let mut tx = self.pool.begin().await?;
        let inserted = catalog::insert_performance(
            &mut tx,
            &performance.performance_id,
            &performance.title,
            performance.starts_at,
            &seats,
        )
        .await?;
        if !inserted {
            return Err(BookingError::PerformanceExists(performance.performance_id));
        }
        tx.commit().await?;
        Ok(u32::try_from(seats.len()).unwrap_or(u32::MAX))
    }

    /// The payment-service asks to charge a booking now; on success the hold
    /// cannot be released until the outcome is recorded or the admission ends.
    pub async fn admit_payment(
        &self,
        booking_id: &str,
        payment_intent_id: &str,
        user_id: &str,
        admission_secs: u32,
        metadata: &EventMetadata,
    ) -> Result<DateTime<Utc>, BookingError> {
        let admission_secs = if admission_secs == 0 {
            self.settings.payment_admission_secs
        } else {
            admission_secs.min(self.settings.payment_admission_secs)
        };
        let margin = self.policy.safety_margin();
        let (intent, user) = (payment_intent_id.to_owned(), user_id.to_owned());
        let booking = self
            .execute(booking_id, metadata, move |_, now| BookingCommand::AdmitPayment {
                payment_intent_id: intent.clone(),
                user_id: user.clone(),
                now,
                admission: Duration::seconds(i64::from(admission_secs)),
                safety_margin: margin,
            })
            .await?;
        Ok(booking.created.locked_until)
    }

    /// Expires every pending booking whose deadline passed; returns how many.
    pub async fn expire_due(&self) -> Result<usize, BookingError> {
        let due = {
            let mut conn = self.pool.acquire().await?;
            holds::due_bookings(&mut conn, 200).await?
        };
        let mut expired = 0;
        let metadata = EventMetadata { actor: Some("system:sweeper".into()), ..Default::default() };
        for booking_id in due {
            match self.execute(&booking_id, &metadata, |_, now| BookingCommand::Expire { now }).await {
                Ok(_) => expired += 1,
                Err(BookingError::Rejected(BookingRejection::NotFound)) => {}
                Err(error) => tracing::warn!(booking_id, %error, "sweeper could not expire a booking"),
            }
        }
        Ok(expired)
    }

    /// Applies a command in its own transaction, deciding again on a lost race.
    async fn execute(
        &self,
        booking_id: &str,
        metadata: &EventMetadata,
        command: impl Fn(&Booking, DateTime<Utc>) -> BookingCommand + Send + Sync,
    ) -> Result<Booking, BookingError> {
        let executed = aggregate::execute(&self.pool, booking_id, metadata, &BookingEffects, |conn, state, _| {
            at_db_now(conn, state, &command)
        })
        .await?;
        Ok(executed.state)
    }

    /// The maximum client-error declines before a booking fails.
    pub fn max_payment_attempts(&self) -> i32 {
        self.policy.max_attempts()
    }
}

/// Runs a command on the booking `id` in the caller's transaction (a
/// consumer's inbox transaction); the command is built from the booking and
/// the database clock.
pub async fn execute_in(
    conn: &mut PgConnection,
    booking_id: &str,
    metadata: &EventMetadata,
    command: impl Fn(&Booking, DateTime<Utc>) -> BookingCommand + Send + Sync,
) -> Result<Booking, BookingError> {
    let executed = aggregate::execute_in(conn, booking_id, metadata, &BookingEffects, |conn, state, _| {
        at_db_now(conn, state, &command)
    })
    .await?;
    Ok(executed.state)
}

/// `command` of `state` at the database's clock; a missing booking is not found.
fn at_db_now<'c>(
    conn: &'c mut PgConnection,
    state: Option<&'c Booking>,
    command: &'c (impl Fn(&Booking, DateTime<Utc>) -> BookingCommand + Send + Sync),
) -> BoxFuture<'c, Result<BookingCommand, BookingError>> {
    Box::pin(async move {
        let booking = state.ok_or(BookingRejection::NotFound)?;
        let now = db_now(conn).await?;
        Ok(command(booking, now))
    })
}

/// Records a payment success: confirms if paid in time and the seats are
/// still this booking's, else ends the booking so the payment is refunded.
pub async fn record_payment_succeeded(
    conn: &mut PgConnection,
    booking_id: &str,
    payment_intent_id: &str,
    processed_at: DateTime<Utc>,
    metadata: &EventMetadata,
) -> Result<Booking, BookingError> {
    let executed = aggregate::execute_in(conn, booking_id, metadata, &BookingEffects, |conn, state, _| {
        Box::pin(async move {
            let booking = state.ok_or(BookingRejection::NotFound)?;
            let seats_held = holds::still_holds_all(conn, booking).await?;
            Ok(BookingCommand::RecordPaymentSucceeded {
                payment_intent_id: payment_intent_id.to_owned(),
                processed_at,
                seats_held,
            })
        })
    })
    .await?;
    Ok(executed.state)
}

/// The database clock: the one time authority of the booking-service.
async fn db_now(conn: &mut PgConnection) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("select now()").fetch_one(conn).await
}
