//! One purchase is one trace: spans from the gateway, the booking-service,
//! Kafka consumers and the payment-service share the trace id the client
//! sent, collected with an in-memory exporter. No span carries the CVV.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "e2e/support.rs"]
mod support;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use reqwest::StatusCode;
use serde_json::{json, Value};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CVV: &str = "9753";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_purchase_is_one_trace_across_gateway_booking_kafka_and_payment() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    edge::telemetry::install(edge::telemetry::LogFormat::Text, provider.tracer("tests"));
    let sys = support::System::start().await;
    let token = sys.token("traced");
    let send = |path: &str, parent: &str, body: Value| {
        sys.client
            .post(format!("{}{path}", sys.base))
            .bearer_auth(&token)
            .header("traceparent", format!("00-{TRACE_ID}-{parent}-01"))
            .json(&body)
            .send()
    };
    let booked: Value = send(
        "/bookings",
        "00f067aa0ba902b7",
        json!({"performanceId": "perf_002", "seatIds": ["B5"], "userId": "traced"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let intent = booked["paymentIntentId"].as_str().unwrap().to_owned();
    let booking = booked["bookingId"].as_str().unwrap().to_owned();
    sys.wait_intent("traced", &intent).await;
    let paid = send(
        "/payments/execute",
        "00f067aa0ba902b8",
        json!({"paymentIntentId": intent, "paymentMethodToken": "tok_visa", "cvv": CVV}),
    )
    .await
    .unwrap();
    assert_eq!(paid.status(), StatusCode::OK);
    sys.wait_status("traced", &booking, "confirmed").await;
    let read = sys
        .client
        .get(format!("{}/bookings/{booking}", sys.base))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b9-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);

    let mut names = Vec::new();
    let found = testkit::eventually(std::time::Duration::from_secs(20), || {
        let spans = exporter.get_finished_spans().unwrap();
        names = spans
            .iter()
            .filter(|s| s.span_context.trace_id().to_string() == TRACE_ID)
            .map(|s| s.name.to_string())
            .collect::<Vec<_>>();
        let has = |needle: &str| names.iter().any(|n| n.contains(needle));
        let complete = has("POST /bookings")
            && has("/ticketing.booking.v1.BookingService/CreateBooking")
            && has("payment-service consume ticketing.booking.v1.SeatLocked")
            && has("POST /payments/execute")
            && has("/ticketing.payment.v1.PaymentService/ExecutePayment")
            && has("/ticketing.booking.v1.BookingService/AdmitPayment")
            && has("booking-service consume ticketing.payment.v1.PaymentSucceeded")
            && names.iter().any(|n| n == "GET /bookings/{id}");
        std::future::ready(complete.then_some(()))
    })
    .await;
    assert!(found.is_some(), "spans of the trace: {names:#?}");
    // Span names come from route templates, never raw paths with ids in them.
    assert!(names.iter().all(|n| !n.contains(&booking) && !n.contains(&intent)), "{names:#?}");
    for span in exporter.get_finished_spans().unwrap() {
        for attribute in &span.attributes {
            let value = attribute.value.to_string();
            assert!(!testkit::contains_token(&value, CVV), "span {} carries the CVV: {value}", span.name);
        }
    }
    sys.stop().await;
}
