//! The booking-service's one error type, mapped once to `tonic::Status`.
//! Messages are the client-facing texts of the contract; the gateway passes
//! them through unchanged.

use tonic::{Code, Status};

use crate::domain::{booking::BookingRejection, catalog::CatalogRejection};

/// Everything a booking-service call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BookingError {
    /// A malformed request; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// A requested seat is held or sold.
    #[error("Seat {0} is not available.")]
    SeatUnavailable(String),
    /// A requested seat is not in the catalog.
    #[error("Seat {0} does not exist.")]
    UnknownSeat(String),
    /// The per-user limit would be exceeded.
    #[error("You cannot book more than {0} tickets for this performance.")]
    UserLimit(usize),
    /// No such performance.
    #[error("Performance {0} not found.")]
    PerformanceNotFound(String),
    /// The performance id is taken.
    #[error("Performance {0} already exists.")]
    PerformanceExists(String),
    /// The caller is not an administrator.
    #[error("Admin role required.")]
    AdminRequired,
    /// The body's userId is not the caller.
    #[error("Unauthorized to book for another user.")]
    BookForAnotherUser,
    /// The caller neither owns the booking nor is an admin.
    #[error("Unauthorized to view this booking.")]
    NotYourBooking,
    /// The seat has no occupiedSeats document (it is free).
    #[error("Seat {0} is not occupied.")]
    SeatNotOccupied(String),
    /// The performance has an on-sale that has not opened.
    #[error("This performance is not on sale yet.")]
    NotOnSaleYet,
    /// The performance's on-sale has opened and the request has no admission.
    #[error("Join the queue for this performance first.")]
    JoinQueueFirst,
    /// The admission is expired, forged, or another user's or performance's.
    #[error("Your admission is not valid for this booking.")]
    AdmissionInvalid,
    /// Joining a performance that has no on-sale.
    #[error("This performance has no waiting room.")]
    NoWaitingRoom,
    /// Reading the on-sale of a performance that has none (or a closed one).
    #[error("This performance has no waiting room.")]
    NoOnSale,
    /// Reading a place before joining.
    #[error("You are not in the queue for this performance.")]
    NotInQueue,
    /// On-sales need a key for admission tokens.
    #[error("On-sales need ADMISSION_SECRET (or JWT_SECRET) on the booking-service and the gateway.")]
    NoAdmissionKey,
    /// The aggregate refused the command.
    #[error(transparent)]
    Rejected(#[from] BookingRejection),
    /// Concurrent writers kept winning; the client may retry.
    #[error("The booking was changed concurrently; please retry.")]
    Contention,
    /// A bug or a broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<CatalogRejection> for BookingError {
    fn from(rejection: CatalogRejection) -> Self {
        match rejection {
            CatalogRejection::Invalid(message) => Self::Invalid(message),
        }
    }
}

impl kernel::aggregate::CommandFailure for BookingError {
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

impl From<BookingError> for Status {
    fn from(error: BookingError) -> Self {
        use BookingRejection as R;
        let code = match &error {
            BookingError::Invalid(_)
            | BookingError::SeatUnavailable(_)
            | BookingError::UnknownSeat(_)
            | BookingError::UserLimit(_) => Code::InvalidArgument,
            BookingError::PerformanceNotFound(_)
            | BookingError::SeatNotOccupied(_)
            | BookingError::NotInQueue
            | BookingError::NoOnSale
            | BookingError::Rejected(R::NotFound) => Code::NotFound,
            BookingError::PerformanceExists(_) | BookingError::Rejected(R::AlreadyExists) => Code::AlreadyExists,
            BookingError::AdminRequired
            | BookingError::BookForAnotherUser
            | BookingError::NotYourBooking
            | BookingError::NotOnSaleYet
            | BookingError::JoinQueueFirst
            | BookingError::AdmissionInvalid
            | BookingError::Rejected(R::NotOwner | R::NotPayer) => Code::PermissionDenied,
            BookingError::NoWaitingRoom | BookingError::NoAdmissionKey => Code::FailedPrecondition,
            BookingError::Rejected(
                R::NotPending | R::PaymentInProgress | R::NotPayable | R::ForeignPayment | R::NotRefundable,
            ) => Code::FailedPrecondition,
            BookingError::Contention => Code::Aborted,
            BookingError::Internal(_) | BookingError::Database(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(%error, "booking-service internal error");
            return Status::internal("Internal server error.");
        }
        Status::new(code, error.to_string())
    }
}
