//! The booking aggregate: its events, its state, and the decisions
//! `decide(state, command) -> events` and `apply(state, event) -> state`.
//!
//! Status machine: `pending` → `confirmed` | `cancelled` | `expired` |
//! `failed`, and a paid booking that had already ended → `refunded`.
//! Terminal states stay terminal: late or duplicate facts decide nothing.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// How the buyer intends to pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentMethod {
    /// A card payment (the default).
    CreditCard,
    /// A bank transfer.
    BankTransfer,
    /// An easy-pay wallet.
    EasyPay,
}

impl PaymentMethod {
    /// Parses the REST value (`CREDIT_CARD`, `BANK_TRANSFER`, `EASY_PAY`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "CREDIT_CARD" => Some(Self::CreditCard),
            "BANK_TRANSFER" => Some(Self::BankTransfer),
            "EASY_PAY" => Some(Self::EasyPay),
            _ => None,
        }
    }
}

/// Where a booking is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BookingStatus {
    /// Seats held, awaiting payment.
    Pending,
    /// Paid; the seats are sold.
    Confirmed,
    /// Cancelled by its owner.
    Cancelled,
    /// The hold lapsed before payment.
    Expired,
    /// Payment attempts were exhausted.
    Failed,
    /// Paid after it had ended; the money went back.
    Refunded,
}

impl BookingStatus {
    /// The wire name (`pending`, `confirmed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Failed => "failed",
            Self::Refunded => "refunded",
        }
    }
}

/// Why a booking was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancelReason {
    /// Its owner cancelled it.
    UserRequested,
}

/// The facts of a new booking (the `SeatLocked` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatLocked {
    /// The booking.
    pub booking_id: String,
    /// The payment intent the payment-service will create for it.
    pub payment_intent_id: String,
    /// The buyer.
    pub user_id: String,
    /// The performance.
    pub performance_id: String,
    /// Seats in request order.
    pub seat_ids: Vec<String>,
    /// Sum of the seats' catalog prices, in won.
    pub total_amount: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// How the buyer intends to pay.
    pub payment_method: PaymentMethod,
    /// The hold ends at this instant (`now >= locked_until` means expired).
    pub locked_until: DateTime<Utc>,
    /// When the booking was created.
    pub created_at: DateTime<Utc>,
}

/// Who and what a booking is about, repeated in its terminal events so
/// each published event carries its own facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingRef {
    /// The buyer.
    pub user_id: String,
    /// The performance.
    pub performance_id: String,
    /// The booking's seats.
    pub seat_ids: Vec<String>,
}

/// Everything that can happen to a booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum BookingEvent {
    /// Created with its seats held.
    SeatLocked(SeatLocked),
    /// A charge may run until `admitted_until`; meanwhile the hold is not
    /// released by a cancel or the sweeper. (Internal, not published.)
    PaymentAdmitted {
        /// The intent being charged.
        payment_intent_id: String,
        /// End of the admission.
        admitted_until: DateTime<Utc>,
    },
    /// A payment attempt was declined. (Internal, not published.)
    PaymentDeclined {
        /// The PSP's code.
        failure_code: String,
        /// Whether it counts against the buyer's attempts.
        client_error: bool,
    },
    /// Paid; seats sold.
    BookingConfirmed {
        /// The booking's facts.
        #[serde(flatten)]
        of: BookingRef,
        /// The intent that paid.
        payment_intent_id: String,
        /// When.
        confirmed_at: DateTime<Utc>,
    },
    /// Cancelled; seats freed.
    BookingCancelled {
        /// The booking's facts.
        #[serde(flatten)]
        of: BookingRef,
        /// Why.
        reason: CancelReason,
        /// When.
        cancelled_at: DateTime<Utc>,
    },
    /// Hold lapsed; seats freed.
    BookingExpired {
        /// The booking's facts.
        #[serde(flatten)]
        of: BookingRef,
        /// When the sweeper (or a late fact) noticed.
        expired_at: DateTime<Utc>,
    },
    /// Payment attempts exhausted; seats freed.
    BookingFailed {
        /// The booking's facts.
        #[serde(flatten)]
        of: BookingRef,
        /// Client-error declines counted.
        failed_attempts: i32,
        /// When.
        failed_at: DateTime<Utc>,
    },
    /// The payment-service refunded a payment that arrived after the booking ended.
    BookingRefunded {
        /// When.
        refunded_at: DateTime<Utc>,
    },
}

