//! The gateway's own middleware, as one layer: an error answer is rewritten
//! as a problem for a client that asks (`problem.rs`); each request is
//! counted and timed by method, route template and status; a panic is
//! answered 500 (and counted); each request is admitted (its whole body, its
//! user's rate: `admit.rs`); then it waits in the in-flight line and is
//! timed out.
//!
//! One layer rather than one `axum::middleware::from_fn` each: every
//! `from_fn` boxes the request's future, boxes a clone of the service
//! behind it and boxes that service's future again, and every
//! `Router::layer` call boxes once more. At 1.1 to 1.8 KB each, just above
//! glibc's per-thread cache, those boxes were the gateway's largest
//! allocations per request, and glibc's allocator the largest item of its
//! profile (docs/PERFORMANCE.md). Here
//! the steps are plain async functions in one future, boxed once.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, PoisonError, RwLock},
    task::{Context, Poll},
};

use axum::{
    extract::Request,
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
};
use tower::{Layer, Service, ServiceExt};

use crate::{error::ApiError, state::AppState};

/// The layer: apply it inside the router (`Router::layer`), so the matched
/// route is known.
#[derive(Clone)]
pub struct EdgeLayer {
    state: Arc<AppState>,
    metrics: Arc<HttpMetrics>,
}

impl EdgeLayer {
    /// The layer over the gateway's shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state, metrics: Arc::default() }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge { state: self.state.clone(), metrics: self.metrics.clone(), inner }
    }
}

/// The service [`EdgeLayer`] wraps around a route.
#[derive(Clone)]
pub struct Edge<S> {
    state: Arc<AppState>,
    metrics: Arc<HttpMetrics>,
    inner: S,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The clone that was made ready goes with this request (tower's rule).
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let (state, metrics) = (self.state.clone(), self.metrics.clone());
        Box::pin(async move {
            let response = crate::problem::negotiate(request, |request| {
                record_http_metrics(&metrics, request, |request| {
                    guard_panics(crate::admit::admit(&state, request, |request| {
                        shed_and_time_out(&state, request, |request| async move {
                            let Ok(response) = inner.oneshot(request).await;
                            response
                        })
                    }))
                })
            })
            .await;
            Ok(response)
        })
    }
}

/// A panic while a request is handled is answered 500 (and the process
/// goes on); the panic itself is reported by the panic hook.
async fn guard_panics(handled: impl Future<Output = Response>) -> Response {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(handled).catch_unwind().await {
        Ok(response) => response,
        Err(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error.").into_response(),
    }
}

/// Holds requests beyond the in-flight limit in line for up to the queue
/// wait, then sheds them (503, `Retry-After: 1`); answers 504 for a request
/// that outlives the timeout. Health and metrics
/// are exempt, so probes see the truth while the gateway sheds.
///
/// A stream's opening (a verified token, a seat map or a first place) is
/// work like any request and waits in the same line: at an on-sale, the
/// streams of people already placed do not overtake the joins of those
/// still arriving. The slot is given back once the stream's headers are
/// sent; an open stream holds none (it costs no work between its looks
/// and has caps of its own).
async fn shed_and_time_out<F, Fut>(state: &AppState, request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics") {
        return next(request).await;
    }
    let permit = match state.in_flight.clone().try_acquire_owned() {
        Ok(permit) => Ok(permit),
        Err(_) if state.queue_wait.is_zero() => Err(()),
        Err(_) => {
            metrics::counter!("http_requests_queued_total").increment(1);
            match tokio::time::timeout(state.queue_wait, state.in_flight.clone().acquire_owned()).await {
                Ok(Ok(permit)) => Ok(permit),
                _ => Err(()),
            }
        }
    };
    let Ok(_permit) = permit else {
        metrics::counter!("http_requests_shed_total").increment(1);
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "The service is busy; please retry shortly.")
            .retry_after(1)
            .into_response();
    };
    match tokio::time::timeout(state.request_timeout, next(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("http_requests_timed_out_total").increment(1);
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, "The request timed out.").into_response()
        }
    }
}

