//! W3C trace context across process boundaries: extracted from HTTP headers,
//! gRPC metadata and Kafka `traceparent` headers into the current span, and
//! injected from it into outgoing gRPC calls and recorded events.

use std::collections::HashMap;

use opentelemetry::{
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
    Context,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(value))
        {
            self.0.insert(key, value);
        }
    }
}

/// The trace context carried by HTTP (or gRPC, which is HTTP/2) headers.
pub fn from_headers(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// The trace context of a `traceparent` value (e.g. a Kafka header).
pub fn from_traceparent(traceparent: Option<&str>) -> Context {
    let mut carrier = HashMap::new();
    if let Some(value) = traceparent {
        carrier.insert("traceparent".to_owned(), value.to_owned());
    }
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier))
}

/// Makes `parent` the parent of `span` and records the trace id on it (so
/// log lines inside carry it) when the span has a `trace_id` field.
pub fn adopt(span: &Span, parent: Context) {
    let _ = span.set_parent(parent);
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
}

/// The current span's context as a `traceparent` value, if it is sampled into a trace.
pub fn current_traceparent() -> Option<String> {
    let context = Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier.remove("traceparent")
}

/// Writes the current span's context into outgoing gRPC metadata.
pub fn inject_grpc(metadata: &mut tonic::metadata::MetadataMap) {
    let context = Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut MetadataInjector(metadata)));
}

/// The server span of one gRPC call, child of the caller's context (for `Server::trace_fn`).
pub fn grpc_server_span(request: &http::Request<()>) -> Span {
    let span = tracing::info_span!(
        "grpc",
        otel.name = %request.uri().path(),
        otel.kind = "server",
        rpc.method = %request.uri().path(),
        request_id = request.headers().get(crate::wire::REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-"),
        trace_id = tracing::field::Empty,
    );
    adopt(&span, from_headers(request.headers()));
    span
}
