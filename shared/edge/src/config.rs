//! Settings every process has, as clap argument groups with env-var twins:
//! who may call (tokens, gRPC TLS), where metrics are served, how it stops.

use clap::Args;

/// Who may call, and over what: bearer-token verification (the gateway and
/// both services verify with the same settings) and gRPC TLS.
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    #[command(flatten)]
    pub auth: crate::auth::AuthSettings,
    #[command(flatten)]
    pub grpc_tls: crate::tls::GrpcTlsSettings,
}

/// How a process stops on SIGTERM: readiness fails at once, in-flight work
/// drains for `shutdown_drain_secs`, and the process exits within
/// `shutdown_timeout_secs` whatever is still running.
#[derive(Debug, Clone, Args)]
pub struct ShutdownArgs {
    /// Seconds between failing readiness and closing listeners (load balancers catch up).
    #[arg(long, env = "SHUTDOWN_DRAIN_SECS", default_value_t = 5)]
    pub shutdown_drain_secs: u64,
    /// Hard bound (seconds) on a shutdown after the drain.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
}

impl ShutdownArgs {
    /// The drain as a duration.
    pub fn drain(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shutdown_drain_secs)
    }

    /// The longest a shutdown may take from the signal: drain, then the bound.
    pub fn bound(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shutdown_drain_secs + self.shutdown_timeout_secs)
    }
}

/// Where a service serves its Prometheus metrics.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Listen address of `GET /metrics` (the gateway also serves it on its own port).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9100")]
    pub metrics_addr: std::net::SocketAddr,
}
