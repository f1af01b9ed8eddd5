//! PostgreSQL adapters of the payment-service: intent streams, the ledger
//! and the work queues of the reconciler and the refund worker.

pub mod ledger;
pub mod streams;
pub mod work;

/// The payment-service's own migrations (the shared event-store ones run first).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
