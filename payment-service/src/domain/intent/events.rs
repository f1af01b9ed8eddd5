//! What can happen to a payment intent: its events, and the facts they
//! carry (how a decline is classed, how a booking ended, what the PSP said).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Whether a decline is the buyer's or the PSP's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureConcept {
    /// The card or data was refused: counts against the buyer's attempts.
    ClientError,
    /// PSP trouble: retryable, does not use up attempts.
    ServerError,
}

impl FailureConcept {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientError => "CLIENT_ERROR",
            Self::ServerError => "SERVER_ERROR",
        }
    }
}

/// How the booking ended, as far as payment is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BookingEnd {
    /// Cancelled by its owner.
    Cancelled,
    /// Its hold lapsed.
    Expired,
    /// Payment attempts were exhausted.
    Failed,
}

/// The intent's facts at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentCreated {
    /// The intent.
    pub payment_intent_id: String,
    /// The booking it pays.
    pub booking_id: String,
    /// The payer.
    pub user_id: String,
    /// Amount in won, from the booking-service.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
    /// The booking's hold ends here.
    pub payable_until: DateTime<Utc>,
    /// When created.
    pub created_at: DateTime<Utc>,
}

/// Everything that can happen to a payment intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PaymentEvent {
    /// Created from SeatLocked.
    PaymentIntentCreated(IntentCreated),
    /// A charge attempt is about to go to the PSP under `attempt_key`.
    /// (Internal: the reconciler's to-do list until its outcome is recorded.)
    ChargeRequested {
        /// 1 for the first attempt.
        attempt: i32,
        /// The PSP's idempotency key, `{intent}:{attempt}`.
        attempt_key: String,
        /// The token used (a reference, not card data).
        payment_method_token: String,
        /// The client's Idempotency-Key, so the reconciler can settle it.
        #[serde(default)]
        idempotency_key: Option<String>,
        /// When.
        requested_at: DateTime<Utc>,
    },
    /// An attempt that never reached the PSP (not admitted, or voided by
    /// the reconciler). No money moved. (Internal.)
    ChargeAbandoned {
        /// Which attempt.
        attempt: i32,
        /// Why.
        reason: String,
    },
    /// The PSP captured the money.
    PaymentSucceeded {
        /// The attempt that captured (0 in events older than attempts).
        #[serde(default)]
        attempt: i32,
        /// The booking.
        booking_id: String,
        /// The payer.
        user_id: String,
        /// Captured amount.
        amount: i64,
        /// Currency.
        currency: String,
        /// The token used (a reference, not card data).
        payment_method_token: String,
        /// The PSP's processing time.
        processed_at: DateTime<Utc>,
    },
    /// An attempt was declined.
    PaymentFailed {
        /// The attempt that was declined (0 in events older than attempts).
        #[serde(default)]
        attempt: i32,
        /// The booking.
        booking_id: String,
        /// The payer.
        user_id: String,
        /// Stable code, e.g. `CARD_DECLINED`.
        failure_code: String,
        /// Whose fault.
        failure_concept: FailureConcept,
        /// Client-error declines so far, this one included.
        client_failures: i32,
        /// The PSP's processing time.
        processed_at: DateTime<Utc>,
    },
    /// The booking ended; no further attempts. (Internal, not published.)
    PaymentIntentClosed {
        /// How it ended.
        booking_end: BookingEnd,
        /// When this service learned it.
        closed_at: DateTime<Utc>,
    },
    /// The booking ended after its payment was captured: the money must go
    /// back. (Internal; the refund worker acts on it.)
    PaymentRefundRequested {
        /// When it was decided.
        requested_at: DateTime<Utc>,
    },
    /// The PSP did not refund this time; retried with the same key. (Internal.)
    RefundAttemptFailed {
        /// Which attempt.
        attempt: i32,
        /// The PSP's reason.
        reason: String,
    },
    /// Refunding kept failing; a person must look. (Internal, alerted.)
    RefundNeedsReview {
        /// Attempts made.
        attempts: i32,
        /// The last reason.
        reason: String,
    },
    /// An operator had a refund that needed review tried again, under the
    /// same key. (Internal.)
    RefundRetried {
        /// Who asked.
        operator: String,
        /// When.
        retried_at: DateTime<Utc>,
    },
    /// An operator refunded the money outside this system (at the PSP by
    /// hand) and recorded it; `PaymentRefunded` follows. (Internal.)
    RefundResolvedByHand {
        /// Who resolved it.
        operator: String,
        /// What they did, for the audit trail.
        note: String,
        /// When.
        resolved_at: DateTime<Utc>,
    },
    /// The captured money went back: the booking had ended.
    PaymentRefunded {
        /// The booking.
        booking_id: String,
        /// The payer.
        user_id: String,
        /// Refunded amount.
        amount: i64,
        /// Currency.
        currency: String,
        /// When.
        refunded_at: DateTime<Utc>,
    },
}

impl PaymentEvent {
    /// The stored event-type name.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::PaymentIntentCreated(_) => "PaymentIntentCreated",
            Self::ChargeRequested { .. } => "ChargeRequested",
            Self::ChargeAbandoned { .. } => "ChargeAbandoned",
            Self::PaymentSucceeded { .. } => "PaymentSucceeded",
            Self::PaymentFailed { .. } => "PaymentFailed",
            Self::PaymentIntentClosed { .. } => "PaymentIntentClosed",
            Self::PaymentRefundRequested { .. } => "PaymentRefundRequested",
            Self::RefundAttemptFailed { .. } => "RefundAttemptFailed",
            Self::RefundNeedsReview { .. } => "RefundNeedsReview",
            Self::RefundRetried { .. } => "RefundRetried",
            Self::RefundResolvedByHand { .. } => "RefundResolvedByHand",
            Self::PaymentRefunded { .. } => "PaymentRefunded",
        }
    }
}

/// What the PSP answered to a refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefundOutcome {
    /// The money went back.
    Refunded {
        /// When the PSP processed it.
        processed_at: DateTime<Utc>,
    },
    /// Not this time.
    Failed {
        /// Why.
        reason: String,
    },
}

/// What the payment service provider (simulated, or a real one) answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PspOutcome {
    /// Captured.
    Success {
        /// When the PSP processed it.
        processed_at: DateTime<Utc>,
    },
    /// Declined.
    Failure {
        /// Stable code.
        failure_code: String,
        /// Whose fault.
        failure_concept: FailureConcept,
        /// When the PSP processed it.
        processed_at: DateTime<Utc>,
    },
}

impl kernel::event_store::DomainEvent for PaymentEvent {
    fn event_type(&self) -> &'static str {
        PaymentEvent::event_type(self)
    }

    /// The payment facts other services see; the charge attempts, the
    /// intent's closing and the refund bookkeeping are internal.
    fn published(&self) -> bool {
        match self {
            Self::PaymentIntentCreated(_)
            | Self::PaymentSucceeded { .. }
            | Self::PaymentFailed { .. }
            | Self::PaymentRefunded { .. } => true,
            Self::ChargeRequested { .. }
            | Self::ChargeAbandoned { .. }
            | Self::PaymentIntentClosed { .. }
            | Self::PaymentRefundRequested { .. }
            | Self::RefundAttemptFailed { .. }
            | Self::RefundNeedsReview { .. }
            | Self::RefundRetried { .. }
            | Self::RefundResolvedByHand { .. } => false,
        }
    }
}
