//! The router and the running gateway: `GatewayApp::build` binds the
//! address (port 0 in tests) and prepares lazy gRPC channels; `run` serves
//! until shutdown, failing readiness first.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    extract::DefaultBodyLimit,
    http::{HeaderName, Request},
    routing::{get, post, put},
    Router,
};
use edge::shutdown::Shutdown;
use proto::{
    booking::booking_service_client::BookingServiceClient, payment::payment_service_client::PaymentServiceClient,
};
use tonic::transport::Channel;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
    LatencyUnit,
};
use tracing::Level;

use crate::{
    config::GatewaySettings,
    error::ApiError,
    middleware::route_labels,
    routes::{bookings, box_office, catalog, health, payments, performances, seat_stream, waiting_room},
    state::AppState,
};

/// The largest gRPC answer the gateway reads (a 100,000-seat map).
const SEAT_MAP_MAX_BYTES: usize = 32 * 1024 * 1024;

/// A built, not yet running, gateway.
pub struct GatewayApp {
    state: Arc<AppState>,
    router: Router,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    serve: crate::serve::ServeSettings,
}

fn channel(tls: &edge::tls::GrpcTlsSettings, url: &str, name: &str) -> anyhow::Result<Channel> {
    Ok(tls
        .endpoint(name, url)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        // Everyone's calls share this connection: a window sized for that
        // fan-in (h2 ends a connection whose unread small frames exceed
        // half its window), as the services' servers have.
        .initial_connection_window_size(16 << 20)
        .initial_stream_window_size(1 << 20)
        .connect_lazy())
}

impl GatewayApp {
    /// Binds the address and wires the clients.
    pub async fn build(settings: &GatewaySettings, shutdown: &Shutdown) -> anyhow::Result<Self> {
        edge::metrics::install();
        let auth = settings.security.auth.verifier().await?;
        let tls = &settings.security.grpc_tls;
        let booking_channel = channel(tls, &settings.booking_grpc_url, "BOOKING_GRPC_URL")?;
        let payment_channel = channel(tls, &settings.payment_grpc_url, "PAYMENT_GRPC_URL")?;
        // Series alerts and the dashboard watch start at zero.
        for counter in [
            "http_requests_queued_total",
            "http_requests_shed_total",
            "http_requests_timed_out_total",
            "http_requests_rate_limited_total",
            "http_requests_body_timed_out_total",
        ] {
            metrics::counter!(counter).increment(0);
        }
        // Shown from the start; added to, not reset (a second gateway in
        // one process, as in tests, counts on top of the first).
        for gauge in ["seat_streams_open", "seat_stream_watchers", "queue_streams_open", "queue_stream_calls"] {
            metrics::gauge!(gauge).increment(0.0);
        }
        // The largest seat map (100,000 seats) is a few MiB.
        let booking = BookingServiceClient::new(booking_channel.clone()).max_decoding_message_size(SEAT_MAP_MAX_BYTES);
        let credential = crate::seat_maps::ServiceCredential::from_settings(
            &settings.security.auth,
            settings.gateway_service_token.as_ref().map(|t| t.0.as_str()),
        );
        let seat_maps = Arc::new(crate::seat_maps::SeatMaps::new(booking.clone(), credential));
        let edge = &settings.edge;
        let seat_watch = Arc::new(crate::seat_watch::SeatWatch::new(
            seat_maps.clone(),
            Duration::from_millis(edge.gateway_seat_stream_every_ms),
            edge.gateway_max_streams as usize,
            edge.gateway_max_streams_per_user as usize,
            shutdown.clone(),
        ));
        let cors = crate::cors::layer(&settings.cors.gateway_cors_origins, settings.dev_tokens)?;
        let queue_joins = crate::queue_joins::QueueJoins::new(booking.clone());
        let queue_watch = crate::queue_watch::QueueWatch::new(booking.clone(), shutdown.clone());
        let state = Arc::new(AppState {
            booking,
            queue_joins,
            queue_watch,
            payment: PaymentServiceClient::new(payment_channel.clone()),
            booking_channel,
            payment_channel,
            auth,
            shutting_down: shutdown.clone(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(settings.edge.gateway_max_in_flight as usize)),
            request_timeout: Duration::from_millis(settings.edge.gateway_request_timeout_ms),
            queue_wait: Duration::from_millis(settings.edge.gateway_queue_wait_ms),
            rate_limit: crate::rate_limit::UserRateLimit::new(
                settings.edge.gateway_user_rate_per_sec,
                settings.edge.gateway_user_burst,
            ),
            body_read_timeout: Duration::from_millis(edge.gateway_body_read_timeout_ms),
            seat_maps,
            seat_watch,
            read_your_writes_ms: settings.edge.gateway_read_your_writes_ms,
            dev_token_secret: settings.dev_tokens.then(|| settings.security.auth.jwt_secret.clone()).flatten(),
            cors,
            admission_key: settings.security.auth.admission_key(),
        });
        let listener = tokio::net::TcpListener::bind(settings.gateway_addr)
            .await
            .with_context(|| format!("binding GATEWAY_ADDR {}", settings.gateway_addr))?;
        let addr = listener.local_addr()?;
        let serve = crate::serve::ServeSettings {
            header_read_timeout: Duration::from_millis(settings.edge.gateway_header_read_timeout_ms),
            http2_max_streams: settings.edge.gateway_http2_max_streams,
        };
        Ok(Self { router: router(state.clone()), state, listener, addr, serve })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The router, to drive requests in-process (`examples/request_cost.rs`).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves until `shutdown`; in-flight requests finish first.
    /// `drain` is how long the listener stays open after `/readyz` started failing.
    pub async fn run(self, shutdown: Shutdown, drain: Duration) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr, "gateway listening (REST; docs at /openapi.json)");
        let state = self.state.clone();
        let forgetting = shutdown.clone();
        tokio::spawn(async move {
            while edge::shutdown::sleep_or_shutdown(crate::rate_limit::FORGET_EVERY, &forgetting).await {
                state.rate_limit.forget_idle();
            }
        });
        crate::serve::serve(self.listener, self.router, self.serve, async move {
            shutdown.cancelled().await;
            tokio::time::sleep(drain).await;
        })
        .await;
        Ok(())
    }
}

