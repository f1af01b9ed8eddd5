//! The HTTP server loop: HTTP/1.1, and HTTP/2 with prior knowledge (h2c),
//! which a load balancer in front uses to carry many people's requests
//! and streams over a few connections. `axum::serve` sets no timer, so
//! hyper's header read timeout never fires there and a client that trickles
//! its headers holds a connection (and a task) for as long as it likes.
//! This loop serves the same router with the timeout armed, and shuts down
//! gracefully: the listener closes first, then in-flight requests finish.

use std::{future::Future, time::Duration};

use axum::{body::Body, Router};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ServeSettings {
    /// An HTTP/1.1 connection whose request headers take longer than this
    /// to arrive is closed.
    pub header_read_timeout: Duration,
    /// Requests and streams at once on one HTTP/2 connection.
    pub http2_max_streams: u32,
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits for
/// open requests.
pub async fn serve(listener: TcpListener, router: Router, settings: ServeSettings, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1().timer(TokioTimer::new()).header_read_timeout(settings.header_read_timeout).keep_alive(true);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_streams)
        // A peer that stops answering pings is gone: its streams end.
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    let http = std::sync::Arc::new(http);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service =
            TowerToHyperService::new(router.clone().map_request(|r: hyper::Request<Incoming>| r.map(Body::new)));
        let (http, watcher) = (http.clone(), graceful.watcher());
        tokio::spawn(async move {
            if let Err(error) = watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
