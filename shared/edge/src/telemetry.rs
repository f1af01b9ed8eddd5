//! Tracing setup shared by every binary: `RUST_LOG`-style filtering, a text
//! or JSON log format (`LOG_FORMAT=json`), and OpenTelemetry spans. An OTel
//! layer is always installed so W3C trace context is carried HTTP → gRPC →
//! Kafka → consumers; spans are exported over OTLP (gRPC) only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. The returned guard flushes the
//! exporter when dropped.

use clap::ValueEnum;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Flushes and shuts the span exporter down when dropped.
#[must_use = "dropping the guard flushes and stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("flushing spans: {error}");
            }
        }
    }
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,rdkafka=warn,h2=warn,tower=warn,opentelemetry=warn"))
}

/// Installs logging and tracing for `service`; a second call (tests) is a no-op.
pub fn init(format: LogFormat, service: &str) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let mut builder =
        SdkTracerProvider::builder().with_resource(Resource::builder().with_service_name(service.to_owned()).build());
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.trim().is_empty());
    let mut export_error = None;
    if let Some(endpoint) = &endpoint {
        match opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint.clone()).build() {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(error) => export_error = Some(error.to_string()),
        }
    }
    let provider = builder.build();
    install(format, provider.tracer(service.to_owned()));
    opentelemetry::global::set_tracer_provider(provider.clone());
    match (endpoint, export_error) {
        (Some(endpoint), None) => tracing::info!(endpoint, "exporting spans over OTLP"),
        (Some(endpoint), Some(error)) => tracing::warn!(endpoint, error, "OTLP exporter not started"),
        (None, _) => {}
    }
    TelemetryGuard { provider: Some(provider) }
}

/// Installs the global subscriber with `tracer` as the OTel layer (tests
/// pass a tracer over an in-memory exporter). No-op if one is installed.
pub fn install<T>(format: LogFormat, tracer: T)
where
    T: opentelemetry::trace::Tracer + Send + Sync + 'static,
    T::Span: Send + Sync,
{
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // Traces do not depend on the log level: the OTel layer has its own filter.
    // A span is entered on every poll of its future, dozens of times per
    // request: with busy/idle timing and context activation off, entering
    // and leaving cost the layer nothing (nothing here reads the active
    // OTel context; propagation reads the span's own). Thread attributes
    // say nothing of a task that moves between workers.
    let otel = tracing_opentelemetry::layer()
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_threads(false)
        .with_tracer(tracer)
        .with_filter(EnvFilter::new("info,h2=off,hyper=off,tower=off,sqlx=off,rdkafka=off,opentelemetry=off"));
    let registry = tracing_subscriber::registry().with(otel);
    let _ = match format {
        LogFormat::Text => registry.with(fmt::layer().with_target(true).with_filter(filter())).try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(true).with_filter(filter()))
            .try_init(),
    };
}
