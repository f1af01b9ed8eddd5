//! PostgreSQL adapters of the payment-service: the ledger and the work
//! queues of the reconciler and the refund worker, and what an intent's
//! events change in them (`effects`). Intent streams are loaded and
//! appended by `kernel::aggregate`.

pub mod effects;
pub mod ledger;
pub mod queues;

/// The payment-service's own migrations (the shared event-store ones run first).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
