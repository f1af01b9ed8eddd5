//! Prometheus metrics: one recorder per process (so `ticketing dev` shows
//! every component's metrics on each endpoint), a `/metrics` listener for
//! the services, and a tower layer counting gRPC calls.
//!
//! Names: `http_requests_total`, `http_request_duration_seconds`,
//! `grpc_requests_total`, `grpc_request_duration_seconds`, `bookings_total`,
//! `seat_hold_conflicts_total`, `payments_total`, `refunds_total`,
//! `outbox_backlog_events`, `outbox_publish_seconds`,
//! `consumer_records_total`, `consumer_lag_seconds`, `dlq_records_total`,
//! `projection_lag_seconds`.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::shutdown::Shutdown;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Installs the process-wide recorder once and returns its handle.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let built = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.install_recorder());
            match built {
                Ok(handle) => {
                    describe();
                    let upkeep = handle.clone();
                    // Histograms need periodic upkeep; a plain thread works in and out of a runtime.
                    std::thread::spawn(move || loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    });
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

/// Every metric of the platform, with its `# HELP` text: one catalogue, so
/// an operator reading `/metrics` (or a dashboard) learns what each means.
/// A test fails for an exported metric missing here.
pub const CATALOGUE: &[(&str, &str)] = &[
    ("bookings_total", "Booking requests by outcome (created, seat_taken, limit, invalid, ...)."),
    ("seat_hold_conflicts_total", "Booking requests refused because a seat was held or sold."),
    ("payments_total", "Payment outcomes by outcome and PSP failure code."),
    ("payment_events_ignored_total", "Payment facts the booking-service ignored (about another intent, or too late)."),
    ("refunds_total", "Refund steps by outcome: refunded, attempt_failed, needs_review."),
    ("grpc_requests_total", "gRPC calls served, by method and status code."),
    ("grpc_request_duration_seconds", "gRPC call latency, by method."),
    ("http_requests_total", "REST requests, by method, route template and status."),
    ("http_request_duration_seconds", "REST request latency, by method and route template."),
    ("http_requests_queued_total", "REST requests that waited in line for an in-flight slot."),
    ("http_requests_shed_total", "REST requests refused with 503 because no slot freed in time."),
    ("http_requests_timed_out_total", "REST requests answered 504 after the request timeout."),
    ("http_requests_rate_limited_total", "REST writes refused with 429 by a user's rate limit."),
    ("http_requests_body_timed_out_total", "REST requests whose body was not received in time (408)."),
    ("seat_streams_open", "Seat-map event streams open on this gateway."),
    ("queue_streams_open", "Waiting-room place streams open on this gateway."),
    ("queue_stream_calls", "WatchQueuePlaces calls this gateway holds (one per watched performance)."),
    ("seat_stream_watchers", "Performances this gateway watches for seat streams."),
    ("seat_streams_refused_total", "Seat streams refused: per-user (429) or per-gateway (503) cap."),
    ("seat_streams_lagged_total", "Seat-stream viewers that fell behind and got a fresh snapshot."),
    ("outbox_backlog_events", "Events committed but not yet published, by relay."),
    ("outbox_oldest_unpublished_seconds", "Age of the oldest event waiting to be published, by relay."),
    ("outbox_publish_seconds", "Time from an event's commit to its acknowledgement by Kafka."),
    ("outbox_producer_rebuilds_total", "Times the relay dropped and rebuilt its Kafka producer."),
    ("consumer_records_total", "Records a consumer handled, by group and outcome."),
    ("consumer_lag_seconds", "Time from a record's publication to its handling, by group."),
    ("consumer_retries_total", "Retries of a record, by group and kind (transient, permanent)."),
    ("consumer_transactions_total", "Consumer transactions, by group and kind (shared, single)."),
    ("consumer_receive_errors_total", "Errors receiving from Kafka, by group."),
    ("consumer_assigned_partitions", "Partitions this member works (leased in PostgreSQL), by group."),
    ("consumer_paused_partitions", "Partitions paused on a transient failure, by group."),
    ("consumer_heartbeat_timestamp_seconds", "Last time the consumer loop ran (Unix seconds); stale means stopped."),
    ("dlq_records_total", "Records sent to a dead-letter topic, by group and topic."),
    ("projection_lag_seconds", "Time from an event's commit to its projection."),
    ("service_ready", "1 while the service is ready (database, broker, outbox, consumer), else 0."),
    ("waiting_room_waiting", "People waiting in an on-sale's queue, by performance."),
    ("waiting_room_active", "Unexpired admissions of an on-sale, by performance."),
    ("waiting_room_admitted_total", "People admitted from an on-sale's queue, by performance."),
    ("waiting_room_places_lapsed_total", "Places skipped because nobody looked at them in time, by performance."),
    (
        "waiting_room_admissions_expired_total",
        "Admissions that ran out before their holder's booking ended, by performance.",
    ),
    (
        "waiting_room_looks_total",
        "Reads of a place, by where they were served from: memory (the warm copy) or database.",
    ),
    ("waiting_room_wait_seconds", "Time from joining an on-sale's queue to admission, by performance."),
    ("waiting_room_sold_out_seconds", "Time from an on-sale's opening to its last seat sold, by performance."),
    ("feed_subscribers", "Event-feed subscriptions this process serves now."),
    (
        "feed_subscribers_ended_total",
        "Event-feed subscriptions ended by the service, by reason (stalled: read nothing for FEED_STALL_SECS).",
    ),
    ("waiting_room_join_batch_size", "People whose joins were written in one transaction, by performance."),
];

fn describe() {
    for (name, help) in CATALOGUE {
        let (name, help) = (*name, *help);
        if name.ends_with("_total") {
            metrics::describe_counter!(name, help);
        } else if name.ends_with("_duration_seconds")
            || matches!(
                name,
                "outbox_publish_seconds"
                    | "consumer_lag_seconds"
                    | "projection_lag_seconds"
                    | "waiting_room_wait_seconds"
            )
        {
            metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
        } else if name.ends_with("_size") {
            metrics::describe_histogram!(name, metrics::Unit::Count, help);
        } else {
            metrics::describe_gauge!(name, help);
        }
    }
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    install().map(|h| h.render()).unwrap_or_default()
}

/// Serves `GET /metrics` on `addr` until `shutdown`.
pub async fn serve(addr: SocketAddr, shutdown: Shutdown) -> std::io::Result<SocketAddr> {
    install();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new().route("/metrics", axum::routing::get(|| async { render() }));
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
        if let Err(error) = served {
            tracing::warn!(%error, "metrics listener stopped");
        }
    });
    tracing::info!(addr = %local, "metrics listening on /metrics");
    Ok(local)
}

/// Counts and times every gRPC call by method and status code.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// The service of [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            // Errors are trailers-only responses: the status is in the headers.
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(|| "0".to_owned(), str::to_owned),
                Err(_) => "transport".to_owned(),
            };
            metrics::counter!("grpc_requests_total", "method" => method.clone(), "code" => code).increment(1);
            metrics::histogram!("grpc_request_duration_seconds", "method" => method)
                .record(started.elapsed().as_secs_f64());
            response
        })
    }
}
