//! RFC 9457 Problem Details for clients that ask for them with
//! `Accept: application/problem+json`. Every other client gets the seed's
//! bodies byte for byte; this step only rewrites an error answer, after
//! the fact, into `{"type", "title", "status", "detail", "code"}`, where
//! `detail` is the same sentence and `code` is one of [`CODES`]: stable,
//! listed in docs/API.md, never renamed.

use std::future::Future;

use axum::{
    body::{to_bytes, Body},
    extract::Request,
    http::{header, HeaderValue, StatusCode},
    response::Response,
};
use serde_json::{json, Map, Value};

/// The media type of a problem.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every code, with its title. Codes are an API: add, never rename.
pub const CODES: &[(&str, &str)] = &[
    ("invalid_request", "The request is malformed"),
    ("missing_fields", "Required fields are missing"),
    ("invalid_id", "An id in the path is malformed"),
    ("invalid_idempotency_key", "The Idempotency-Key header is malformed"),
    ("unknown_seat", "A seat does not exist"),
    ("duplicate_seat", "A seat is requested twice"),
    ("seat_unavailable", "A seat is not available"),
    ("seat_limit_exceeded", "Too many seats for one user"),
    ("unknown_payment_token", "The payment method token is unknown"),
    ("payment_declined", "The payment was declined"),
    ("unauthenticated", "Missing or invalid bearer token"),
    ("admin_required", "The admin role is required"),
    ("not_on_sale_yet", "The on-sale has not opened"),
    ("admission_required", "Join the queue first"),
    ("admission_invalid", "The admission is not valid for this booking"),
    ("not_in_queue", "Not in the queue"),
    ("no_waiting_room", "The performance has no waiting room"),
    ("forbidden", "Not yours"),
    ("not_found", "No such resource"),
    ("booking_not_found", "No such booking"),
    ("performance_not_found", "No such performance"),
    ("payment_intent_not_found", "No such payment intent"),
    ("seat_not_occupied", "The seat is free"),
    ("method_not_allowed", "Method not allowed"),
    ("body_timeout", "The request body was not received in time"),
    ("booking_not_pending", "The booking is not pending"),
    ("payment_in_progress", "A payment is in progress"),
    ("payment_already_processed", "The payment was already processed"),
    ("payment_not_payable", "The payment intent is no longer payable"),
    ("already_exists", "It already exists"),
    ("idempotency_in_progress", "A request with this Idempotency-Key is in progress"),
    ("concurrent_change", "Changed concurrently; retry"),
    ("conflict", "Conflict"),
    ("idempotency_key_reused", "The Idempotency-Key was used with another request"),
    ("rate_limited", "Too many requests"),
    ("too_many_streams", "Too many seat streams"),
    ("internal_error", "Internal server error"),
    ("payment_not_ready", "The payment is not ready yet"),
    ("payment_confirming", "The payment is being confirmed"),
    ("busy", "The service is busy"),
    ("unavailable", "Service temporarily unavailable"),
    ("timeout", "The request timed out"),
];

/// The stable code of an error answer with `status` and sentence `detail`.
pub fn code_for(status: StatusCode, detail: &str) -> &'static str {
    let starts = |prefix: &str| detail.starts_with(prefix);
    let ends = |suffix: &str| detail.ends_with(suffix);
    match status.as_u16() {
        400 if starts("User, performance, and seats are required") => "missing_fields",
        400 if starts("Invalid id") => "invalid_id",
        400 if starts("Idempotency-Key must be") => "invalid_idempotency_key",
        400 if starts("Seat ") && ends(" does not exist.") => "unknown_seat",
        400 if starts("Seat ") && ends(" is requested more than once.") => "duplicate_seat",
        400 if starts("Seat ") && ends(" is not available.") => "seat_unavailable",
        400 if starts("You cannot book more than") => "seat_limit_exceeded",
        400 if starts("Unknown payment method token") => "unknown_payment_token",
        400 => "invalid_request",
        401 => "unauthenticated",
        403 if starts("Admin role required") => "admin_required",
        403 if starts("This performance is not on sale yet") => "not_on_sale_yet",
        403 if starts("Join the queue") => "admission_required",
        403 if starts("Your admission is not valid") => "admission_invalid",
        403 => "forbidden",
        404 if starts("Booking not found") => "booking_not_found",
        404 if starts("Performance ") => "performance_not_found",
        404 if starts("Payment intent not found") => "payment_intent_not_found",
        404 if starts("Seat ") => "seat_not_occupied",
        404 if starts("You are not in the queue") => "not_in_queue",
        404 if starts("This performance has no waiting room") => "no_waiting_room",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "body_timeout",
        409 if starts("Only pending bookings") => "booking_not_pending",
        409 if starts("This performance has no waiting room") => "no_waiting_room",
        409 if starts("A payment for this") => "payment_in_progress",
        409 if starts("Payment already processed") => "payment_already_processed",
        409 if starts("Payment intent is no longer payable") => "payment_not_payable",
        409 if ends("already exists.") => "already_exists",
        409 if starts("A request with this idempotency key") => "idempotency_in_progress",
        409 if detail.contains("changed concurrently") => "concurrent_change",
        409 => "conflict",
        422 => "idempotency_key_reused",
        429 if starts("Too many seat streams") => "too_many_streams",
        429 => "rate_limited",
        503 if starts("Payment is not ready yet") => "payment_not_ready",
        503 if starts("The payment is being confirmed") => "payment_confirming",
        503 if starts("The service is busy") => "busy",
        503 => "unavailable",
        504 => "timeout",
        _ => "internal_error",
    }
}

