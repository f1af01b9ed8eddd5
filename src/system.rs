//! The running system: the three components started in one process (what
//! `ticketing dev`, `ticketing bench` and the end-to-end tests run), and
//! the Kafka broker it uses: the configured one, or an embedded one.

use std::path::PathBuf;

use anyhow::Context;
use booking_service::BookingApp;
use edge::shutdown;
use edge::shutdown::Shutdown;
use gateway::{GatewayApp, GatewaySettings};
use messaging::config::KafkaArgs;
use messaging::kafka::EmbeddedKafka;
use payment_service::PaymentApp;

use crate::cli::DevArgs;

/// The Kafka broker a command runs against: `KAFKA_BROKERS` when set, else
/// an embedded one with the topics created (it is not `Send`: keep it on
/// the task that started it, for as long as the system runs).
pub struct Broker {
    _embedded: Option<EmbeddedKafka>,
    /// Its bootstrap servers.
    pub bootstrap: String,
}

impl Broker {
    /// True for the embedded broker: it started empty, whatever the
    /// databases remember of an earlier run.
    pub fn is_new(&self) -> bool {
        self._embedded.is_some()
    }
}

impl Broker {
    /// Uses `requested`, or starts an embedded broker with `kafka`'s topics.
    pub fn start(requested: Option<&str>, kafka: &KafkaArgs) -> anyhow::Result<Self> {
        if let Some(brokers) = requested.filter(|b| !b.trim().is_empty()) {
            return Ok(Self { _embedded: None, bootstrap: brokers.to_owned() });
        }
        let broker = EmbeddedKafka::start()?;
        broker.create_topics(&kafka.topics().all(), kafka.kafka_topic_partitions)?;
        tracing::info!(
            bootstrap = broker.bootstrap_servers(),
            "embedded Kafka broker listening (set KAFKA_BROKERS to use a real cluster)"
        );
        Ok(Self { bootstrap: broker.bootstrap_servers().to_owned(), _embedded: Some(broker) })
    }
}

/// Where `ticketing dev` keeps the HS256 secret it generated, for `ticketing token`.
pub fn dev_secret_path() -> PathBuf {
    std::env::temp_dir().join("ticketing-dev-jwt-secret")
}

