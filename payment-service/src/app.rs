//! Start-up and the running payment-service: `PaymentApp::build` prepares
//! the database, topics and a bound gRPC listener; `run` serves until
//! shutdown with the outbox relay and the booking-event consumer beside it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use agreements::PaymentPolicy;
use anyhow::Context;
use edge::auth::Verifier;
use edge::config::SecurityArgs;
use edge::shutdown::Shutdown;
use messaging::config::KafkaArgs;
use messaging::kafka;
use messaging::outbox;
use messaging::topics;
use proto::{
    booking::booking_service_client::BookingServiceClient, payment::payment_service_server::PaymentServiceServer,
};
use runtime::config::DatabaseArgs;
use runtime::db;
use runtime::grpc;
use runtime::service;
use sqlx::PgPool;

use crate::{
    config::PaymentSettings,
    consumer::BookingEventHandler,
    domain::intent::PaymentIntent,
    grpc::PaymentGrpc,
    psp::SimulatedPsp,
    publish::PaymentEventMapper,
    store,
    use_cases::{Payments, Reconciliation},
};

/// The name of this service's outbox relay (its checkpoint).
pub const RELAY: &str = "payment-outbox";

/// How the refund worker runs.
struct RefundWorker {
    max_attempts: i32,
    interval: Duration,
}

/// Makes pending refunds until `shutdown`.
async fn run_refunds(payments: Payments, worker: RefundWorker, shutdown: Shutdown) {
    // Series alerts watch start at zero, so `increase` sees the first one.
    for outcome in ["refunded", "attempt_failed", "needs_review"] {
        metrics::counter!("refunds_total", "outcome" => outcome).increment(0);
    }
    loop {
        if let Err(error) = payments.refund_due(worker.max_attempts).await {
            tracing::warn!(%error, "refund pass failed");
        }
        if !edge::shutdown::sleep_or_shutdown(worker.interval, &shutdown).await {
            return;
        }
    }
}

/// Settles charge attempts left without an outcome (a crash, a lost PSP
/// answer) at start and then every second, until `shutdown`.
async fn run_reconciler(payments: Payments, shutdown: Shutdown) {
    loop {
        match payments.reconcile().await {
            Ok(0) => {}
            Ok(settled) => tracing::info!(settled, "reconciler settled charge attempts with the PSP"),
            Err(error) => tracing::warn!(%error, "reconciler pass failed"),
        }
        if !edge::shutdown::sleep_or_shutdown(Duration::from_secs(1), &shutdown).await {
            return;
        }
    }
}

/// A built, not yet running, payment-service.
pub struct PaymentApp {
    refunds: RefundWorker,
    pool: PgPool,
    /// The pool of the work beside requests (relay, consumer, sweeper, ...).
    background: PgPool,
    payments: Payments,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    brokers: String,
    topics: topics::Topics,
    kafka: KafkaArgs,
    outbox_stall: Duration,
    verifier: Arc<Verifier>,
    server: tonic::transport::Server,
    intent_waiters: Arc<runtime::waiters::Waiters>,
    feed: runtime::feed::FeedSettings,
}

