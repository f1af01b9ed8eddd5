//! PostgreSQL adapters of the payment-service: intent streams and the ledger.

pub mod ledger;
pub mod streams;

/// The payment-service's own migrations (the shared event-store ones run first).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
