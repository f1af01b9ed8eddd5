//! Kafka messaging between the services, and to the teams that read their
//! topics. The outbox relay publishes the events the kernel stored, at
//! least once and in order per key, with CloudEvents headers
//! ([`outbox`]); the consumer leases partitions in PostgreSQL and handles
//! each record in one transaction with its inbox row and offset, sending
//! what can never be handled to a dead-letter topic ([`inbox`]).
//!
//! | module | what it holds |
//! |---|---|
//! | [`kafka`] | client settings, CloudEvents headers, topic creation, the embedded broker of `ticketing dev` |
//! | [`topics`] | topic names and CloudEvents types |
//! | [`outbox`] | the relay from the global log to Kafka |
//! | [`inbox`] | the consumer, its inbox, retries and dead letters |
//! | [`Signals`] | how background components report trouble to readiness |
//! | [`config`] | `KafkaArgs`, the Kafka settings of a service |

pub mod config;
pub mod inbox;
pub mod kafka;
pub mod outbox;
mod signals;
pub mod topics;

pub use signals::Signals;

/// The migrations of the consumer's tables (partition leases and offsets).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
