//! What every handler and middleware of the gateway shares.

use std::{sync::Arc, time::Duration};

use edge::shutdown::Shutdown;
use proto::{
    booking::booking_service_client::BookingServiceClient, payment::payment_service_client::PaymentServiceClient,
};
use tonic::transport::Channel;

/// What every handler shares.
pub struct AppState {
    /// booking-service client.
    pub booking: BookingServiceClient<Channel>,
    /// payment-service client.
    pub payment: PaymentServiceClient<Channel>,
    /// Joins to waiting rooms, sent to the booking-service together.
    pub queue_joins: crate::queue_joins::QueueJoins,
    /// Place streams, carried on one call per performance.
    pub queue_watch: crate::queue_watch::QueueWatch,
    /// Channel to the booking-service (health checks).
    pub booking_channel: Channel,
    /// Channel to the payment-service (health checks).
    pub payment_channel: Channel,
    /// Token verification.
    pub auth: Arc<edge::auth::Verifier>,
    /// Cancelled when the process is stopping (readiness fails first).
    pub shutting_down: Shutdown,
    /// Permits for requests in flight (load shedding beyond them).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Longest a request may take.
    pub request_timeout: Duration,
    /// How long a request beyond the in-flight limit waits for a slot.
    pub queue_wait: Duration,
    /// Per-user limits on the writes.
    pub rate_limit: crate::rate_limit::UserRateLimit,
    /// Longest a client may take to send a request body.
    pub body_read_timeout: Duration,
    /// Current seat maps, loads shared between readers.
    pub seat_maps: Arc<crate::seat_maps::SeatMaps>,
    /// The seat streams' watchers and caps.
    pub seat_watch: Arc<crate::seat_watch::SeatWatch>,
    /// How long a successful payment waits for its booking to show it.
    pub read_your_writes_ms: u32,
    /// `ticketing dev` only: the HS256 secret `POST /dev/token` signs with.
    pub dev_token_secret: Option<String>,
    /// Key of the waiting room's admission tokens (checked at `POST /bookings`).
    pub admission_key: Option<edge::admission::AdmissionKey>,
    /// Which browser origins may call (`None`: no CORS headers at all).
    pub cors: Option<tower_http::cors::CorsLayer>,
}
