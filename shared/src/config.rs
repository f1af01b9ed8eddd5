//! Settings every service shares, as clap argument groups with env-var
//! twins. Each binary flattens these into its own typed config struct.

use std::time::Duration;

use clap::Args;

/// Where PostgreSQL is and which database this service owns.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL server URL; the service creates its own database on it if
    /// missing [default: postgres://postgres@localhost:5432/postgres]. Unset,
    /// `ticketing dev` starts a private PostgreSQL when nothing answers there.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Maximum connections in this service's pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
}

/// The server `DatabaseArgs` names when `DATABASE_URL` is unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/postgres";

impl DatabaseArgs {
    /// The PostgreSQL server URL (the default when none was given).
    pub fn url(&self) -> &str {
        self.database_url.as_deref().unwrap_or(DEFAULT_DATABASE_URL)
    }
}

/// Where Kafka is.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Comma-separated Kafka bootstrap servers. `ticketing dev` starts an
    /// embedded broker when this is unset.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Partitions of each topic this service creates at start-up.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 3)]
    pub kafka_topic_partitions: i32,
    /// Replication factor of each topic this service creates.
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    pub kafka_replication_factor: i32,
    /// Readiness fails while a committed event has waited this long (s) to be published.
    #[arg(long, env = "OUTBOX_STALL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub outbox_stall_secs: u64,
    /// Prefix for every topic and consumer group (to share a cluster between environments).
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "")]
    pub kafka_topic_prefix: String,
}

impl KafkaArgs {
    /// The topic names under this configuration's prefix.
    pub fn topics(&self) -> crate::topics::Topics {
        crate::topics::Topics::new(&self.kafka_topic_prefix)
    }

    /// Settings of a consumer in `group` of `topics` under this configuration.
    pub fn consumer(&self, group: &str, topics: &[&str]) -> crate::inbox::ConsumerSettings {
        crate::inbox::ConsumerSettings::new(group, topics)
    }
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
}

/// Where a service serves its Prometheus metrics.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Listen address of `GET /metrics` (the gateway also serves it on its own port).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9100")]
    pub metrics_addr: std::net::SocketAddr,
}

/// Payment rules both services apply (they must agree, so they are set once).
#[derive(Debug, Clone, Args)]
pub struct PaymentPolicy {
    /// Client-error declines after which a booking fails and its intent stops being payable.
    #[arg(long, env = "MAX_PAYMENT_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_payment_attempts: u32,
    /// No charge starts this close (seconds) to the end of a seat hold.
    #[arg(long, env = "PAYMENT_SAFETY_MARGIN_SECS", default_value_t = 5)]
    pub payment_safety_margin_secs: u32,
}

impl PaymentPolicy {
    /// `max_payment_attempts` as the domain's integer type.
    pub fn max_attempts(&self) -> i32 {
        i32::try_from(self.max_payment_attempts).unwrap_or(i32::MAX)
    }

    /// The safety margin as a duration.
    pub fn safety_margin(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::from(self.payment_safety_margin_secs))
    }
}

/// Parses durations such as `500ms`, `30s`, `10m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration such as 30s, 10m or 1h"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(value)),
        "" | "s" => value,
        "m" => value * 60,
        "h" => value * 3600,
        "d" => value * 86_400,
        _ => return Err(format!("unknown unit `{unit}` in `{text}` (use ms, s, m, h or d)")),
    };
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("42"), Ok(Duration::from_secs(42)));
        assert!(parse_duration("1 fortnight").is_err());
        assert!(parse_duration("").is_err());
    }
}

/// Who may call, and over what: bearer-token verification (the gateway and
/// both services verify with the same settings) and gRPC TLS.
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    #[command(flatten)]
    pub auth: crate::auth::AuthSettings,
    #[command(flatten)]
    pub grpc_tls: crate::grpc::tls::GrpcTlsSettings,
}
