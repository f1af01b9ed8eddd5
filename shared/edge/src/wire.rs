//! Names on the wire that the gateway and the services must spell alike:
//! gRPC metadata keys, error reasons, and what a valid Idempotency-Key is.

use tonic::Status;

/// Metadata key of the caller's bearer token.
pub const AUTHORIZATION: &str = "authorization";
/// Metadata key of the request id the gateway assigns.
pub const REQUEST_ID: &str = "x-request-id";
/// Metadata key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The metadata key carrying the client's Idempotency-Key over gRPC.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Response metadata set when an outcome is replayed.
pub const REPLAYED: &str = "idempotent-replayed";
/// Metadata key of a machine-readable error reason.
pub const ERROR_REASON: &str = "error-reason";
/// `error-reason` of a key reused with another request.
pub const KEY_REUSED_REASON: &str = "IDEMPOTENCY_KEY_REUSED";
/// `error-reason` of a status whose message is for the client as it is:
/// the request is sound but came too early; retry in a second.
pub const RETRY_SHORTLY_REASON: &str = "RETRY_SHORTLY";

/// True for an Idempotency-Key of 1–255 visible ASCII characters.
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// Marks `status` as [`RETRY_SHORTLY_REASON`].
pub fn retry_shortly(mut status: Status) -> Status {
    if let Ok(value) = RETRY_SHORTLY_REASON.parse() {
        status.metadata_mut().insert(ERROR_REASON, value);
    }
    status
}

/// Sends `token` as the request's bearer credential.
pub fn forward_bearer<T>(request: &mut tonic::Request<T>, token: &str) {
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert(AUTHORIZATION, value);
    }
}

#[cfg(test)]
mod tests {
    use super::valid_idempotency_key as valid_key;

    #[test]
    fn keys_are_one_to_255_visible_ascii_characters() {
        assert!(valid_key("a") && valid_key(&"k".repeat(255)) && valid_key("order-42_!~"));
        for bad in ["", " ", "has space", "tab\t", "é", &"k".repeat(256)] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }
}
