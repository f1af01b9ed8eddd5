//! The event feed (`ticketing.feed.v1.EventFeed`): a service's own events,
//! with the same bytes and attributes as on Kafka, from any position in its
//! event store, then live. Other teams start from the first event and go
//! on live without a gap; a subscriber that resumes after the last position
//! it handled misses nothing, because positions grow in the order the
//! global log is read (`kernel::global_log`, the relay's order).
//!
//! | file | its job |
//! |---|---|
//! | `mod.rs` | the gRPC service: who may subscribe, how many at once |
//! | `subscription.rs` | one subscriber: history from the store, then the live batches, handed over without gap or duplicate |
//! | `tail.rs` | the live tail: one reader of the log per process, broadcasting what it reads |

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge::auth::Verifier;
use edge::shutdown::Shutdown;
use messaging::outbox::IntegrationMapper;
use proto::feed::{event_feed_server::EventFeed, FeedEvent, SubscribeRequest};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

mod subscription;
mod tail;

pub use proto::feed::event_feed_server::EventFeedServer;

/// The feed's settings (`FEED_*`).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct FeedSettings {
    /// Subscribers the event feed serves at once; beyond, `RESOURCE_EXHAUSTED`.
    #[arg(long, env = "FEED_MAX_SUBSCRIBERS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub feed_max_subscribers: u32,
    /// Seconds a subscriber may read nothing while events wait for it;
    /// then its stream ends with `RESOURCE_EXHAUSTED` and the position to
    /// resume after.
    #[arg(long, env = "FEED_STALL_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub feed_stall_secs: u64,
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self { feed_max_subscribers: 64, feed_stall_secs: 60 }
    }
}

/// Types a subscription may filter on at most, and the longest one.
const MOST_TYPES: usize = 64;
const LONGEST_TYPE: usize = 200;

/// The gRPC service of one service's feed.
pub struct Feed {
    pool: PgPool,
    mapper: Arc<dyn IntegrationMapper>,
    verifier: Arc<Verifier>,
    settings: FeedSettings,
    subscribers: Arc<AtomicUsize>,
    tail: tail::Tail,
    shutdown: Shutdown,
}

impl Feed {
    /// The feed of the events in `pool`'s store, encoded by `mapper` as the
    /// relay encodes them, for callers whose tokens `verifier` accepts.
    pub fn new(
        pool: PgPool,
        mapper: Arc<dyn IntegrationMapper>,
        verifier: Arc<Verifier>,
        settings: FeedSettings,
        shutdown: Shutdown,
    ) -> Self {
        let tail = tail::Tail::new(pool.clone(), mapper.clone(), shutdown.clone());
        Self { pool, mapper, verifier, settings, subscribers: Arc::default(), tail, shutdown }
    }
}

/// Takes a subscriber's place while it is held.
struct Seat(Arc<AtomicUsize>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("feed_subscribers").decrement(1.0);
    }
}

#[tonic::async_trait]
impl EventFeed for Feed {
    type SubscribeStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<FeedEvent, Status>> + Send>>;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let user = crate::grpc::authenticate(&self.verifier, request.metadata()).await?.user;
        if !user.reads_events {
            return Err(Status::permission_denied("The event feed needs a token with role admin or events."));
        }
        let request = request.into_inner();
        if request.from_position < 0 {
            return Err(Status::invalid_argument("from_position must be 0 or a position the feed sent."));
        }
        if request.types.len() > MOST_TYPES || request.types.iter().any(|t| t.is_empty() || t.len() > LONGEST_TYPE) {
            return Err(Status::invalid_argument(format!(
                "types: at most {MOST_TYPES} event types, each 1-{LONGEST_TYPE} characters."
            )));
        }
        let most = self.settings.feed_max_subscribers as usize;
        if self.subscribers.fetch_add(1, Ordering::AcqRel) >= most {
            self.subscribers.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::resource_exhausted(format!(
                "The event feed serves {most} subscribers at once; try again later."
            )));
        }
        metrics::gauge!("feed_subscribers").increment(1.0);
        let seat = Seat(self.subscribers.clone());
        tracing::info!(subscriber = user.user_id, from = request.from_position, "event feed subscription");
        let subscription = subscription::Subscription {
            pool: self.pool.clone(),
            mapper: self.mapper.clone(),
            live: self.tail.clone(),
            types: request.types.into_iter().collect(),
            stall: Duration::from_secs(self.settings.feed_stall_secs),
            shutdown: self.shutdown.clone(),
        };
        Ok(Response::new(Box::pin(subscription.start(request.from_position, seat))))
    }
}
