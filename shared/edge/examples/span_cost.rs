//! What trace context costs per request, with OpenTelemetry spans built and
//! dropped (spans are not exported) or with only their ids kept (what a
//! process without `OTEL_EXPORTER_OTLP_ENDPOINT` does). One "request" is
//! the gateway's request span with its fields, the caller's `traceparent`
//! adopted, a child span as a service's gRPC span, the context injected
//! into gRPC metadata and an access-log event that `RUST_LOG=warn` hides.
//!
//! ```text
//! cargo run --release -p edge --example span_cost -- otel
//! cargo run --release -p edge --example span_cost -- ids
//! ```

use std::time::Instant;

use edge::telemetry::LogFormat;
use opentelemetry::trace::TracerProvider as _;

const REQUESTS: u32 = 200_000;

fn request(headers: &http::HeaderMap, n: u32) {
    let span = tracing::info_span!(
        "http",
        otel.name = %format!("{} {}", "POST", "/bookings"),
        otel.kind = "server",
        method = %"POST",
        route = %"/bookings",
        path = %"/bookings",
        request_id = %n,
        trace_id = tracing::field::Empty,
    );
    edge::trace_context::adopt(&span, edge::trace_context::from_headers(headers));
    let _entered = span.enter();
    let grpc = tracing::info_span!("grpc", otel.name = %"/ticketing.booking.v1.BookingService/CreateBooking",
        otel.kind = "server", trace_id = tracing::field::Empty);
    edge::trace_context::adopt(&grpc, edge::trace_context::from_headers(headers));
    let _in_grpc = grpc.enter();
    let mut metadata = tonic::metadata::MetadataMap::new();
    edge::trace_context::inject_grpc(&mut metadata);
    std::hint::black_box(&metadata);
    tracing::info!(status = 201, latency_us = 900, "finished processing request");
}

fn main() {
    // As the bench runs the services: the access log is below the level shown.
    std::env::set_var("RUST_LOG", "warn");
    let mode = std::env::args().nth(1).unwrap_or_else(|| "ids".to_owned());
    match mode.as_str() {
        "otel" => {
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
            edge::telemetry::install(LogFormat::Text, provider.tracer("span_cost"));
        }
        _ => edge::telemetry::install_without_export(LogFormat::Text),
    }
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "traceparent",
        http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    for n in 0..REQUESTS / 10 {
        request(&headers, n);
    }
    let started = Instant::now();
    for n in 0..REQUESTS {
        request(&headers, n);
    }
    let per_request = started.elapsed().as_nanos() as f64 / f64::from(REQUESTS);
    println!("{mode}: {per_request:.0} ns of trace context per request ({REQUESTS} requests)");
}
