//! The system as separate processes (`ticketing gateway`, `booking` and
//! `payment`, started from this very binary), so that each one's CPU and
//! memory are read on their own and the load generator's are not mixed in.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::ports::free_port;

/// Where the separate processes find what they share.
pub struct Shared<'a> {
    /// PostgreSQL server URL.
    pub database_url: &'a str,
    /// Kafka bootstrap servers.
    pub brokers: &'a str,
    /// The booking-service's database.
    pub booking_db: &'a str,
    /// The payment-service's database.
    pub payment_db: &'a str,
    /// Topic and group prefix.
    pub topic_prefix: &'a str,
    /// HS256 secret.
    pub secret: &'a str,
}

/// The three running processes.
pub struct Separate {
    children: Vec<(String, Child)>,
    /// `http://127.0.0.1:<port>` of the gateway.
    pub gateway: String,
    /// `http://127.0.0.1:<port>` of the booking-service's gRPC.
    pub booking_grpc: String,
    /// Where their logs are.
    pub logs: PathBuf,
    /// Each process's `/metrics` URL.
    metrics: Vec<(String, String)>,
}

impl Separate {
    /// Starts booking-service, payment-service and gateway and waits until
    /// the gateway is ready; `extra` env goes to every one of them.
    pub async fn start(shared: &Shared<'_>, extra: &[(&str, String)]) -> anyhow::Result<Self> {
        let (booking, payment, gateway) = (free_port()?, free_port()?, free_port()?);
        let logs = std::env::temp_dir().join(format!("ticketing-bench-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&logs)?;
        let exe = std::env::current_exe().context("finding this binary")?;
        let common: Vec<(&str, String)> = vec![
            ("DATABASE_URL", shared.database_url.to_owned()),
            ("BOOKING_DATABASE", shared.booking_db.to_owned()),
            ("PAYMENT_DATABASE", shared.payment_db.to_owned()),
            ("KAFKA_BROKERS", shared.brokers.to_owned()),
            ("KAFKA_TOPIC_PREFIX", shared.topic_prefix.to_owned()),
            ("JWT_SECRET", shared.secret.to_owned()),
            ("SHUTDOWN_DRAIN_SECS", "0".to_owned()),
            // The processes log warnings unless BENCH_RUST_LOG says otherwise.
            ("RUST_LOG", std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".to_owned())),
            ("PSP", "simulated".to_owned()),
            ("BOOKING_GRPC_ADDR", format!("127.0.0.1:{booking}")),
            ("PAYMENT_GRPC_ADDR", format!("127.0.0.1:{payment}")),
            ("BOOKING_GRPC_URL", format!("http://127.0.0.1:{booking}")),
            ("PAYMENT_GRPC_URL", format!("http://127.0.0.1:{payment}")),
            ("GATEWAY_ADDR", format!("127.0.0.1:{gateway}")),
        ];
        let mut children = Vec::new();
        let mut metrics = Vec::new();
        for name in ["booking", "payment", "gateway"] {
            let metrics_port = free_port()?;
            metrics.push((name.to_owned(), format!("http://127.0.0.1:{metrics_port}/metrics")));
            let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
            let child = Command::new(&exe)
                .arg(name)
                .envs(common.iter().map(|(k, v)| (*k, v.as_str())))
                .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
                .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
                .stdout(log.try_clone()?)
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("starting `ticketing {name}`"))?;
            children.push((name.to_owned(), child));
            if name == "booking" {
                // The payment-service asks the booking-service; let it bind first.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let system = Self {
            children,
            gateway: format!("http://127.0.0.1:{gateway}"),
            booking_grpc: format!("http://127.0.0.1:{booking}"),
            logs,
            metrics,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ready = client.get(format!("{}/readyz", system.gateway)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(system);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the system did not become ready; logs in {}",
                system.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The `/metrics` URL of process `name`.
    pub fn metrics_url(&self, name: &str) -> Option<String> {
        self.metrics.iter().find(|(n, _)| n == name).map(|(_, url)| url.clone())
    }

    /// Each process's name and pid.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.children.iter().map(|(name, child)| (name.clone(), child.id())).collect()
    }

    /// SIGTERM to each, then waits for them.
    pub fn stop(mut self) {
        for (_, child) in &self.children {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
    }
}

impl Drop for Separate {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
