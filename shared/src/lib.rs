//! The event-sourcing core that booking-service and payment-service share.
//!
//! One implementation of each mechanism, used by both services:
//!
//! | module | what it holds |
//! |---|---|
//! | [`aggregate`] | the `Aggregate` trait (stream type, events, `decide`, `apply`, `replay`) and generic load, append and retry-on-race over the event store |
//! | [`event_store`] | append with optimistic concurrency, load a stream, read the global log in commit order |
//! | [`outbox`] | the relay that publishes committed events to Kafka, at least once, in order per key |
//! | [`kafka`] | producer/consumer settings, CloudEvents headers, topic creation, the embedded broker |
//! | [`inbox`] | the Kafka consumer: partition leases in PostgreSQL, inbox dedupe and offsets in the handler's transaction, retries, dead letters and their re-drive |
//! | [`projection`] | read models kept in step with the global log, with blue/green rebuilds |
//! | [`global_log`] | reading the log in commit order, checkpoints, wake-ups |
//! | [`arrivals`] | waiting for an aggregate's change without polling per request: woken by its commit, one watcher for other replicas |
//! | [`auth`] | bearer-token verification (HS256, JWKS file or URL), the one verifier of every boundary |
//! | [`grpc`] | caller identity from forwarded tokens, TLS/mTLS, request context to event metadata, bind, reflection |
//! | [`health`] | readiness (database, broker) as gRPC health |
//! | [`idempotency`] | Idempotency-Key claims, replays and purge |
//! | [`ids`] | the payment intent id a booking id leads to, and back |
//! | [`db`] | connecting, creating the service database, running migrations |
//! | [`metrics`] | Prometheus recorder, `/metrics` listener, gRPC metrics layer |
//! | [`config`] | the command-line/env settings every service has |
//! | [`telemetry`] | tracing setup |
//! | [`service`] | the relay, consumer, purge and readiness tasks every service runs |
//! | [`shutdown`] | the signal that stops every task |
//! | [`topics`] | topic names, CloudEvents types, timestamp conversion |
//! | [`trace_context`] | W3C trace context across HTTP, gRPC and Kafka |
//! | [`testkit`] | fresh databases and a broker for integration tests |
//! | [`failpoint`] | named crash points for fault tests (`TICKETING_FAILPOINTS`) |

pub mod aggregate;
pub mod arrivals;
pub mod auth;
pub mod config;
pub mod db;
pub mod event_store;
pub mod failpoint;
pub mod fnv;
pub mod ids;
pub mod inbox;
pub mod kafka;
pub mod metrics;
pub mod outbox;
pub mod projection;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod testkit;
pub mod topics;
pub mod trace_context;

pub mod global_log;
pub mod grpc;
pub mod health;
pub mod idempotency;

pub use global_log::{LogPosition, WakeUp};
