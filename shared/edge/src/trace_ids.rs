//! Trace context without OpenTelemetry spans, for a process that exports
//! none (no `OTEL_EXPORTER_OTLP_ENDPOINT`). Building an OpenTelemetry span
//! for every `tracing` span (its attributes, its events, its end) is work
//! on every request that nobody reads when nothing is exported. This layer
//! keeps only what crosses process boundaries: each span's trace id, a
//! span id and the sampled flag, inherited from its parent or adopted from
//! the caller's `traceparent`, so W3C trace context still goes along HTTP →
//! gRPC → Kafka → consumers, and log lines still carry the trace id.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing::{span, Span, Subscriber};
use tracing_subscriber::{layer::Context, registry::LookupSpan, Layer, Registry};

/// What a span carries across process boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ids {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
}

impl Ids {
    /// A new root: a fresh trace, sampled (as the SDK's default sampler would).
    fn root() -> Self {
        let ids = RandomIdGenerator::default();
        Self { trace_id: ids.new_trace_id(), span_id: ids.new_span_id(), flags: TraceFlags::SAMPLED }
    }

    /// A span within `parent`'s trace.
    fn child_of(trace_id: TraceId, flags: TraceFlags) -> Self {
        Self { trace_id, span_id: RandomIdGenerator::default().new_span_id(), flags }
    }

    fn context(self) -> SpanContext {
        SpanContext::new(self.trace_id, self.span_id, self.flags, false, TraceState::default())
    }
}

/// Gives every span it sees its trace context (see the module's text).
#[derive(Debug, Default, Clone, Copy)]
pub struct TraceIdsLayer;

impl<S> Layer<S> for TraceIdsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span.scope().skip(1).find_map(|s| s.extensions().get::<Ids>().copied());
        let ids = match parent {
            Some(parent) if !attrs.is_root() => Ids::child_of(parent.trace_id, parent.flags),
            _ => Ids::root(),
        };
        span.extensions_mut().insert(ids);
    }
}

/// Runs `f` on the registry entry of `span`, if this process's subscriber
/// is built on a [`Registry`].
fn with_span_data<T>(
    span: &Span,
    f: impl FnOnce(tracing_subscriber::registry::SpanRef<'_, Registry>) -> T,
) -> Option<T> {
    span.with_subscriber(|(id, dispatch)| dispatch.downcast_ref::<Registry>().and_then(|r| r.span(id)).map(f)).flatten()
}

/// Makes `parent` (a caller's context) the trace of `span`, whose children
/// created from now on inherit it. An invalid context changes nothing.
pub(crate) fn adopt(span: &Span, parent: &SpanContext) {
    if !parent.is_valid() {
        return;
    }
    with_span_data(span, |data| {
        data.extensions_mut().replace(Ids::child_of(parent.trace_id(), parent.trace_flags()));
    });
}

/// The trace context of `span` (the nearest of it and its parents that has one).
pub(crate) fn context_of(span: &Span) -> Option<SpanContext> {
    with_span_data(span, |data| data.scope().find_map(|s| s.extensions().get::<Ids>().copied()))
        .flatten()
        .map(Ids::context)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_subscriber::prelude::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with_layer(test: impl FnOnce()) {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let subscriber = tracing_subscriber::registry().with(TraceIdsLayer);
        tracing::subscriber::with_default(subscriber, test);
    }

    #[test]
    fn a_span_adopts_the_callers_trace_and_its_children_inherit_it() {
        with_layer(|| {
            let request = tracing::info_span!("http");
            adopt(&request, &crate::trace_context::from_traceparent(Some(CALLER)).span().span_context().clone());
            let _entered = request.enter();
            let child = tracing::info_span!("grpc");
            let _child = child.enter();
            let traceparent = crate::trace_context::current_traceparent().expect("a traceparent");
            assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{traceparent}");
            assert!(traceparent.ends_with("-01"), "{traceparent}");
            assert!(!traceparent.contains("00f067aa0ba902b7"), "a span id of our own: {traceparent}");
            let mut metadata = tonic::metadata::MetadataMap::new();
            crate::trace_context::inject_grpc(&mut metadata);
            let sent = metadata.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or_default();
            assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{sent}");
        });
    }

    #[test]
    fn a_root_span_starts_a_trace_of_its_own_shared_by_its_children_and_not_by_other_roots() {
        with_layer(|| {
            let root = tracing::info_span!("http");
            let ours = root.in_scope(|| {
                let child = tracing::info_span!("grpc");
                let child = context_of(&child).expect("the child's context");
                assert_eq!(Some(child.trace_id()), context_of(&root).map(|c| c.trace_id()));
                child.trace_id()
            });
            assert_ne!(ours, TraceId::INVALID);
            let other = tracing::info_span!(parent: None, "http");
            assert_ne!(context_of(&other).map(|c| c.trace_id()), Some(ours));
            // An invalid caller context leaves the span's own trace.
            adopt(&other, &SpanContext::empty_context());
            assert!(context_of(&other).is_some_and(|c| c.is_valid()));
        });
    }

    #[test]
    fn without_the_layer_there_is_no_context_and_nothing_fails() {
        let span = tracing::info_span!("http");
        adopt(&span, &SpanContext::empty_context());
        assert_eq!(context_of(&span), None);
    }
}