/// Everything `ticketing dev` started, for tests that drive it in-process.
pub struct DevSystem {
    /// The gateway's address.
    pub gateway_addr: std::net::SocketAddr,
    /// The booking-service's gRPC address.
    pub booking_addr: std::net::SocketAddr,
    /// The payment-service's gRPC address.
    pub payment_addr: std::net::SocketAddr,
    /// Where `/metrics` of all three components is served.
    pub metrics_addr: std::net::SocketAddr,
    /// Stops everything.
    pub shutdown: Shutdown,
    /// The three servers.
    pub tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Builds and starts the three components against `brokers`.
pub async fn start_system(mut args: DevArgs, brokers: &str, shutdown: Shutdown) -> anyhow::Result<DevSystem> {
    // dev runs the simulated PSP unless told otherwise.
    args.payment.psp.get_or_insert(payment_service::config::PspKind::Simulated);
    let metrics_addr = edge::metrics::serve(args.service.metrics.metrics_addr, shutdown.clone()).await?;
    let booking = BookingApp::build(
        &args.service.database,
        &args.service.kafka,
        brokers,
        args.booking,
        args.service.policy.clone(),
        &args.service.security,
    )
    .await?
    .with_feed(args.service.feed);
    let booking_addr = booking.grpc_addr();
    let scheme = args.service.security.grpc_tls.scheme();
    let booking_url = format!("{scheme}://{}", loopback(booking_addr));
    let payment = PaymentApp::build(
        &args.service.database,
        &args.service.kafka,
        brokers,
        args.payment,
        args.service.policy,
        &booking_url,
        &args.service.security,
    )
    .await?
    .with_feed(args.service.feed);
    if args.fresh_broker {
        // The embedded broker starts empty: what the last run's broker held
        // is gone. Publish every event again and read the topics from the
        // start; consumers drop the repeats.
        for (pool, relay) in
            [(booking.pool(), booking_service::app::RELAY), (payment.pool(), payment_service::app::RELAY)]
        {
            messaging::outbox::publish_again_from_start(pool, relay).await?;
            messaging::inbox::dedupe::forget_offsets(pool).await?;
        }
        tracing::info!(
            "the embedded broker is new: every event is published to it again, consumers read it from the start"
        );
    }
    let payment_addr = payment.grpc_addr();
    let gateway_settings = GatewaySettings {
        gateway_addr: args.gateway_addr,
        booking_grpc_url: booking_url,
        payment_grpc_url: format!("{scheme}://{}", loopback(payment_addr)),
        security: args.service.security,
        edge: args.edge,
        cors: args.cors,
        // dev signs with its HS256 secret: the gateway mints its own token.
        gateway_service_token: None,
        dev_tokens: args.dev_tokens,
    };
    let gateway = GatewayApp::build(&gateway_settings, &shutdown).await?;
    let gateway_addr = gateway.addr();
    let drain = args.service.lifecycle.drain();
    let tasks = vec![
        tokio::spawn(booking.run(shutdown.clone(), drain)),
        tokio::spawn(payment.run(shutdown.clone(), drain)),
        tokio::spawn(gateway.run(shutdown.clone(), drain)),
    ];
    Ok(DevSystem { gateway_addr, booking_addr, payment_addr, metrics_addr, shutdown, tasks })
}

fn loopback(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// `ticketing dev`: the three components in one process until a signal.
pub async fn dev(mut args: DevArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal(args.service.lifecycle.bound());
    // Kept until `dev` returns: dropping it stops the private cluster.
    let _private_postgres = private_postgres(&mut args).await?;
    // The embedded broker is not Send; it lives on this task for the whole run.
    let broker = Broker::start(args.service.kafka.kafka_brokers.as_deref(), &args.service.kafka)?;
    let brokers = broker.bootstrap.clone();
    if !args.service.security.auth.has_keys() {
        let secret = uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
        write_dev_secret(&secret)?;
        tracing::warn!(
            path = %dev_secret_path().display(),
            "JWT_SECRET is unset: generated a dev secret; `ticketing token <userId>` signs with it. Set JWT_SECRET in production."
        );
        args.service.security.auth.jwt_secret = Some(secret);
    }
    // The box-office page may mint tokens for typed-in user names: dev only.
    args.dev_tokens = true;
    args.fresh_broker = broker.is_new();
    let system = start_system(args, &brokers, shutdown.clone()).await?;
    tracing::info!(
        gateway = %system.gateway_addr,
        booking_grpc = %system.booking_addr,
        payment_grpc = %system.payment_addr,
        metrics = %system.metrics_addr,
        kafka = %brokers,
        "ticketing dev is up: REST on the gateway, try `ticketing token user_123`"
    );
    let mut result = Ok(());
    for task in system.tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                shutdown.cancel();
                result = Err(error);
            }
            Err(error) => {
                shutdown.cancel();
                result = Err(anyhow::anyhow!("a component crashed: {error}"));
            }
        }
    }
    result
}

/// Starts `dev`'s own PostgreSQL when asked to, or when DATABASE_URL is
/// unset and nothing answers on the default address; points the system at
/// it. An explicit DATABASE_URL is used as given, never replaced.
async fn private_postgres(args: &mut DevArgs) -> anyhow::Result<Option<crate::private_postgres::PrivatePostgres>> {
    use crate::private_postgres::PrivatePostgres;
    let database = &mut args.service.database;
    if database.database_url.is_some() {
        return Ok(None);
    }
    if !args.private_postgres && crate::private_postgres::answers(database.url()).await {
        return Ok(None);
    }
    if !args.private_postgres {
        tracing::info!(url = database.url(), "no PostgreSQL answers at the default address; starting a private one");
    }
    let data = args.private_postgres_dir.clone().unwrap_or_else(PrivatePostgres::default_data_dir);
    let pg = tokio::task::spawn_blocking(move || PrivatePostgres::start(&data))
        .await
        .map_err(|e| anyhow::anyhow!("starting the private PostgreSQL: {e}"))??;
    tracing::info!(
        data = %pg.data_dir().display(),
        url = %pg.url(),
        "private PostgreSQL is up (stopped when dev exits; its data stays for the next run)"
    );
    database.database_url = Some(pg.url());
    Ok(Some(pg))
}

/// Writes the dev secret into a file only its owner can read, from the
/// moment it exists (an older file is replaced, never written in place).
fn write_dev_secret(secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let path = dev_secret_path();
    let _ = std::fs::remove_file(&path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(secret.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
