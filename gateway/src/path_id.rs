//! An id taken from the URL path, checked before it reaches any service or
//! query: 1 to 128 characters, none of them a control character (PostgreSQL
//! refuses NUL bytes, and no id here contains one). Anything else is a 400.

use axum::{
    extract::{FromRequestParts, Path},
    http::request::Parts,
};

use crate::error::ApiError;

/// The longest id accepted.
pub const MAX_ID_CHARS: usize = 128;
/// [`valid_id`] as the OpenAPI document states it (no C0 or C1 control
/// character, 1 to 128 characters).
pub const ID_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]{1,128}$";

/// A validated path id.
pub struct PathId(pub String);

/// True for ids of 1 to 128 characters without control characters.
pub fn valid_id(id: &str) -> bool {
    let chars = id.chars().count();
    (1..=MAX_ID_CHARS).contains(&chars) && !id.chars().any(char::is_control)
}

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let invalid = || ApiError::bad_request("Invalid id: ids are 1-128 characters without control characters.");
        let Path(id) = Path::<String>::from_request_parts(parts, state).await.map_err(|_| invalid())?;
        if valid_id(&id) {
            Ok(Self(id))
        } else {
            Err(invalid())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_id;

    #[test]
    fn ids_are_one_to_128_characters_without_control_characters() {
        assert!(
            valid_id("01a21e0f-e290-738e-a99c-f3402a99f234") && valid_id("perf_001_A2") && valid_id(&"é".repeat(128))
        );
        for bad in ["", "\0\0", "a\u{1f}b", "tab\there", "line\n", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