/// The REST router of the contract.
pub fn router(state: Arc<AppState>) -> Router {
    let request_id = HeaderName::from_static(edge::wire::REQUEST_ID);
    // The dev-token route exists only in `ticketing dev`.
    let dev = match state.dev_token_secret {
        Some(_) => Router::new().route("/dev/token", post(box_office::dev_token)),
        None => Router::new(),
    };
    Router::new()
        .route("/", get(box_office::box_office))
        .route("/performances/{id}/seats/stream", get(seat_stream::seat_stream))
        .route("/performances/{id}/queue/stream", get(waiting_room::queue_stream))
        .merge(dev)
        .route("/bookings", post(bookings::create_booking))
        .route("/bookings/my", get(bookings::my_bookings))
        .route("/bookings/{id}", get(bookings::get_booking).delete(bookings::cancel_booking))
        .route("/payments/execute", post(payments::execute_payment))
        .route("/occupiedSeats/{doc_id}", get(catalog::occupied_seat))
        .route(
            "/performances",
            get(performances::list_performances)
                .post(catalog::register_performance)
                .layer(DefaultBodyLimit::max(crate::admit::PERFORMANCE_BODY_LIMIT)),
        )
        .route("/performances/{id}", get(performances::get_performance))
        .route(
            "/performances/{id}/onsale",
            put(waiting_room::set_up_onsale).get(waiting_room::get_onsale).delete(waiting_room::close_onsale),
        )
        .route("/performances/{id}/queue", post(waiting_room::join_queue).get(waiting_room::get_queue_place))
        .route("/performances/{id}/seats", get(catalog::seat_map))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .external_url_unchecked("/openapi.json", crate::openapi::document()),
        )
        .fallback(|| async { ApiError::not_found("Not found.") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.")
        })
        .with_state(state.clone())
        // Every layer at once: each `Router::layer` call boxes every
        // request's future once more (`middleware.rs`). Inside the router, so
        // the route template is known; outermost first.
        .layer(
            tower::ServiceBuilder::new()
                // A preflight is answered before anything else looks at it.
                .option_layer(state.cors.clone())
                .map_response(axum_body)
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|request: &Request<_>| {
                            let id = request
                                .headers()
                                .get(edge::wire::REQUEST_ID)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-");
                            // The span is named after the route template, never
                            // after the raw path.
                            let (method, route) = route_labels(request);
                            let span = tracing::info_span!(
                                "http",
                                otel.name = %format_args!("{method} {route}"),
                                otel.kind = "server",
                                method = %request.method(),
                                route = %route,
                                path = %request.uri().path(),
                                request_id = %id,
                                trace_id = tracing::field::Empty,
                            );
                            edge::trace_context::adopt(&span, edge::trace_context::from_headers(request.headers()));
                            span
                        })
                        // One access-log line per request: status and latency.
                        .on_response(DefaultOnResponse::new().level(Level::INFO).latency_unit(LatencyUnit::Micros)),
                )
                // Problems, counted and timed, the panic guard, admitted
                // (body, rate), then the in-flight line.
                .layer(crate::middleware::EdgeLayer::new(state))
                .layer(DefaultBodyLimit::max(crate::admit::BODY_LIMIT)),
        )
}

/// A response with axum's body, as CORS needs below it.
fn axum_body<B>(response: axum::http::Response<B>) -> axum::response::Response
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    response.map(axum::body::Body::new)
}