/// The method and route template of a routed request, for metric labels and
/// span names: never a raw path (ids would make them unbounded) and never
/// an unknown method.
pub(crate) fn route_labels<B>(request: &axum::http::Request<B>) -> (&'static str, &str) {
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = request.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |p| p.as_str());
    (method, route)
}

/// Counts and times every request by method, matched route and status.
async fn record_http_metrics<F, Fut>(metrics: &HttpMetrics, request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let (method, route) = route_labels(&request);
    let route = metrics.route(method, route);
    let started = std::time::Instant::now();
    let response = next(request).await;
    route.record(response.status(), started.elapsed());
    response
}

/// The metric handles of each method and route, made on first use: a
/// request then records without building label sets or strings.
#[derive(Default)]
pub(crate) struct HttpMetrics {
    routes: RwLock<HashMap<String, Vec<Arc<RouteMetrics>>>>,
}

impl HttpMetrics {
    fn route(&self, method: &'static str, route: &str) -> Arc<RouteMetrics> {
        let found = |routes: &HashMap<String, Vec<Arc<RouteMetrics>>>| {
            routes.get(route).and_then(|methods| methods.iter().find(|m| m.method == method).cloned())
        };
        if let Some(known) = found(&self.routes.read().unwrap_or_else(PoisonError::into_inner)) {
            return known;
        }
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = found(&routes) {
            return known;
        }
        let made = Arc::new(RouteMetrics::new(method, route));
        routes.entry(route.to_owned()).or_default().push(made.clone());
        made
    }
}

/// One method and route's handles; the counters per status as they occur.
struct RouteMetrics {
    method: &'static str,
    route: String,
    duration: metrics::Histogram,
    by_status: RwLock<Vec<(StatusCode, metrics::Counter)>>,
}

impl RouteMetrics {
    fn new(method: &'static str, route: &str) -> Self {
        let duration =
            metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route.to_owned());
        Self { method, route: route.to_owned(), duration, by_status: RwLock::default() }
    }

    fn record(&self, status: StatusCode, took: std::time::Duration) {
        self.duration.record(took.as_secs_f64());
        let known = self
            .by_status
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, c)| c.clone());
        let counter = known.unwrap_or_else(|| {
            let mut by_status = self.by_status.write().unwrap_or_else(PoisonError::into_inner);
            let counter = metrics::counter!("http_requests_total", "method" => self.method, "route" => self.route.clone(), "status" => status.as_u16().to_string());
            if !by_status.iter().any(|(s, _)| *s == status) {
                by_status.push((status, counter.clone()));
            }
            counter
        });
        counter.increment(1);
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::to_bytes, http::header};

    use super::*;

    async fn answer(accept: &str) -> (StatusCode, String, String) {
        let request = Request::builder().header(header::ACCEPT, accept).body(axum::body::Body::empty()).unwrap();
        let response = crate::problem::negotiate(request, |_| {
            guard_panics(async {
                if true {
                    panic!("a handler's bug");
                }
                StatusCode::OK.into_response()
            })
        })
        .await;
        let status = response.status();
        let kind = response.headers().get(header::CONTENT_TYPE).unwrap().to_str().unwrap().to_owned();
        let body = String::from_utf8(to_bytes(response.into_body(), 4096).await.unwrap().to_vec()).unwrap();
        (status, kind, body)
    }

    #[tokio::test]
    async fn a_panic_is_answered_500_in_the_shape_the_client_asked_for() {
        let (status, kind, body) = answer("application/json").await;
        assert_eq!((status, kind.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "application/json"));
        assert_eq!(body, r#"{"error":"Internal server error."}"#);
        let (status, kind, body) = answer("application/problem+json").await;
        assert_eq!((status, kind.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, crate::problem::PROBLEM_JSON));
        assert!(body.contains(r#""code":"internal_error""#), "{body}");
    }
}
