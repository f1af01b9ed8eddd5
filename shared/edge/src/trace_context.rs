//! W3C trace context across process boundaries: extracted from HTTP headers,
//! gRPC metadata and Kafka `traceparent` headers into the current span, and
//! injected from it into outgoing gRPC calls and recorded events. A process
//! that exports spans keeps the context in its OpenTelemetry spans; one
//! that exports none keeps only the ids (`crate::trace_ids`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::{
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
    Context,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether this process's spans are OpenTelemetry spans (an exporter, or a
/// test's tracer); otherwise `crate::trace_ids` keeps their context.
static OTEL_SPANS: AtomicBool = AtomicBool::new(false);

/// From now on the context lives in OpenTelemetry spans (set by `telemetry`).
pub(crate) fn use_otel_spans() {
    OTEL_SPANS.store(true, Ordering::Relaxed);
}

fn otel_spans() -> bool {
    OTEL_SPANS.load(Ordering::Relaxed)
}

/// The context of `span`, whichever way this process keeps it.
fn context_of(span: &Span) -> Context {
    if otel_spans() {
        span.context()
    } else {
        crate::trace_ids::context_of(span).map_or_else(Context::new, |sc| Context::new().with_remote_span_context(sc))
    }
}

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
    if otel_spans() {
        let _ = span.set_parent(parent);
    } else {
        crate::trace_ids::adopt(span, parent.span().span_context());
    }
    let trace_id = context_of(span).span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
}

/// The current span's context as a `traceparent` value, if it is sampled into a trace.
pub fn current_traceparent() -> Option<String> {
    let context = context_of(&Span::current());
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier.remove("traceparent")
}

/// Writes the current span's context into outgoing gRPC metadata.
pub fn inject_grpc(metadata: &mut tonic::metadata::MetadataMap) {
    let context = context_of(&Span::current());
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