impl PaymentApp {
    /// Connects (creating and migrating the database), creates the topics
    /// and binds the gRPC address. The booking-service (at
    /// `booking_grpc_url`) is reached lazily. Token and TLS settings are
    /// checked first: a bad one stops the start.
    pub async fn build(
        database: &DatabaseArgs,
        kafka_args: &KafkaArgs,
        brokers: &str,
        settings: PaymentSettings,
        policy: PaymentPolicy,
        booking_grpc_url: &str,
        security: &SecurityArgs,
    ) -> anyhow::Result<Self> {
        // Before anything is touched: which provider takes the money.
        let Some(psp_kind) = settings.psp else {
            anyhow::bail!(
                "PSP is not set: name the payment service provider. PSP=simulated runs the simulated one, \
                 which moves no money (ticketing dev uses it; never in production)"
            );
        };
        let verifier = security.auth.verifier().await?;
        let server = security.grpc_tls.server()?;
        let booking_endpoint = security.grpc_tls.endpoint("BOOKING_GRPC_URL", booking_grpc_url)?;
        let pool = db::open_service_db(database, &settings.payment_database, &store::MIGRATIONS)
            .await
            .context("preparing the payment database")?;
        kafka::ensure_topics(
            brokers,
            &kafka_args.topics().all(),
            kafka_args.kafka_topic_partitions,
            kafka_args.kafka_replication_factor,
        )
        .await
        .with_context(|| format!("creating Kafka topics on KAFKA_BROKERS {brokers}"))?;
        let channel =
            booking_endpoint.connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(10)).connect_lazy();
        let intent_waiters = Arc::new(runtime::waiters::Waiters::default());
        let psp: Arc<dyn crate::psp::Psp> = match psp_kind {
            crate::config::PspKind::Simulated => {
                tracing::warn!("PSP=simulated: payments go to the simulated provider and no money moves");
                Arc::new(SimulatedPsp::new(
                    pool.clone(),
                    Duration::from_millis(settings.mock_pg_timeout_ms),
                    Duration::from_millis(settings.mock_pg_latency_ms),
                    settings.mock_pg_refund_failures,
                ))
            }
        };
        let payments = Payments::new(
            pool.clone(),
            psp,
            BookingServiceClient::new(channel),
            policy,
            Duration::from_millis(settings.intent_wait_ms),
            Reconciliation { grace: Duration::from_secs(settings.payment_reconcile_after_secs) },
            intent_waiters.clone(),
        );
        let (listener, addr) = grpc::bind(settings.payment_grpc_addr).await?;
        let refunds = RefundWorker {
            max_attempts: i32::try_from(settings.refund_max_attempts).unwrap_or(i32::MAX),
            interval: Duration::from_millis(settings.refund_interval_ms),
        };
        Ok(Self {
            background: db::background_pool(&pool, database.database_background_connections),
            refunds,
            pool,
            payments,
            listener,
            addr,
            brokers: brokers.to_owned(),
            topics: kafka_args.topics(),
            kafka: kafka_args.clone(),
            outbox_stall: Duration::from_secs(kafka_args.outbox_stall_secs),
            verifier,
            server,
            intent_waiters,
            feed: runtime::feed::FeedSettings::default(),
        })
    }

    /// Serves the event feed with `feed`.
    pub fn with_feed(mut self, feed: runtime::feed::FeedSettings) -> Self {
        self.feed = feed;
        self
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The database pool (tests inspect it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Serves until `shutdown`, then drains the background tasks.
    /// `drain` is how long gRPC keeps serving after readiness failed.
    pub async fn run(self, shutdown: Shutdown, drain: Duration) -> anyhow::Result<()> {
        let consumer = self.kafka.consumer(&self.topics.group("payment-service"), &[&self.topics.booking]);
        let background = self.background.clone();
        let (health, mut tasks) = service::start(
            service::Plumbing {
                pool: background.clone(),
                brokers: self.brokers.clone(),
                mapper: PaymentEventMapper { topic: self.topics.payment.clone() },
                relay: outbox::RelaySettings::new(RELAY, topics::PAYMENT_SOURCE),
                handler: BookingEventHandler { intent_waiters: self.intent_waiters.clone() },
                consumer,
                outbox_stall: self.outbox_stall,
                health_service: <PaymentServiceServer<PaymentGrpc> as tonic::server::NamedService>::NAME.to_owned(),
            },
            &shutdown,
        )?;
        tasks.push(tokio::spawn(run_refunds(self.payments.clone(), self.refunds, shutdown.clone())));
        tasks.push(tokio::spawn(run_reconciler(self.payments.clone(), shutdown.clone())));
        let pool = background.clone();
        let find = move |ids: Vec<String>| {
            let pool = pool.clone();
            async move { kernel::aggregate::existing::<PaymentIntent>(&pool, &ids).await }
        };
        tasks.push(tokio::spawn(self.intent_waiters.clone().watch(find, shutdown.clone())));
        let feed = runtime::feed::Feed::new(
            self.pool.clone(),
            Arc::new(PaymentEventMapper { topic: self.topics.payment.clone() }),
            self.verifier.clone(),
            self.feed,
            shutdown.clone(),
        );
        let router = service::grpc_router(self.server, health, proto::FILE_DESCRIPTOR_SET)?
            .add_service(PaymentServiceServer::new(PaymentGrpc::new(self.payments.clone(), self.verifier)))
            .add_service(runtime::feed::EventFeedServer::new(feed));
        service::serve_grpc(
            router,
            self.listener,
            tasks,
            &[&self.pool, &background],
            shutdown,
            drain,
            "payment-service",
        )
        .await
    }
}
