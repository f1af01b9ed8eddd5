//! Every status code and message of docs/API.md that is not a lifecycle.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::System;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_booking_requests_get_the_contract_errors() {
    let sys = System::start().await;
    let required = "User, performance, and seats are required.";
    let cases = [
        (json!({}), StatusCode::BAD_REQUEST, required),
        (json!({"performanceId": "perf_001", "userId": "u1"}), StatusCode::BAD_REQUEST, required),
        (json!({"performanceId": "perf_001", "seatIds": [], "userId": "u1"}), StatusCode::BAD_REQUEST, required),
        (json!({"performanceId": "", "seatIds": ["A1"], "userId": "u1"}), StatusCode::BAD_REQUEST, required),
        (json!({"performanceId": "perf_001", "seatIds": ["A1"]}), StatusCode::BAD_REQUEST, required),
        (
            json!({"performanceId": "perf_001", "seatIds": ["A1"], "userId": "someone_else"}),
            StatusCode::FORBIDDEN,
            "Unauthorized to book for another user.",
        ),
        (
            json!({"performanceId": "perf_001", "seatIds": ["A1"], "userId": "u1", "paymentMethod": "CASH"}),
            StatusCode::BAD_REQUEST,
            "paymentMethod must be one of CREDIT_CARD, BANK_TRANSFER, EASY_PAY.",
        ),
        (
            json!({"performanceId": "perf_001", "seatIds": ["A1", "A1"], "userId": "u1"}),
            StatusCode::BAD_REQUEST,
            "Seat A1 is requested more than once.",
        ),
        (
            json!({"performanceId": "perf_001", "seatIds": ["A1","A2","A3","A4","A5","A6","A7","A8","A9","A10","A11"], "userId": "u1"}),
            StatusCode::BAD_REQUEST,
            "You cannot book more than 10 tickets for this performance.",
        ),
        (
            json!({"performanceId": "perf_x", "seatIds": ["A1"], "userId": "u1"}),
            StatusCode::NOT_FOUND,
            "Performance perf_x not found.",
        ),
        (
            json!({"performanceId": "perf_001", "seatIds": ["A1", "Z9"], "userId": "u1"}),
            StatusCode::BAD_REQUEST,
            "Seat Z9 does not exist.",
        ),
        (
            json!({"performanceId": "perf_001", "seatIds": "A1", "userId": "u1"}),
            StatusCode::BAD_REQUEST,
            "Invalid request body: seatIds: invalid type: string \"A1\", expected a sequence",
        ),
    ];
    for (body, status, message) in cases {
        let reply = sys.post("/bookings", "u1", body.clone()).await;
        let error = reply.body["error"].as_str().unwrap_or_default();
        assert_eq!(reply.status, status, "{body}: {error}");
        assert!(error.starts_with(message), "{body}: {error}");
    }
    // Nothing was locked by any of them.
    sys.book("u2", "perf_001", &["A1"]).await;
    let accepted = sys
        .post(
            "/bookings",
            "u3",
            json!({"performanceId": "perf_001", "seatIds": ["A3"], "userId": "u3", "paymentMethod": "EASY_PAY"}),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::CREATED);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_counts_pending_and_confirmed_bookings() {
    let sys = System::start().await;
    let (_, intent) = sys.book("u_lim", "perf_001", &["F1", "F2", "F3", "F4"]).await;
    sys.pay("u_lim", &intent, "tok_visa").await;
    sys.book("u_lim", "perf_001", &["F5", "F6", "F7", "F8", "F9", "F10"]).await;
    let over = sys.try_book("u_lim", "perf_001", &["F11"]).await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST);
    assert_eq!(over.body["error"], "You cannot book more than 10 tickets for this performance.");
    // Other performances have their own limit.
    sys.book("u_lim", "perf_002", &["A1"]).await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_malformed_input_are_clean_4xx() {
    let sys = System::start().await;
    let unauthorized = "Missing or invalid bearer token.";
    let expired = edge::auth::issue_token("wrong-secret", "u1", false, 3600).unwrap();
    for token in [None, Some("garbage"), Some(expired.as_str())] {
        let reply = sys.call(Method::GET, "/bookings/my", token, None).await;
        assert_eq!((reply.status, reply.body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some(unauthorized)));
    }
    let raw = |body: &'static str| {
        sys.client
            .post(format!("{}/bookings", sys.base))
            .bearer_auth(sys.token("u1"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let malformed = raw("{not json").await.unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = malformed.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().starts_with("Malformed JSON"), "{body}");
    let big = "x".repeat(70 * 1024);
    let oversized = sys
        .client
        .post(format!("{}/bookings", sys.base))
        .bearer_auth(sys.token("u1"))
        .header("content-type", "application/json")
        .body(format!("{{\"performanceId\": \"{big}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = oversized.json().await.unwrap();
    assert_eq!(body["error"], "Request body is too large.");
    let unknown = sys.get("/nowhere", "u1").await;
    assert_eq!((unknown.status, unknown.body["error"].as_str()), (StatusCode::NOT_FOUND, Some("Not found.")));
    let method = sys.call(Method::PUT, "/bookings", Some(&sys.token("u1")), None).await;
    assert_eq!(method.status, StatusCode::METHOD_NOT_ALLOWED);
    let bad_limit = sys.get("/bookings/my?limit=0", "u1").await;
    assert_eq!(bad_limit.status, StatusCode::BAD_REQUEST);
    let health = sys.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    let openapi = sys.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(openapi.body["openapi"], "3.1.0");
    assert!(openapi.body["paths"]["/payments/execute"]["post"].is_object());
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_whose_intent_has_not_arrived_is_not_ready_and_one_no_booking_names_is_not_found() {
    let sys = System::start_with(&["--intent-wait-ms=300"]).await;
    // Hold the payment-service's consumer back: its inbox insert waits on this lock.
    let payment_db = sys.payment_pool().await;
    let mut held = payment_db.begin().await.unwrap();
    sqlx::query("lock table inbox in share mode").execute(&mut *held).await.unwrap();
    let (booking, intent) = sys.book("early", "perf_001", &["G9"]).await;
    let early = sys.pay("early", &intent, "tok_visa").await;
    assert_eq!(
        (early.status, early.body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("Payment is not ready yet; retry shortly.")),
        "a pending booking names the intent"
    );
    assert_eq!(early.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let thief = sys.pay("thief", &intent, "tok_visa").await;
    assert_eq!(
        (thief.status, thief.body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("Unauthorized to pay this payment intent."))
    );
    let nobody = uuid::Uuid::now_v7().to_string();
    let unknown = sys.pay("early", &nobody, "tok_visa").await;
    assert_eq!(
        (unknown.status, unknown.body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("Payment intent not found.")),
        "no booking names it"
    );
    // The lock goes, the intent arrives, and the retry pays.
    held.rollback().await.unwrap();
    sys.wait_intent("early", &intent).await;
    assert_eq!(sys.pay("early", &intent, "tok_visa").await.status, StatusCode::OK);
    sys.wait_status("early", &booking, "confirmed").await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payment_requests_get_the_contract_errors() {
    let sys = System::start_with(&["--intent-wait-ms=300"]).await;
    let (booking, intent) = sys.book("payer", "perf_001", &["G1"]).await;
    let required = "paymentIntentId, paymentMethodToken and cvv are required.";
    let cases = [
        (json!({}), StatusCode::BAD_REQUEST, required),
        (json!({"paymentIntentId": intent, "paymentMethodToken": "tok_visa"}), StatusCode::BAD_REQUEST, required),
        (
            json!({"paymentIntentId": intent, "paymentMethodToken": "tok_visa", "cvv": "12"}),
            StatusCode::BAD_REQUEST,
            "cvv must be 3 or 4 digits.",
        ),
        (
            json!({"paymentIntentId": intent, "paymentMethodToken": "tok_bogus", "cvv": "123"}),
            StatusCode::BAD_REQUEST,
            "Unknown payment method token.",
        ),
        (
            json!({"paymentIntentId": "no-such-intent", "paymentMethodToken": "tok_visa", "cvv": "123"}),
            StatusCode::NOT_FOUND,
            "Payment intent not found.",
        ),
    ];
    for (body, status, message) in cases {
        let reply = sys.post("/payments/execute", "payer", body.clone()).await;
        assert_eq!((reply.status, reply.body["error"].as_str()), (status, Some(message)), "{body}");
    }
    // The intent arrives over Kafka; with the short wait, ask until it exists.
    let thief = testkit::eventually(std::time::Duration::from_secs(20), || async {
        let reply = sys.pay("thief", &intent, "tok_visa").await;
        (reply.status != StatusCode::NOT_FOUND).then_some(reply)
    })
    .await
    .unwrap();
    assert_eq!(
        (thief.status, thief.body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("Unauthorized to pay this payment intent."))
    );
    let peek = sys.get(&format!("/bookings/{booking}"), "thief").await;
    assert_eq!(peek.status, StatusCode::FORBIDDEN);
    // None of those was an attempt: the owner still pays.
    sys.wait_intent("payer", &intent).await;
    let paid = sys.pay("payer", &intent, "tok_visa").await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    sys.wait_status("payer", &booking, "confirmed").await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_register_performances_and_everyone_reads_seat_maps() {
    let sys = System::start().await;
    let admin = sys.admin_token();
    let body = json!({"performanceId": "perf_x", "title": "New show", "startsAt": "2027-01-01T19:00:00Z",
        "rows": [{"row": "A", "seats": 3, "price": 40000}, {"row": "BB", "seats": 2, "price": 20000}]});
    let created = sys.call(Method::POST, "/performances", Some(&admin), Some(body.clone())).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body, json!({"performanceId": "perf_x", "seatCount": 5}));
    let again = sys.call(Method::POST, "/performances", Some(&admin), Some(body.clone())).await;
    assert_eq!(
        (again.status, again.body["error"].as_str()),
        (StatusCode::CONFLICT, Some("Performance perf_x already exists."))
    );
    let user = sys.post("/performances", "u1", body).await;
    assert_eq!((user.status, user.body["error"].as_str()), (StatusCode::FORBIDDEN, Some("Admin role required.")));
    let bad = sys
        .call(
            Method::POST,
            "/performances",
            Some(&admin),
            Some(json!({"performanceId": "perf_y", "rows": [{"row": "a1", "seats": 1, "price": 1}]})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    sys.book("u1", "perf_x", &["BB2"]).await;
    let map = sys.get("/performances/perf_x/seats", "u1").await;
    assert_eq!(map.status, StatusCode::OK);
    assert_eq!(map.body["title"], "New show");
    assert_eq!(map.body["startsAt"], "2027-01-01T19:00:00Z");
    let seats = map.body["seats"].as_array().unwrap();
    assert_eq!(seats.len(), 5);
    let bb2 = seats.iter().find(|s| s["seatId"] == "BB2").unwrap();
    assert_eq!((bb2["price"].as_i64(), bb2["state"].as_str()), (Some(20000), Some("locked")));
    assert_eq!(seats[0], json!({"seatId": "A1", "price": 40000, "state": "available"}));
    let missing = sys.get("/performances/nope/seats", "u1").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_the_prometheus_text_format() {
    let sys = System::start().await;
    let (booking, intent) = sys.book("metered", "perf_002", &["B4"]).await;
    sys.pay("metered", &intent, "tok_visa").await;
    sys.wait_status("metered", &booking, "confirmed").await;
    // One route, two statuses: a series each.
    assert_eq!(sys.get(&format!("/bookings/{booking}"), "metered").await.status, StatusCode::OK);
    let unknown = sys.get("/bookings/00000000-0000-7000-8000-000000000000", "metered").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let text = sys.client.get(format!("{}/metrics", sys.metrics)).send().await.unwrap().text().await.unwrap();
    for needle in [
        "http_requests_total{method=\"POST\",route=\"/bookings\",status=\"201\"}",
        "http_requests_total{method=\"GET\",route=\"/bookings/{id}\",status=\"200\"}",
        "http_requests_total{method=\"GET\",route=\"/bookings/{id}\",status=\"404\"}",
        "http_request_duration_seconds_bucket",
        "grpc_requests_total{method=\"/ticketing.booking.v1.BookingService/CreateBooking\",code=\"0\"}",
        "bookings_total{outcome=\"confirmed\"}",
        "payments_total{outcome=\"success\"",
        "outbox_publish_seconds_bucket",
        "outbox_backlog_events",
        "consumer_records_total",
        "consumer_lag_seconds_bucket",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_is_served_offline_at_docs() {
    let sys = System::start().await;
    let page = sys.client.get(format!("{}/docs/", sys.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("swagger-ui"));
    let bundle = sys.client.get(format!("{}/docs/swagger-ui-bundle.js", sys.base)).send().await.unwrap();
    assert_eq!(bundle.status(), StatusCode::OK, "assets are vendored into the binary");
    let openapi = sys.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(openapi.body["info"]["title"], "Ticketing REST API");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_with_control_characters_or_too_long_are_a_400_before_any_query() {
    let sys = System::start().await;
    let token = sys.token("user_ids");
    let long = "x".repeat(129);
    for (method, path) in [
        (reqwest::Method::GET, "/bookings/%00%00%00".to_owned()),
        (reqwest::Method::DELETE, "/bookings/a%01b".to_owned()),
        (reqwest::Method::GET, "/occupiedSeats/perf_001_%00".to_owned()),
        (reqwest::Method::GET, format!("/bookings/{long}")),
    ] {
        let reply = sys.call(method.clone(), &path, Some(&token), None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{method} {path}: {}", reply.body);
        assert!(reply.body["error"].as_str().is_some_and(|e| e.contains("Invalid id")), "{}", reply.body);
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_md_names_every_documented_operation() {
    let sys = System::start().await;
    let doc: serde_json::Value =
        sys.client.get(format!("{}/openapi.json", sys.base)).send().await.unwrap().json().await.unwrap();
    let api_md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/API.md")).unwrap();
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    assert!(operations.len() >= 10, "{operations:?}");
    let missing: Vec<&String> = operations.iter().filter(|op| !api_md.contains(&format!("`{op}`"))).collect();
    assert!(missing.is_empty(), "docs/API.md does not describe {missing:?}");
    // Every routed operation is in the OpenAPI document (so the fuzzer calls
    // it), but the page, the dev-only token route and the scrape endpoint.
    let documented: Vec<String> = operations.iter().map(|op| without_param_names(op)).collect();
    let undocumented: Vec<String> = routed_operations()
        .into_iter()
        .filter(|op| !["GET /", "POST /dev/token"].contains(&op.as_str()))
        .filter(|op| !documented.contains(&without_param_names(op)))
        .collect();
    assert!(undocumented.is_empty(), "routed but not in the OpenAPI document: {undocumented:?}");
    // And every status code the OpenAPI document promises appears in API.md.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for status in operation["responses"].as_object().unwrap().keys() {
                assert!(api_md.contains(status.as_str()), "{method} {path}: status {status} is not in docs/API.md");
            }
        }
    }
    sys.stop().await;
}

/// `GET /bookings/{id}` for every method of every `.route("…", …)` in the
/// gateway's router.
fn routed_operations() -> Vec<String> {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway/src/app.rs")).unwrap();
    let mut operations = Vec::new();
    for chunk in source.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).unwrap();
        let handlers = chunk.split(".merge(").next().unwrap();
        for method in ["get", "post", "put", "patch", "delete"] {
            let called = [" ", "(", "."].iter().any(|before| handlers.contains(&format!("{before}{method}(")));
            if called {
                operations.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    assert!(operations.len() >= 12, "{operations:?}");
    operations
}

/// `GET /bookings/{}`: path templates compared without their parameter names.
fn without_param_names(operation: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in operation.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_openapi_json_is_what_the_server_serves() {
    let sys = System::start().await;
    let served: serde_json::Value =
        sys.client.get(format!("{}/openapi.json", sys.base)).send().await.unwrap().json().await.unwrap();
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap(),
    )
    .unwrap();
    assert!(
        served == committed,
        "docs/openapi.json is stale: regenerate it with `ticketing openapi > docs/openapi.json`"
    );
    sys.stop().await;
}

/// A TypeScript client generated from docs/openapi.json by openapi-typescript
/// (pinned in clients/typescript/package.json) compiles with tsc, so a
/// document a generator cannot use fails the build.
#[test]
fn a_typescript_client_generated_from_the_document_compiles() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/typescript");
    if !std::path::Path::new(dir).join("node_modules/.bin/tsc").exists() {
        // CI installs them (.ci/run) and fails here without them.
        testkit::skip_notice("the TypeScript client check: run `npm ci` in clients/typescript first");
        return;
    }
    let output =
        std::process::Command::new("npm").args(["run", "--silent", "check"]).current_dir(dir).output().unwrap();
    assert!(
        output.status.success(),
        "the generated TypeScript client does not compile:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