/// The stored types of the events that take a booking out of `pending`.
pub const DECIDING_EVENTS: [&str; 5] =
    ["BookingConfirmed", "BookingCancelled", "BookingExpired", "BookingFailed", "BookingRefunded"];

impl BookingEvent {
    /// The stored event-type name.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::SeatLocked(_) => "SeatLocked",
            Self::PaymentAdmitted { .. } => "PaymentAdmitted",
            Self::PaymentDeclined { .. } => "PaymentDeclined",
            Self::BookingConfirmed { .. } => "BookingConfirmed",
            Self::BookingCancelled { .. } => "BookingCancelled",
            Self::BookingExpired { .. } => "BookingExpired",
            Self::BookingFailed { .. } => "BookingFailed",
            Self::BookingRefunded { .. } => "BookingRefunded",
        }
    }

    /// True for events after which the booking's seats are free again.
    pub fn releases_seats(&self) -> bool {
        matches!(self, Self::BookingCancelled { .. } | Self::BookingExpired { .. } | Self::BookingFailed { .. })
    }
}

/// A booking's current state, folded from its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booking {
    /// The creation facts.
    pub created: SeatLocked,
    /// Current status.
    pub status: BookingStatus,
    /// End of the current payment admission, if any.
    pub admitted_until: Option<DateTime<Utc>>,
    /// Client-error declines so far.
    pub client_failures: i32,
}

impl Booking {
    /// The facts repeated in terminal events.
    pub fn reference(&self) -> BookingRef {
        BookingRef {
            user_id: self.created.user_id.clone(),
            performance_id: self.created.performance_id.clone(),
            seat_ids: self.created.seat_ids.clone(),
        }
    }

    /// True while the hold is live at `now` (`now >= locked_until` is expired).
    pub fn hold_is_live(&self, now: DateTime<Utc>) -> bool {
        now < self.created.locked_until
    }

