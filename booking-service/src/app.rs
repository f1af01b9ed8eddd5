//! Start-up and the running booking-service: `BookingApp::build` prepares
//! the database, topics and a bound gRPC listener (port 0 in tests), `run`
//! serves until shutdown with the outbox relay, the payment-event consumer
//! and the expiry sweeper beside it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use agreements::PaymentPolicy;
use anyhow::Context;
use edge::auth::Verifier;
use edge::config::SecurityArgs;
use edge::shutdown::sleep_or_shutdown;
use edge::shutdown::Shutdown;
use kernel::projection;
use messaging::config::KafkaArgs;
use messaging::kafka;
use messaging::outbox;
use messaging::topics;
use proto::booking::booking_service_server::BookingServiceServer;
use runtime::config::DatabaseArgs;
use runtime::db;
use runtime::grpc;
use runtime::service;
use sqlx::PgPool;

use crate::{
    config::BookingSettings,
    consumer::PaymentEventHandler,
    domain::booking::{self, Booking},
    grpc::BookingGrpc,
    publish::BookingEventMapper,
    store,
    store::views::BookingViews,
    use_cases::Bookings,
};

/// The name of this service's outbox relay (its checkpoint).
pub const RELAY: &str = "booking-outbox";

/// A built, not yet running, booking-service.
pub struct BookingApp {
    pool: PgPool,
    /// The pool of the work beside requests (relay, consumer, sweeper, ...).
    background: PgPool,
    bookings: Bookings,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    brokers: String,
    topics: topics::Topics,
    kafka: KafkaArgs,
    outbox_stall: Duration,
    settings: BookingSettings,
    verifier: Arc<Verifier>,
    server: tonic::transport::Server,
    feed: runtime::feed::FeedSettings,
}

impl BookingApp {
    /// Connects (creating and migrating the database), creates the topics,
    /// loads the demo catalog if asked, and binds the gRPC address. Token
    /// and TLS settings are checked first: a bad one stops the start.
    pub async fn build(
        database: &DatabaseArgs,
        kafka_args: &KafkaArgs,
        brokers: &str,
        settings: BookingSettings,
        policy: PaymentPolicy,
        security: &SecurityArgs,
    ) -> anyhow::Result<Self> {
        let verifier = security.auth.verifier().await?;
        let server = security.grpc_tls.server()?;
        crate::waiting_room::start_metrics();
        let pool = db::open_service_db(database, &settings.booking_database, &store::MIGRATIONS)
            .await
            .context("preparing the booking database")?;
        projection::ensure(&pool, &BookingViews).await.context("preparing the booking projections")?;
        if settings.load_demo_catalog {
            store::catalog::load_demo_catalog(&pool).await.context("loading the demo catalog")?;
        }
        kafka::ensure_topics(
            brokers,
            &kafka_args.topics().all(),
            kafka_args.kafka_topic_partitions,
            kafka_args.kafka_replication_factor,
        )
        .await
        .with_context(|| format!("creating Kafka topics on KAFKA_BROKERS {brokers}"))?;
        let (listener, addr) = grpc::bind(settings.booking_grpc_addr).await?;
        let bookings = Bookings::new(pool.clone(), settings.clone(), policy, security.auth.admission_key());
        Ok(Self {
            background: db::background_pool(&pool, database.database_background_connections),
            pool,
            bookings,
            listener,
            addr,
            brokers: brokers.to_owned(),
            topics: kafka_args.topics(),
            kafka: kafka_args.clone(),
            outbox_stall: Duration::from_secs(kafka_args.outbox_stall_secs),
            settings,
            verifier,
            server,
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
        let consumer = self.kafka.consumer(&self.topics.group("booking-service"), &[&self.topics.payment]);
        let background = self.background.clone();
        let (health, mut tasks) = service::start(
            service::Plumbing {
                pool: background.clone(),
                brokers: self.brokers.clone(),
                mapper: BookingEventMapper { topic: self.topics.booking.clone() },
                relay: outbox::RelaySettings::new(RELAY, topics::BOOKING_SOURCE),
                handler: PaymentEventHandler {
                    max_payment_attempts: self.bookings.max_payment_attempts(),
                    decision_waiters: self.bookings.decision_waiters().clone(),
                },
                consumer,
                outbox_stall: self.outbox_stall,
                health_service: <BookingServiceServer<BookingGrpc> as tonic::server::NamedService>::NAME.to_owned(),
            },
            &shutdown,
        )?;
        // Decisions made by another replica's consumer wake this one's waiters.
        let pool = background.clone();
        let decided = move |ids: Vec<String>| {
            let pool = pool.clone();
            async move { kernel::aggregate::having_event::<Booking>(&pool, &ids, &booking::DECIDING_EVENTS).await }
        };
        tasks.push(tokio::spawn(self.bookings.decision_waiters().clone().watch(decided, shutdown.clone())));
        let admitter = self.bookings.on_pool(background.clone()).waiting_room().clone();
        tasks.push(tokio::spawn(admitter.clone().run_admitter(shutdown.clone())));
        tasks.push(tokio::spawn(admitter.run_warm_copy(shutdown.clone())));
        tasks.push(tokio::spawn(sweep(
            self.bookings.on_pool(background.clone()),
            Duration::from_millis(self.settings.sweep_interval_ms),
            shutdown.clone(),
        )));
        let feed = runtime::feed::Feed::new(
            self.pool.clone(),
            Arc::new(BookingEventMapper { topic: self.topics.booking.clone() }),
            self.verifier.clone(),
            self.feed,
            shutdown.clone(),
        );
        let router = service::grpc_router(self.server, health, proto::FILE_DESCRIPTOR_SET)?
            .add_service(BookingServiceServer::new(BookingGrpc::new(
                self.bookings.clone(),
                self.verifier,
                shutdown.clone(),
            )))
            .add_service(runtime::feed::EventFeedServer::new(feed));
        service::serve_grpc(
            router,
            self.listener,
            tasks,
            &[&self.pool, &background],
            shutdown,
            drain,
            "booking-service",
        )
        .await
    }
}

/// Turns lapsed holds into `BookingExpired` every `interval`.
async fn sweep(bookings: Bookings, interval: Duration, shutdown: Shutdown) {
    loop {
        match bookings.expire_due().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "sweeper expired lapsed bookings"),
            Err(error) => tracing::warn!(%error, "sweeper pass failed"),
        }
        if !sleep_or_shutdown(interval, &shutdown).await {
            return;
        }
    }
}
