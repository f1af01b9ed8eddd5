//! The service runtime: how booking-service and payment-service start,
//! run and stop alike. It connects the database (creating it, running
//! every crate's migrations and then the service's own), starts the tasks
//! each service runs beside its gRPC server (relay, consumer, purge,
//! readiness) and stops them on shutdown, authenticates gRPC callers,
//! keeps Idempotency-Key outcomes, and lets a request wait for an
//! aggregate's change without polling per request.
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | `DatabaseArgs`, the duration syntax of the command line |
//! | [`db`] | pools, creating the service database, migrations |
//! | [`service`] | the background tasks and the gRPC server every service runs |
//! | [`health`] | readiness (database, broker, outbox stall, signals) as gRPC health |
//! | [`grpc`] | caller identity from forwarded tokens, event metadata of a request, bind, reflection |
//! | [`idempotency`] | Idempotency-Key claims, outcomes and purge |
//! | [`idempotent`] | the same, as the gRPC adapters use it |
//! | [`waiters`] | requests waiting for an aggregate's change: woken by its commit, one watcher for other replicas |
//! | [`feed`] | the event feed (`ticketing.feed.v1.EventFeed`): history from any position, then live |
//! | [`failpoint`] | named crash points for fault tests (`TICKETING_FAILPOINTS`) |

pub mod config;
pub mod db;
pub mod failpoint;
pub mod feed;
pub mod grpc;
pub mod health;
pub mod idempotency;
pub mod idempotent;
pub mod service;
pub mod waiters;

/// The migrations of the runtime's tables (idempotency keys).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
