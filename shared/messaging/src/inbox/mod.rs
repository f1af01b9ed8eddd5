//! The Kafka consumer side: every record is handled in one database
//! transaction together with its inbox row `(consumer, ce_id)`, so a
//! redelivered event is a no-op, and with the partition's next offset, so
//! the consumer's place moves exactly with its effects.
//!
//! | room | what it does |
//! |---|---|
//! | [`handler`] | the service's side: the received event, the handler trait, how failures are classified |
//! | [`settings`] | tuning: group, topics, retries, retention |
//! | [`leases`] | which member works which partition: leases in PostgreSQL (no broker session to wait out) |
//! | [`client`] | the Kafka client: manual assignment of leased partitions, metadata, pause and resume |
//! | `run` | the main loop: balance leases, rounds of records in per-partition lanes, retries |
//! | [`lanes`] | one partition's records: shared transactions, then record by record |
//! | [`dedupe`] | the inbox row and the stored offset beside the effects; the inbox purge |
//! | [`dead_letter`] | publishing what can never be handled to `<topic>.dlq` |
//! | [`redrive`] | sending dead letters back once their cause is fixed |
//!
//! Partitions are handled concurrently, each in offset order (a key lives in
//! one partition, so per-key order holds). Only poison and permanent
//! refusals are dead-lettered; a transient failure (database down, pool
//! timeout, serialization failure) pauses only its partition and is retried
//! for as long as it lasts: a PostgreSQL restart must never cost a paid
//! customer their seat.

pub mod client;
pub mod dead_letter;
pub mod dedupe;
pub mod handler;
pub mod lanes;
pub mod leases;
pub mod redrive;
mod run;
pub mod settings;

pub use handler::{is_transient, EventHandler, Fresh, HandlerError, IncomingEvent};
pub use run::run_consumer;
pub use settings::ConsumerSettings;

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler's effects committed.
    Applied,
    /// The ce_id was already in the inbox; nothing was done.
    Duplicate,
    /// The record went to the dead-letter topic.
    DeadLettered,
    /// A type this consumer does not handle; nothing was written.
    Ignored,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::DeadLettered => "dead_lettered",
            Self::Ignored => "ignored",
        }
    }
}
