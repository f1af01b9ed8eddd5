//! The REST gateway: serves the REST contract (docs/API.md) over axum,
//! authenticates bearer JWTs, and calls booking-service and payment-service
//! over gRPC. It holds no state of its own.
//!
//! | path | what it holds |
//! |---|---|
//! | `app.rs` | router and its layers (CORS, problem+json, request id, access log), start-up |
//! | `state.rs` | what every handler and middleware shares |
//! | `middleware.rs` | the gateway's own layer: problem+json, metrics per route and status, the panic guard, admission, the in-flight line and timeouts, in one boxed future |
//! | `admit.rs` | before a request takes a slot: its body within a time and size limit, its user's rate |
//! | `auth.rs` | the `AuthUser` extractor over the shared token verifier |
//! | `routes/` | one module per resource of the contract, the seat stream, the box-office page |
//! | `queue_joins.rs` | waiting-room joins sent to the booking-service together (`JoinQueueMany`), each with its own token |
//! | `queue_watch.rs` | the place streams of a performance's viewers on one `WatchQueuePlaces` call, each with its own token |
//! | `upstream.rs` | an HTTP request's token, request id, trace context and Idempotency-Key on its gRPC calls |
//! | `error.rs` | the JSON error shape; gRPC → HTTP status, once |
//! | `json.rs` | a JSON extractor whose rejections are 400s naming the problem |
//! | `rate_limit.rs` | per-user token buckets on the writes (429 + `Retry-After`) |
//! | `seat_maps.rs` | current seat maps: concurrent readers share loads that began after they arrived; the gateway's own credential |
//! | `seat_watch.rs` | one watcher per watched performance, its changes fanned out to every viewer; stream caps |
//! | `serve.rs` | the HTTP/1.1 server loop: header read timeout, graceful shutdown |
//! | `path_id.rs` | ids from the URL path, checked (length, no control characters) before any call |
//! | `openapi.rs` | the OpenAPI 3.1 document at `/openapi.json` |

pub mod admit;
pub mod app;
pub mod auth;
pub mod config;
pub mod cors;
pub mod error;
pub mod json;
pub mod middleware;
pub mod openapi;
pub mod path_id;
pub mod problem;
pub mod queue_joins;
pub mod queue_watch;
pub mod rate_limit;
pub mod routes;
pub mod seat_maps;
pub mod seat_watch;
pub mod serve;
pub mod state;
pub mod upstream;

pub use app::GatewayApp;
pub use config::{GatewayArgs, GatewaySettings};
pub use state::AppState;

/// Runs the gateway until SIGTERM or Ctrl-C, then drains.
pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let shutdown = edge::shutdown::on_signal(args.lifecycle.bound());
    edge::metrics::serve(args.metrics.metrics_addr, shutdown.clone()).await?;
    let app = GatewayApp::build(&args.gateway, &shutdown).await?;
    app.run(shutdown, args.lifecycle.drain()).await
}
