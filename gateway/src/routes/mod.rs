//! REST handlers, one module per resource of the contract.

pub mod bookings;
pub mod box_office;
pub mod catalog;
pub mod health;
pub mod payments;
pub mod performances;
pub mod seat_stream;
pub mod waiting_room;

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

/// A list's `limit` query parameter: `default` when absent, else an
/// integer from 1 to `max` (400 naming the bounds otherwise).
pub(crate) fn query_limit(value: Option<&str>, default: u32, max: u32) -> Result<u32, crate::error::ApiError> {
    match value {
        None => Ok(default),
        Some(text) => {
            text.parse::<u32>().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
                crate::error::ApiError::bad_request(format!("limit must be an integer from 1 to {max}."))
            })
        }
    }
}

/// A list's cursor (`before`, `after`): an id, checked as path ids are.
pub(crate) fn query_cursor(name: &str, names: &str, value: Option<&str>) -> Result<(), crate::error::ApiError> {
    if value.is_some_and(|id| !crate::path_id::valid_id(id)) {
        return Err(crate::error::ApiError::bad_request(format!(
            "{name} must be a {names}: 1-128 characters without control characters."
        )));
    }
    Ok(())
}
