//! What the gateway's own layers and routing cost per request, without the
//! network: requests driven through the router in-process, each refused
//! 401 by the handler's token check, so every layer runs (in order: CORS,
//! request id, access span, problem+json, metrics, panic guard, admission,
//! the in-flight line, the body limit) and nothing calls a service. Run it
//! under `valgrind --tool=callgrind` for counts that do not depend on what
//! else the machine does.
//!
//! ```text
//! cargo run --release -p gateway --example request_cost
//! ```

use std::time::Instant;

use axum::{body::Body, http::Request};
use clap::Parser;
use tower::ServiceExt;

const REQUESTS: usize = 20_000;

#[derive(Parser)]
struct Settings {
    #[command(flatten)]
    gateway: gateway::GatewaySettings,
}

fn main() -> anyhow::Result<()> {
    let settings = Settings::parse_from([
        "request_cost",
        "--gateway-addr=127.0.0.1:0",
        "--jwt-secret=a-development-secret-of-at-least-32-bytes",
    ]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = edge::shutdown::Shutdown::new();
        let app = gateway::GatewayApp::build(&settings.gateway, &shutdown).await?;
        let router = app.router();
        for round in ["first", "second"] {
            let started = Instant::now();
            for n in 0..REQUESTS {
                let request = Request::post(format!("/performances/perf_{}/queue", n % 100))
                    .header("accept", "application/json")
                    .body(Body::empty())?;
                let response = router.clone().oneshot(request).await?;
                anyhow::ensure!(response.status() == 401, "expected 401, got {}", response.status());
                std::hint::black_box(axum::body::to_bytes(response.into_body(), 1 << 16).await?);
            }
            let per_request = started.elapsed().as_secs_f64() * 1e6 / REQUESTS as f64;
            println!("{round} {REQUESTS} requests: {per_request:.2} µs per request");
        }
        shutdown.cancel();
        Ok(())
    })
}
