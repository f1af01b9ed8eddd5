//! Tracing setup shared by every binary: `RUST_LOG`-style filtering, a text
//! or JSON log format (`LOG_FORMAT=json`), and trace context. With
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are OpenTelemetry spans exported
//! over OTLP (gRPC); without it, only their trace context is kept
//! (`crate::trace_ids`), so W3C trace context is still carried HTTP → gRPC →
//! Kafka → consumers and logs still carry trace ids, at no cost per span
//! for spans nobody collects. The returned guard flushes the exporter when
//! dropped.

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
    let Some(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.trim().is_empty()) else {
        install_without_export(format);
        return TelemetryGuard { provider: None };
    };
    match opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint.clone()).build() {
        Ok(exporter) => {
            let provider = SdkTracerProvider::builder()
                .with_resource(Resource::builder().with_service_name(service.to_owned()).build())
                .with_batch_exporter(exporter)
                .build();
            install(format, provider.tracer(service.to_owned()));
            opentelemetry::global::set_tracer_provider(provider.clone());
            tracing::info!(endpoint, "exporting spans over OTLP");
            TelemetryGuard { provider: Some(provider) }
        }
        Err(error) => {
            install_without_export(format);
            tracing::warn!(endpoint, error = %error, "OTLP exporter not started; spans are not exported");
            TelemetryGuard { provider: None }
        }
    }
}

/// The spans whose context is carried (the same with or without export).
fn span_filter() -> EnvFilter {
    EnvFilter::new("info,h2=off,hyper=off,tower=off,sqlx=off,rdkafka=off,opentelemetry=off")
}

/// Logs, and trace context kept without OpenTelemetry spans.
pub fn install_without_export(format: LogFormat) {
    let registry = tracing_subscriber::registry().with(crate::trace_ids::TraceIdsLayer.with_filter(span_filter()));
    let _ = match format {
        LogFormat::Text => registry.with(fmt::layer().with_target(true).with_filter(filter())).try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(true).with_filter(filter()))
            .try_init(),
    };
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
        .with_filter(span_filter());
    let registry = tracing_subscriber::registry().with(otel);
    let installed = match format {
        LogFormat::Text => registry.with(fmt::layer().with_target(true).with_filter(filter())).try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(true).with_filter(filter()))
            .try_init(),
    };
    if installed.is_ok() {
        crate::trace_context::use_otel_spans();
    }
}
