//! `Accept: application/problem+json` gets RFC 9457 Problem Details with a
//! stable code; every other client gets the seed's bodies unchanged.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::System;

/// Sends a request asking for problem details; returns status, content type and body.
async fn ask(
    sys: &System,
    method: Method,
    path: &str,
    user: Option<&str>,
    body: Option<Value>,
) -> (u16, String, Value) {
    let mut request =
        sys.client.request(method, format!("{}{path}", sys.base)).header("accept", "application/problem+json");
    if let Some(user) = user {
        request = request.bearer_auth(sys.token(user));
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    (status, content_type, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_problem_details_on_request_and_the_seeds_bodies_otherwise() {
    let sys = System::start().await;
    let (_, intent) = sys.book("p_holder", "perf_001", &["A1"]).await;
    let book = |seats: Value| json!({"performanceId": "perf_001", "seatIds": seats, "userId": "p_user"});
    let cases = [
        (Method::POST, "/bookings", Some(book(json!(["A1"]))), 400, "seat_unavailable", "Seat A1 is not available."),
        (Method::POST, "/bookings", Some(book(json!(["Z99"]))), 400, "unknown_seat", "Seat Z99 does not exist."),
        (
            Method::POST,
            "/bookings",
            Some(book(json!(["B1", "B1"]))),
            400,
            "duplicate_seat",
            "Seat B1 is requested more than once.",
        ),
        (
            Method::POST,
            "/bookings",
            Some(json!({"performanceId": "perf_001"})),
            400,
            "missing_fields",
            "User, performance, and seats are required.",
        ),
        (Method::GET, "/bookings/nope", None, 404, "booking_not_found", "Booking not found."),
        (
            Method::GET,
            "/performances/perf_nope",
            None,
            404,
            "performance_not_found",
            "Performance perf_nope not found.",
        ),
        (Method::GET, "/no/such/path", None, 404, "not_found", "Not found."),
        (Method::PUT, "/bookings", None, 405, "method_not_allowed", "Method not allowed."),
    ];
    for (method, path, body, status, code, detail) in cases {
        let (got, content_type, problem) = ask(&sys, method.clone(), path, Some("p_user"), body.clone()).await;
        assert_eq!((got, content_type.as_str()), (status, "application/problem+json"), "{method} {path}: {problem}");
        assert_eq!(problem["code"], code, "{method} {path}");
        assert_eq!(problem["detail"], detail);
        assert_eq!(problem["status"], status);
        assert_eq!(problem["type"], format!("urn:ticketing:problem:{code}"));
        assert!(problem["title"].as_str().is_some_and(|t| !t.is_empty()));
        // Without the header: the seed's body, exactly.
        let plain = sys.call(method, path, Some(&sys.token("p_user")), body).await;
        assert_eq!((plain.status.as_u16(), plain.body.clone()), (status, json!({"error": detail})));
    }

    let (status, _, problem) = ask(&sys, Method::GET, "/bookings/my", None, None).await;
    assert_eq!((status, problem["code"].as_str()), (401, Some("unauthenticated")));
    let anonymous = sys.client.get(format!("{}/bookings/my", sys.base)).send().await.unwrap();
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");

    // The decline keeps the seed's fields as extension members.
    let pay = json!({"paymentIntentId": intent, "paymentMethodToken": "tok_chargeDeclined", "cvv": "123"});
    let (status, _, problem) = ask(&sys, Method::POST, "/payments/execute", Some("p_holder"), Some(pay)).await;
    assert_eq!((status, problem["code"].as_str()), (400, Some("payment_declined")), "{problem}");
    assert_eq!(problem["paymentIntentId"], intent.as_str());
    assert!(problem["failureCode"].is_string(), "{problem}");
    sys.stop().await;
}

#[test]
fn api_md_lists_every_problem_code() {
    let api_md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/API.md")).unwrap();
    for (code, _) in gateway::problem::CODES {
        assert!(api_md.contains(&format!("`{code}`")), "docs/API.md does not list the problem code {code}");
    }
}
