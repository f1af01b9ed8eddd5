//! What may be asked of a payment intent, and why it may refuse.

use chrono::{DateTime, Duration, Utc};

use super::{BookingEnd, IntentCreated, PspOutcome, RefundOutcome};

/// Commands on an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentCommand {
    /// Create it from SeatLocked.
    Create(IntentCreated),
    /// `user_id` starts a charge attempt now.
    RequestCharge {
        /// The caller.
        user_id: String,
        /// The clock.
        now: DateTime<Utc>,
        /// No charge starts this close to `payable_until`.
        safety_margin: Duration,
        /// Client-error declines allowed.
        max_attempts: i32,
        /// The token to charge.
        payment_method_token: String,
        /// The client's Idempotency-Key, if any.
        idempotency_key: Option<String>,
    },
    /// Record the PSP's answer to `attempt`.
    RecordOutcome {
        /// The attempt answered.
        attempt: i32,
        /// The answer.
        outcome: PspOutcome,
    },
    /// `attempt` never reached the PSP.
    AbandonCharge {
        /// The attempt.
        attempt: i32,
        /// Why.
        reason: String,
    },
    /// Record the PSP's answer to a refund.
    RecordRefund {
        /// The answer.
        outcome: RefundOutcome,
        /// Failed attempts after which the refund needs review.
        max_attempts: i32,
    },
    /// An operator settles a refund that needs review.
    ReviewRefund {
        /// Retry, or record a refund made by hand.
        action: RefundReview,
        /// Who.
        operator: String,
        /// The clock.
        now: DateTime<Utc>,
    },
    /// The booking ended.
    BookingEnded {
        /// How.
        end: BookingEnd,
        /// The clock.
        now: DateTime<Utc>,
    },
}

/// What an operator does with a refund that needs review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundReview {
    /// The cause is fixed: try again, under the same PSP key.
    Retry,
    /// The money went back outside this system; record it.
    RefundedByHand {
        /// What was done, for the audit trail (required).
        note: String,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentRejection {
    /// No such intent.
    #[error("Payment intent not found.")]
    NotFound,
    /// Created twice.
    #[error("Payment intent already exists.")]
    AlreadyExists,
    /// Someone else's intent.
    #[error("Unauthorized to pay this payment intent.")]
    NotOwner,
    /// Paid already.
    #[error("Payment already processed.")]
    AlreadyProcessed,
    /// The booking ended or the hold is about to lapse.
    #[error("Payment intent is no longer payable.")]
    NotPayable,
    /// Only a refund that needs review can be reviewed.
    #[error("This payment intent has no refund waiting for review.")]
    NoRefundInReview,
    /// Another attempt of this intent is with the PSP right now.
    #[error("A payment for this intent is in progress.")]
    ChargeInProgress,
}
