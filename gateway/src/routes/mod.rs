//! REST handlers, one module per resource of the contract.

pub mod bookings;
pub mod box_office;
pub mod catalog;
pub mod health;
pub mod payments;
pub mod performances;
pub mod seat_stream;

/// The optional `Idempotency-Key` header of the two POST commands.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKey {
    /// 1-255 visible ASCII characters; the same key and body within 24 h
    /// replays the first response with `Idempotent-Replayed: true`.
    #[param(rename = "Idempotency-Key")]
    #[allow(dead_code)]
    idempotency_key: Option<String>,
}
