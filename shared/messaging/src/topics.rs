//! The public Kafka topics and CloudEvents types (README, "For event consumers"; docs/asyncapi.yaml).

/// Booking events: SeatLocked, BookingConfirmed, BookingCancelled, BookingExpired, BookingFailed.
pub const BOOKING_EVENTS: &str = "booking.events.v1";
/// Payment events: PaymentIntentCreated, PaymentSucceeded, PaymentFailed, PaymentRefunded.
pub const PAYMENT_EVENTS: &str = "payment.events.v1";

/// The topic and consumer-group names in use, with an optional prefix
/// (`KAFKA_TOPIC_PREFIX`) so environments can share a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `<prefix>booking.events.v1`.
    pub booking: String,
    /// `<prefix>payment.events.v1`.
    pub payment: String,
    prefix: String,
}

impl Topics {
    /// Names under `prefix` (empty for the public names).
    pub fn new(prefix: &str) -> Self {
        Self {
            booking: format!("{prefix}{BOOKING_EVENTS}"),
            payment: format!("{prefix}{PAYMENT_EVENTS}"),
            prefix: prefix.to_owned(),
        }
    }

    /// Both topics (their `.dlq` twins are created alongside).
    pub fn all(&self) -> [&str; 2] {
        [&self.booking, &self.payment]
    }

    /// A consumer group name under the prefix.
    pub fn group(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}
/// CloudEvents source of the booking-service.
pub const BOOKING_SOURCE: &str = "/booking-service";
/// CloudEvents source of the payment-service.
pub const PAYMENT_SOURCE: &str = "/payment-service";

/// The `ce_type` of a booking event, e.g. `ticketing.booking.v1.SeatLocked`.
pub fn booking_type(name: &str) -> String {
    format!("ticketing.booking.v1.{name}")
}

/// The `ce_type` of a payment event, e.g. `ticketing.payment.v1.PaymentSucceeded`.
pub fn payment_type(name: &str) -> String {
    format!("ticketing.payment.v1.{name}")
}