    /// True while a payment admitted earlier may still be charging.
    pub fn payment_in_progress(&self, now: DateTime<Utc>) -> bool {
        self.admitted_until.is_some_and(|until| now < until)
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The JWT subject.
    pub user_id: String,
    /// `role: admin`.
    pub admin: bool,
}

/// What can be asked of a booking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BookingCommand {
    /// Create it (seats are checked and held by the caller, in the same transaction).
    Create(SeatLocked),
    /// Its owner cancels it.
    Cancel {
        /// Who asks.
        caller: Caller,
        /// The clock.
        now: DateTime<Utc>,
    },
    /// The payment-service asks to charge it.
    AdmitPayment {
        /// The intent to be charged.
        payment_intent_id: String,
        /// The payer.
        user_id: String,
        /// The clock.
        now: DateTime<Utc>,
        /// How long the charge may take.
        admission: Duration,
        /// No charge may start this close to the end of the hold.
        safety_margin: Duration,
    },
    /// The gateway captured the money.
    RecordPaymentSucceeded {
        /// The intent that paid.
        payment_intent_id: String,
        /// The gateway's processing time (decides lateness).
        processed_at: DateTime<Utc>,
        /// Whether every seat of the booking is still held by it.
        seats_held: bool,
    },
    /// The gateway declined an attempt.
    RecordPaymentFailed {
        /// The intent whose attempt was declined.
        payment_intent_id: String,
        /// The PSP's code.
        failure_code: String,
        /// Counts against the buyer's attempts.
        client_error: bool,
        /// Declines allowed before the booking fails.
        max_attempts: i32,
        /// The clock.
        now: DateTime<Utc>,
    },
    /// The payment-service refunded a late payment.
    RecordRefund {
        /// The intent that was refunded.
        payment_intent_id: String,
        /// The clock.
        now: DateTime<Utc>,
    },
    /// The sweeper found the hold lapsed.
    Expire {
        /// The clock.
        now: DateTime<Utc>,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookingRejection {
    /// No such booking.
    #[error("Booking not found.")]
    NotFound,
    /// The booking exists already.
    #[error("Booking already exists.")]
    AlreadyExists,
    /// The caller does not own it.
    #[error("Unauthorized to cancel this booking.")]
    NotOwner,
    /// Only pending bookings can be cancelled.
    #[error("Only pending bookings can be cancelled.")]
    NotPending,
    /// A charge is running; cancel after it ends.
    #[error("A payment for this booking is in progress.")]
    PaymentInProgress,
    /// The payer is not the booking's owner.
    #[error("Unauthorized to pay this payment intent.")]
    NotPayer,
    /// The booking can no longer be paid (ended, or its hold lapses too soon).
    #[error("Payment intent is no longer payable.")]
    NotPayable,
    /// A payment fact about an intent that is not this booking's (forged or misrouted).
    #[error("The payment belongs to another payment intent.")]
    ForeignPayment,
    /// Only a booking that ended without a sale can be refunded.
    #[error("This booking cannot be refunded.")]
    NotRefundable,
}

/// Bookings are event-sourced aggregates: `decide` hands each command to
/// its rule below, `apply` folds an event; both pure.
impl kernel::aggregate::Aggregate for Booking {
    const STREAM_TYPE: &'static str = "booking";
    type Event = BookingEvent;
    type Command = BookingCommand;
    type Rejection = BookingRejection;

    fn decide(state: Option<&Self>, command: BookingCommand) -> Result<Vec<BookingEvent>, BookingRejection> {
        use BookingCommand as C;
        let Some(booking) = state else {
            return match command {
                C::Create(created) => Ok(vec![BookingEvent::SeatLocked(created)]),
                _ => Err(BookingRejection::NotFound),
            };
        };
        match command {
            C::Create(_) => Err(BookingRejection::AlreadyExists),
            C::Cancel { caller, now } => booking.cancel(&caller, now),
            C::AdmitPayment { payment_intent_id, user_id, now, admission, safety_margin } => {
                booking.admit_payment(payment_intent_id, &user_id, now, admission, safety_margin)
            }
            C::RecordPaymentSucceeded { payment_intent_id, .. }
            | C::RecordPaymentFailed { payment_intent_id, .. }
            | C::RecordRefund { payment_intent_id, .. }
                if payment_intent_id != booking.created.payment_intent_id =>
            {
                Err(BookingRejection::ForeignPayment)
            }
            C::RecordPaymentSucceeded { payment_intent_id, processed_at, seats_held } => {
                Ok(booking.record_payment_succeeded(payment_intent_id, processed_at, seats_held))
            }
            C::RecordPaymentFailed { failure_code, client_error, max_attempts, now, .. } => {
                Ok(booking.record_payment_failed(failure_code, client_error, max_attempts, now))
            }
            C::RecordRefund { now, .. } => booking.record_refund(now),
            C::Expire { now } => Ok(booking.expire(now)),
        }
    }

    fn apply(state: Option<Self>, event: &BookingEvent) -> Option<Self> {
        use BookingEvent as E;
        let Some(mut booking) = state else {
            return match event {
                E::SeatLocked(created) => Some(Booking {
                    created: created.clone(),
                    status: BookingStatus::Pending,
                    admitted_until: None,
                    client_failures: 0,
                }),
                _ => None,
            };
        };
        match event {
            E::SeatLocked(_) => {}
            E::PaymentAdmitted { admitted_until, .. } => booking.admitted_until = Some(*admitted_until),
            E::PaymentDeclined { client_error, .. } => {
                booking.admitted_until = None;
                if *client_error {
                    booking.client_failures += 1;
                }
            }
            E::BookingConfirmed { .. } => {
                booking.status = BookingStatus::Confirmed;
                booking.admitted_until = None;
            }
            E::BookingCancelled { .. } => booking.status = BookingStatus::Cancelled,
            E::BookingExpired { .. } => booking.status = BookingStatus::Expired,
            E::BookingFailed { .. } => booking.status = BookingStatus::Failed,
            E::BookingRefunded { .. } => booking.status = BookingStatus::Refunded,
        }
        Some(booking)
    }
}

/// The rules, one per command on an existing booking.
impl Booking {
    fn pending(&self) -> bool {
        self.status == BookingStatus::Pending
    }

    /// The owner (or an admin) cancels a pending booking with no charge running.
    fn cancel(&self, caller: &Caller, now: DateTime<Utc>) -> Result<Vec<BookingEvent>, BookingRejection> {
        if self.created.user_id != caller.user_id && !caller.admin {
            Err(BookingRejection::NotOwner)
        } else if self.status == BookingStatus::Cancelled {
            // A retried cancel: the booking is as its owner asked.
            Ok(Vec::new())
        } else if !self.pending() {
            Err(BookingRejection::NotPending)
        } else if self.payment_in_progress(now) {
            Err(BookingRejection::PaymentInProgress)
        } else {
            Ok(vec![BookingEvent::BookingCancelled {
                of: self.reference(),
                reason: CancelReason::UserRequested,
                cancelled_at: now,
            }])
        }
    }

    /// The owner's charge may start while the hold outlives it by the margin.
    fn admit_payment(
        &self,
        payment_intent_id: String,
        user_id: &str,
        now: DateTime<Utc>,
        admission: chrono::Duration,
        safety_margin: chrono::Duration,
    ) -> Result<Vec<BookingEvent>, BookingRejection> {
        if self.created.user_id != user_id {
            Err(BookingRejection::NotPayer)
        } else if !self.pending()
            || payment_intent_id != self.created.payment_intent_id
            || !self.hold_is_live(now + safety_margin)
        {
            Err(BookingRejection::NotPayable)
        } else {
            Ok(vec![BookingEvent::PaymentAdmitted { payment_intent_id, admitted_until: now + admission }])
        }
    }

    /// Paid in time, with the seats still this booking's: confirmed. Paid
    /// too late: the booking ends, and its end makes the payment-service refund.
    fn record_payment_succeeded(
        &self,
        payment_intent_id: String,
        processed_at: DateTime<Utc>,
        seats_held: bool,
    ) -> Vec<BookingEvent> {
        // Paid in time if the gateway processed it before the hold ended,
        // or while an admission kept the seats.
        let in_time =
            processed_at < self.created.locked_until || self.admitted_until.is_some_and(|until| processed_at < until);
        if !self.pending() {
            vec![]
        } else if in_time && seats_held {
            vec![BookingEvent::BookingConfirmed { of: self.reference(), payment_intent_id, confirmed_at: processed_at }]
        } else {
            vec![BookingEvent::BookingExpired { of: self.reference(), expired_at: processed_at }]
        }
    }

    /// A decline is counted; the last allowed client-error decline fails the booking.
    fn record_payment_failed(
        &self,
        failure_code: String,
        client_error: bool,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> Vec<BookingEvent> {
        if !self.pending() {
            return vec![];
        }
        let mut events = vec![BookingEvent::PaymentDeclined { failure_code, client_error }];
        let failures = self.client_failures + i32::from(client_error);
        if failures >= max_attempts {
            events.push(BookingEvent::BookingFailed {
                of: self.reference(),
                failed_attempts: failures,
                failed_at: now,
            });
        }
        events
    }

    /// A payment that came after the booking ended is given back; nothing
    /// is given back for an unpaid booking, and a sale is final.
    fn record_refund(&self, now: DateTime<Utc>) -> Result<Vec<BookingEvent>, BookingRejection> {
        match self.status {
            BookingStatus::Refunded => Ok(vec![]),
            BookingStatus::Cancelled | BookingStatus::Expired | BookingStatus::Failed => {
                Ok(vec![BookingEvent::BookingRefunded { refunded_at: now }])
            }
            BookingStatus::Pending | BookingStatus::Confirmed => Err(BookingRejection::NotRefundable),
        }
    }

    /// The sweeper ends a pending booking whose hold lapsed with no charge running.
    fn expire(&self, now: DateTime<Utc>) -> Vec<BookingEvent> {
        if self.pending() && !self.hold_is_live(now) && !self.payment_in_progress(now) {
            vec![BookingEvent::BookingExpired { of: self.reference(), expired_at: now }]
        } else {
            vec![]
        }
    }
}

impl kernel::event_store::DomainEvent for BookingEvent {
    fn event_type(&self) -> &'static str {
        BookingEvent::event_type(self)
    }

    /// The booking's life as other services see it; the payment admissions
    /// and declines and the refund mark are the aggregate's own bookkeeping.
    fn published(&self) -> bool {
        match self {
            Self::SeatLocked(_)
            | Self::BookingConfirmed { .. }
            | Self::BookingCancelled { .. }
            | Self::BookingExpired { .. }
            | Self::BookingFailed { .. } => true,
            Self::PaymentAdmitted { .. } | Self::PaymentDeclined { .. } | Self::BookingRefunded { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use kernel::aggregate::Aggregate;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).single().unwrap()
    }

    fn created() -> SeatLocked {
        SeatLocked {
            booking_id: "b1".into(),
            payment_intent_id: "pi1".into(),
            user_id: "user_123".into(),
            performance_id: "perf_001".into(),
            seat_ids: vec!["A2".into()],
            total_amount: 30000,
            currency: "KRW".into(),
            payment_method: PaymentMethod::CreditCard,
            locked_until: t(600),
            created_at: t(0),
        }
    }

    fn of() -> BookingRef {
        BookingRef { user_id: "user_123".into(), performance_id: "perf_001".into(), seat_ids: vec!["A2".into()] }
    }

    fn owner() -> Caller {
        Caller { user_id: "user_123".into(), admin: false }
    }

    #[test]
    fn the_deciding_events_are_exactly_those_that_end_pending() {
        let every = [
            (BookingEvent::PaymentAdmitted { payment_intent_id: "pi1".into(), admitted_until: t(30) }),
            (BookingEvent::PaymentDeclined { failure_code: "X".into(), client_error: true }),
            (BookingEvent::BookingConfirmed { of: of(), payment_intent_id: "pi1".into(), confirmed_at: t(1) }),
            (BookingEvent::BookingCancelled { of: of(), reason: CancelReason::UserRequested, cancelled_at: t(1) }),
            (BookingEvent::BookingExpired { of: of(), expired_at: t(1) }),
            (BookingEvent::BookingFailed { of: of(), failed_attempts: 3, failed_at: t(1) }),
            (BookingEvent::BookingRefunded { refunded_at: t(1) }),
        ];
        for event in every {
            let state = Booking::replay(&[BookingEvent::SeatLocked(created()), event.clone()]).unwrap();
            let decides = state.status != BookingStatus::Pending;
            assert_eq!(decides, DECIDING_EVENTS.contains(&event.event_type()), "{}", event.event_type());
        }
    }

    /// Given `history`, when `command`, then the result.
    fn given(history: &[BookingEvent], command: BookingCommand) -> Result<Vec<BookingEvent>, BookingRejection> {
        Booking::decide(Booking::replay(history).as_ref(), command)
    }

    fn admit(now: i64) -> BookingCommand {
        BookingCommand::AdmitPayment {
            payment_intent_id: "pi1".into(),
            user_id: "user_123".into(),
            now: t(now),
            admission: Duration::seconds(30),
            safety_margin: Duration::seconds(5),
        }
    }

    fn declined() -> BookingCommand {
        BookingCommand::RecordPaymentFailed {
            payment_intent_id: "pi1".into(),
            failure_code: "CARD_DECLINED".into(),
            client_error: true,
            max_attempts: 3,
            now: t(100),
        }
    }

    #[test]
    fn creating_a_booking_locks_its_seats() {
        assert_eq!(given(&[], BookingCommand::Create(created())), Ok(vec![BookingEvent::SeatLocked(created())]));
        let again = given(&[BookingEvent::SeatLocked(created())], BookingCommand::Create(created()));
        assert_eq!(again, Err(BookingRejection::AlreadyExists));
    }

    #[test]
    fn the_owner_cancels_a_pending_booking() {
        let events =
            given(&[BookingEvent::SeatLocked(created())], BookingCommand::Cancel { caller: owner(), now: t(10) });
        assert_eq!(
            events,
            Ok(vec![BookingEvent::BookingCancelled {
                of: of(),
                reason: CancelReason::UserRequested,
                cancelled_at: t(10)
            }])
        );
    }

    #[test]
    fn a_retried_cancel_decides_nothing_and_is_not_refused() {
        let history = [
            BookingEvent::SeatLocked(created()),
            BookingEvent::BookingCancelled { of: of(), reason: CancelReason::UserRequested, cancelled_at: t(10) },
        ];
        assert_eq!(given(&history, BookingCommand::Cancel { caller: owner(), now: t(11) }), Ok(vec![]));
        let stranger = Caller { user_id: "user_999".into(), admin: false };
        assert_eq!(
            given(&history, BookingCommand::Cancel { caller: stranger, now: t(11) }),
            Err(BookingRejection::NotOwner)
        );
    }

    #[test]
    fn someone_else_cannot_cancel_but_an_admin_can() {
        let history = [BookingEvent::SeatLocked(created())];
        let stranger = Caller { user_id: "user_999".into(), admin: false };
        assert_eq!(
            given(&history, BookingCommand::Cancel { caller: stranger, now: t(1) }),
            Err(BookingRejection::NotOwner)
        );
        let admin = Caller { user_id: "ops".into(), admin: true };
        assert!(given(&history, BookingCommand::Cancel { caller: admin, now: t(1) }).is_ok());
    }

    #[test]
    fn only_pending_bookings_can_be_cancelled() {
        let history = [
            BookingEvent::SeatLocked(created()),
            BookingEvent::BookingConfirmed { of: of(), payment_intent_id: "pi1".into(), confirmed_at: t(5) },
        ];
        assert_eq!(
            given(&history, BookingCommand::Cancel { caller: owner(), now: t(10) }),
            Err(BookingRejection::NotPending)
        );
    }

    #[test]
    fn a_cancel_during_an_admitted_charge_is_refused() {
        let history = [
            BookingEvent::SeatLocked(created()),
            BookingEvent::PaymentAdmitted { payment_intent_id: "pi1".into(), admitted_until: t(40) },
        ];
        assert_eq!(
            given(&history, BookingCommand::Cancel { caller: owner(), now: t(20) }),
            Err(BookingRejection::PaymentInProgress)
        );
        assert!(given(&history, BookingCommand::Cancel { caller: owner(), now: t(40) }).is_ok());
    }

    #[test]
    fn a_payment_is_admitted_only_for_the_owner_inside_the_hold_minus_the_margin() {
        let history = [BookingEvent::SeatLocked(created())];
        assert_eq!(
            given(&history, admit(100)),
            Ok(vec![BookingEvent::PaymentAdmitted { payment_intent_id: "pi1".into(), admitted_until: t(130) }])
        );
        assert_eq!(given(&history, admit(595)), Err(BookingRejection::NotPayable), "inside the safety margin");
        assert_eq!(given(&history, admit(600)), Err(BookingRejection::NotPayable), "now >= lockedUntil");
        let stranger = BookingCommand::AdmitPayment {
            payment_intent_id: "pi1".into(),
            user_id: "user_999".into(),
            now: t(1),
            admission: Duration::seconds(30),
            safety_margin: Duration::seconds(5),
        };
        assert_eq!(given(&history, stranger), Err(BookingRejection::NotPayer));
    }

    #[test]
    fn a_cancelled_booking_is_not_payable() {
        let history = [
            BookingEvent::SeatLocked(created()),
            BookingEvent::BookingCancelled { of: of(), reason: CancelReason::UserRequested, cancelled_at: t(3) },
        ];
        assert_eq!(given(&history, admit(10)), Err(BookingRejection::NotPayable));
    }

    #[test]
    fn a_payment_in_time_confirms_and_a_duplicate_changes_nothing() {
        let paid = BookingCommand::RecordPaymentSucceeded {
            payment_intent_id: "pi1".into(),
            processed_at: t(200),
            seats_held: true,
        };
        let confirmed =
            BookingEvent::BookingConfirmed { of: of(), payment_intent_id: "pi1".into(), confirmed_at: t(200) };
        assert_eq!(given(&[BookingEvent::SeatLocked(created())], paid.clone()), Ok(vec![confirmed.clone()]));
        assert_eq!(given(&[BookingEvent::SeatLocked(created()), confirmed], paid), Ok(vec![]));
    }

    #[test]
    fn a_payment_processed_after_the_hold_ended_expires_the_booking() {
        let paid = BookingCommand::RecordPaymentSucceeded {
            payment_intent_id: "pi1".into(),
            processed_at: t(601),
            seats_held: false,
        };
        assert_eq!(
            given(&[BookingEvent::SeatLocked(created())], paid),
            Ok(vec![BookingEvent::BookingExpired { of: of(), expired_at: t(601) }])
        );
    }

    #[test]
    fn a_payment_processed_inside_an_admission_past_the_hold_still_confirms() {
        let history = [
            BookingEvent::SeatLocked(created()),
            BookingEvent::PaymentAdmitted { payment_intent_id: "pi1".into(), admitted_until: t(620) },
        ];
        let paid = BookingCommand::RecordPaymentSucceeded {
            payment_intent_id: "pi1".into(),
            processed_at: t(603),
            seats_held: true,
        };
        assert!(matches!(given(&history, paid).as_deref(), Ok([BookingEvent::BookingConfirmed { .. }])));
    }

    #[test]
    fn a_payment_whose_seats_were_taken_over_expires_the_booking_instead_of_confirming() {
        let paid = BookingCommand::RecordPaymentSucceeded {
            payment_intent_id: "pi1".into(),
            processed_at: t(10),
            seats_held: false,
        };
        assert_eq!(
            given(&[BookingEvent::SeatLocked(created())], paid),
            Ok(vec![BookingEvent::BookingExpired { of: of(), expired_at: t(10) }])
        );
    }

    #[test]
    fn an_old_decline_after_confirmation_does_not_downgrade_it() {
        let history = [
            BookingEvent::SeatLocked(created()),
            BookingEvent::BookingConfirmed { of: of(), payment_intent_id: "pi1".into(), confirmed_at: t(5) },
        ];
        assert_eq!(given(&history, declined()), Ok(vec![]));
    }

    #[test]
    fn the_third_client_decline_fails_the_booking() {
        let decline = BookingEvent::PaymentDeclined { failure_code: "CARD_DECLINED".into(), client_error: true };
        let two = [BookingEvent::SeatLocked(created()), decline.clone(), decline.clone()];
        assert_eq!(
            given(&two, declined()),
            Ok(vec![decline.clone(), BookingEvent::BookingFailed { of: of(), failed_attempts: 3, failed_at: t(100) }])
        );
        assert_eq!(given(&two[..2], declined()), Ok(vec![decline]));
    }

    #[test]
    fn gateway_trouble_does_not_use_up_attempts() {
        let trouble = BookingCommand::RecordPaymentFailed {
            payment_intent_id: "pi1".into(),
            failure_code: "PG_TIMEOUT".into(),
            client_error: false,
            max_attempts: 1,
            now: t(1),
        };
        let events = given(&[BookingEvent::SeatLocked(created())], trouble);
        assert_eq!(
            events,
            Ok(vec![BookingEvent::PaymentDeclined { failure_code: "PG_TIMEOUT".into(), client_error: false }])
        );
    }

    #[test]
    fn the_sweeper_expires_only_lapsed_unadmitted_pending_holds() {
        let history = [BookingEvent::SeatLocked(created())];
        assert_eq!(given(&history, BookingCommand::Expire { now: t(599) }), Ok(vec![]));
        assert_eq!(
            given(&history, BookingCommand::Expire { now: t(600) }),
            Ok(vec![BookingEvent::BookingExpired { of: of(), expired_at: t(600) }]),
            "now >= lockedUntil is expired"
        );
        let admitted = [
            BookingEvent::SeatLocked(created()),
            BookingEvent::PaymentAdmitted { payment_intent_id: "pi1".into(), admitted_until: t(610) },
        ];
        assert_eq!(given(&admitted, BookingCommand::Expire { now: t(605) }), Ok(vec![]));
    }

    #[test]
    fn a_payment_fact_about_another_intent_changes_nothing() {
        let pending = [BookingEvent::SeatLocked(created())];
        let forged = BookingCommand::RecordPaymentSucceeded {
            payment_intent_id: "pi_someone_else".into(),
            processed_at: t(5),
            seats_held: true,
        };
        assert_eq!(given(&pending, forged), Err(BookingRejection::ForeignPayment));
        let forged_decline = BookingCommand::RecordPaymentFailed {
            payment_intent_id: "pi_someone_else".into(),
            failure_code: "CARD_DECLINED".into(),
            client_error: true,
            max_attempts: 1,
            now: t(5),
        };
        assert_eq!(given(&pending, forged_decline), Err(BookingRejection::ForeignPayment));
        let forged_refund = BookingCommand::RecordRefund { payment_intent_id: "pi_x".into(), now: t(5) };
        let expired =
            [BookingEvent::SeatLocked(created()), BookingEvent::BookingExpired { of: of(), expired_at: t(3) }];
        assert_eq!(given(&expired, forged_refund), Err(BookingRejection::ForeignPayment));
    }

    #[test]
    fn only_a_booking_that_ended_without_a_sale_is_refunded() {
        let refund = || BookingCommand::RecordRefund { payment_intent_id: "pi1".into(), now: t(700) };
        let pending = vec![BookingEvent::SeatLocked(created())];
        assert_eq!(given(&pending, refund()), Err(BookingRejection::NotRefundable));
        let mut confirmed = pending.clone();
        confirmed.push(BookingEvent::BookingConfirmed {
            of: of(),
            payment_intent_id: "pi1".into(),
            confirmed_at: t(5),
        });
        assert_eq!(given(&confirmed, refund()), Err(BookingRejection::NotRefundable));
        let mut expired = pending.clone();
        expired.push(BookingEvent::BookingExpired { of: of(), expired_at: t(600) });
        assert_eq!(given(&expired, refund()), Ok(vec![BookingEvent::BookingRefunded { refunded_at: t(700) }]));
        expired.push(BookingEvent::BookingRefunded { refunded_at: t(700) });
        assert_eq!(given(&expired, refund()), Ok(vec![]), "a duplicate refund changes nothing");
    }

    #[test]
    fn commands_on_a_missing_booking_are_not_found() {
        assert_eq!(given(&[], BookingCommand::Expire { now: t(0) }), Err(BookingRejection::NotFound));
    }

    #[test]
    fn events_round_trip_through_json_with_their_type_tag() {
        let event = BookingEvent::SeatLocked(created());
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "SeatLocked");
        assert_eq!(serde_json::from_value::<BookingEvent>(json).ok(), Some(event));
    }
}