/// Whether the request's `Accept` asks for problem details.
fn wants_problem(request: &Request) -> bool {
    request
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|range| range.split(';').next().is_some_and(|media| media.trim().eq_ignore_ascii_case(PROBLEM_JSON)))
}

/// Error bodies are small; anything larger is left as it is.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The middleware step (`middleware.rs`): rewrites an error answer for a
/// client that asked.
pub async fn negotiate<F, Fut>(request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let wanted = wants_problem(&request);
    let response = next(request).await;
    let is_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !wanted || !(response.status().is_client_error() || response.status().is_server_error()) || !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_ERROR_BODY).await else {
        tracing::warn!(status = %parts.status, "an error body too large to rewrite as a problem");
        return Response::from_parts(parts, Body::from("{\"error\": \"Internal server error.\"}"));
    };
    let Some(problem) = serde_json::from_slice::<Value>(&bytes).ok().and_then(|body| problem(parts.status, body))
    else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(problem.to_string()))
}

/// The problem for an error body: `{"error": "…"}`, or the seed's decline.
fn problem(status: StatusCode, body: Value) -> Option<Value> {
    let Value::Object(mut body) = body else { return None };
    let (code, detail, mut extensions) = match body.remove("error")? {
        Value::String(detail) => (code_for(status, &detail), detail, Map::new()),
        // The decline: `{"message", "paymentIntentId", "status", "error": {"failureCode", "failureConcept"}}`.
        Value::Object(failure) => {
            let detail = body.get("message").and_then(Value::as_str).unwrap_or("Payment FAILURE").to_owned();
            let mut extensions = Map::new();
            if let Some(intent) = body.remove("paymentIntentId") {
                extensions.insert("paymentIntentId".into(), intent);
            }
            extensions.extend(failure);
            ("payment_declined", detail, extensions)
        }
        _ => return None,
    };
    let title = CODES.iter().find(|(c, _)| *c == code).map_or("Error", |(_, title)| title);
    extensions.insert("type".into(), json!(format!("urn:ticketing:problem:{code}")));
    extensions.insert("title".into(), json!(title));
    extensions.insert("status".into(), json!(status.as_u16()));
    extensions.insert("detail".into(), json!(detail));
    extensions.insert("code".into(), json!(code));
    Some(Value::Object(extensions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_a_sentence_can_map_to_is_listed() {
        let samples = [
            (400, "Seat A1 is not available."),
            (400, "Seat Z9 does not exist."),
            (400, "You cannot book more than 10 tickets for this performance."),
            (400, "Invalid request body: missing field"),
            (404, "Performance perf_x not found."),
            (409, "Performance perf_x already exists."),
            (409, "The booking was changed concurrently; please retry."),
            (500, "Internal server error."),
        ];
        let expected = [
            "seat_unavailable",
            "unknown_seat",
            "seat_limit_exceeded",
            "invalid_request",
            "performance_not_found",
            "already_exists",
            "concurrent_change",
            "internal_error",
        ];
        for ((status, detail), code) in samples.into_iter().zip(expected) {
            assert_eq!(code_for(StatusCode::from_u16(status).unwrap(), detail), code, "{detail}");
        }
        let source = include_str!("problem.rs");
        let mapped: Vec<&str> = source
            .lines()
            .filter(|line| line.contains("=> \""))
            .filter_map(|line| line.split("=> \"").nth(1)?.split('"').next())
            .collect();
        assert!(mapped.len() > 30);
        for code in mapped {
            assert!(CODES.iter().any(|(c, _)| *c == code), "{code} is not in CODES");
        }
    }

    #[test]
    fn a_decline_keeps_its_fields_as_extensions() {
        let body = json!({"message": "Payment FAILURE", "paymentIntentId": "pi", "status": "FAILURE",
            "error": {"failureCode": "CARD_DECLINED", "failureConcept": "CLIENT_ERROR"}});
        let problem = problem(StatusCode::BAD_REQUEST, body).unwrap();
        assert_eq!(problem["code"], "payment_declined");
        assert_eq!(problem["detail"], "Payment FAILURE");
        assert_eq!(problem["failureCode"], "CARD_DECLINED");
        assert_eq!(problem["paymentIntentId"], "pi");
        assert_eq!(problem["status"], 400);
    }
}
