//! The event plumbing every service runs beside its gRPC server: the outbox
//! relay, the inbox consumer, the idempotency-key purge and the readiness
//! watch behind gRPC health. One wiring, so both services start and stop
//! the same way.

use std::time::Duration;

use tokio::task::JoinHandle;
use tonic_health::pb::health_server::{Health, HealthServer};

use edge::shutdown::Shutdown;
use messaging::{
    inbox::{self, ConsumerSettings, EventHandler},
    outbox::{self, IntegrationMapper, RelaySettings},
};

/// What a service publishes, consumes and reports health under.
pub struct Plumbing<M, H> {
    /// The service database's background pool (`db::background_pool`).
    pub pool: sqlx::PgPool,
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Maps stored events to the public topic.
    pub mapper: M,
    /// The relay's name and CloudEvents source.
    pub relay: RelaySettings,
    /// Handles the other service's events.
    pub handler: H,
    /// Consumer group, topics and static membership.
    pub consumer: ConsumerSettings,
    /// The gRPC service name whose health follows readiness.
    pub health_service: String,
    /// Readiness fails while a committed event waits longer than this to be published.
    pub outbox_stall: Duration,
}

/// Spawns the relay, consumer, purge and readiness tasks; returns the gRPC
/// health service to register and the tasks to await after shutdown.
pub fn start<M: IntegrationMapper, H: EventHandler>(
    plumbing: Plumbing<M, H>,
    shutdown: &Shutdown,
) -> anyhow::Result<(HealthServer<impl Health>, Vec<JoinHandle<()>>)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let pool = plumbing.pool;
    let signals = messaging::Signals::default();
    let checks = crate::health::ReadinessChecks {
        relay: plumbing.relay.name.clone(),
        outbox_stall: plumbing.outbox_stall,
        signals: signals.clone(),
    };
    let leading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = vec![
        tokio::spawn(outbox::run_relay(
            pool.clone(),
            outbox::RelayProducer::new(&plumbing.brokers),
            plumbing.mapper,
            plumbing.relay,
            leading.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(kernel::global_log::tell_other_processes(pool.clone(), leading, shutdown.clone())),
        tokio::spawn(inbox::run_consumer(
            pool.clone(),
            plumbing.brokers.clone(),
            plumbing.handler,
            plumbing.consumer,
            signals,
            shutdown.clone(),
        )),
        tokio::spawn(crate::idempotency::run_purge(pool.clone(), shutdown.clone())),
        tokio::spawn(crate::health::watch(
            reporter,
            vec![plumbing.health_service],
            pool,
            plumbing.brokers,
            checks,
            Duration::from_secs(2),
            shutdown.clone(),
        )),
    ];
    Ok((health, tasks))
}

/// Resolves `drain` after `shutdown`: readiness already fails, and the
/// server keeps answering while callers move away.
pub async fn drained(shutdown: Shutdown, drain: Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(drain).await;
}

/// The gRPC server every service runs: its TLS settings, a server span per
/// call, gRPC metrics, health and reflection; each service adds its API.
pub type GrpcRouter = tonic::transport::server::Router<
    tower::layer::util::Stack<edge::metrics::GrpcMetricsLayer, tower::layer::util::Identity>,
>;

/// The HTTP/2 connection window of a service's gRPC server (16 MiB).
const CONNECTION_WINDOW: u32 = 16 << 20;
/// The HTTP/2 window of each of its streams (1 MiB).
const STREAM_WINDOW: u32 = 1 << 20;

/// `server` (TLS configured) with tracing, metrics, `health` and reflection
/// (v1 and v1alpha) over `descriptors`.
pub fn grpc_router(
    server: tonic::transport::Server,
    health: HealthServer<impl Health>,
    descriptors: &'static [u8],
) -> Result<GrpcRouter, crate::grpc::ServeError> {
    // A gateway carries many people's calls over one connection: at an
    // on-sale, tens of thousands of small requests arrive before the service
    // reads them. h2 closes a connection whose unread small DATA frames
    // exceed half its connection window (a defence against frame floods),
    // so the window is sized for that fan-in, not left at 64 KiB.
    let mut server = server
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .trace_fn(edge::trace_context::grpc_server_span)
        .layer(edge::metrics::GrpcMetricsLayer);
    let (reflection_v1, reflection_v1alpha) = crate::grpc::reflection(descriptors)?;
    Ok(server.add_service(health).add_service(reflection_v1).add_service(reflection_v1alpha))
}

/// Serves `router` on `listener` until `shutdown` and then `drain`, stops
/// the service's background `tasks`, and closes its `pools`; `name` labels
/// the log line and the error.
pub async fn serve_grpc(
    router: GrpcRouter,
    listener: tokio::net::TcpListener,
    tasks: Vec<JoinHandle<()>>,
    pools: &[&sqlx::PgPool],
    shutdown: Shutdown,
    drain: Duration,
    name: &'static str,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "{name} gRPC listening");
    }
    let served = router
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            drained(shutdown.clone(), drain),
        )
        .await;
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    for pool in pools {
        pool.close().await;
    }
    served.with_context(|| format!("{name} gRPC server"))
}
