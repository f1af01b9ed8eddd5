//! The payment-service's one error type, mapped once to `tonic::Status`.

use tonic::{Code, Status};

use crate::domain::intent::PaymentRejection;

/// Everything a payment-service call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// A malformed request; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The token is not one the PSP knows; no attempt was recorded.
    #[error("Unknown payment method token.")]
    UnknownToken,
    /// The aggregate refused the command.
    #[error(transparent)]
    Rejected(#[from] PaymentRejection),
    /// The booking-service refused the payer's forwarded token (it expired
    /// on the way, or the services disagree on keys).
    #[error("Missing or invalid bearer token.")]
    PayerUnauthenticated,
    /// The booking-service could not be asked.
    #[error("The booking service is unavailable; please retry.")]
    BookingUnavailable(String),
    /// The PSP could not be asked (or its answer was lost).
    #[error("The payment provider is unavailable; please retry.")]
    PspUnavailable(String),
    /// The intent does not exist yet, but a pending booking of the payer
    /// names it (its `SeatLocked` is on its way over Kafka).
    #[error("Payment is not ready yet; retry shortly.")]
    NotReady,
    /// A charge may have happened and its answer is not recorded yet; the
    /// reconciler settles it. The Idempotency-Key stays claimed.
    #[error("The payment is being confirmed; retry with the same Idempotency-Key.")]
    OutcomePending,
    /// Concurrent writers kept winning.
    #[error("The payment intent was changed concurrently; please retry.")]
    Contention,
    /// A bug or a broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl kernel::aggregate::CommandFailure for PaymentError {
    fn contention() -> Self {
        Self::Contention
    }

    fn is_contention(&self) -> bool {
        matches!(self, Self::Contention)
    }

    fn broken(reason: String) -> Self {
        Self::Internal(reason)
    }
}

impl PaymentError {
    /// True when money may have moved without a recorded outcome: the
    /// client's Idempotency-Key must not be released.
    pub fn charge_may_have_happened(&self) -> bool {
        matches!(self, Self::OutcomePending)
    }
}

impl From<crate::psp::PspUnavailable> for PaymentError {
    fn from(error: crate::psp::PspUnavailable) -> Self {
        Self::PspUnavailable(error.0)
    }
}

impl From<PaymentError> for Status {
    fn from(error: PaymentError) -> Self {
        use PaymentRejection as R;
        let code = match &error {
            PaymentError::Invalid(_) | PaymentError::UnknownToken => Code::InvalidArgument,
            PaymentError::PayerUnauthenticated => Code::Unauthenticated,
            PaymentError::Rejected(R::NotFound) => Code::NotFound,
            PaymentError::Rejected(R::NotOwner) => Code::PermissionDenied,
            PaymentError::Rejected(R::AlreadyExists | R::AlreadyProcessed) => Code::AlreadyExists,
            PaymentError::Rejected(R::NotPayable | R::NoRefundInReview) => Code::FailedPrecondition,
            PaymentError::Contention | PaymentError::Rejected(R::ChargeInProgress) => Code::Aborted,
            PaymentError::BookingUnavailable(_)
            | PaymentError::PspUnavailable(_)
            | PaymentError::OutcomePending
            | PaymentError::NotReady => Code::Unavailable,
            PaymentError::Internal(_) | PaymentError::Database(_) => Code::Internal,
        };
        match code {
            Code::Internal => {
                tracing::error!(%error, "payment-service internal error");
                Status::internal("Internal server error.")
            }
            Code::Unavailable if matches!(error, PaymentError::NotReady) => {
                edge::wire::retry_shortly(Status::unavailable(error.to_string()))
            }
            Code::Unavailable => {
                tracing::warn!(%error, "payment-service dependency unavailable");
                Status::unavailable(error.to_string())
            }
            _ => Status::new(code, error.to_string()),
        }
    }
}
