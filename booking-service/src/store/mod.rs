//! PostgreSQL adapters of the booking-service: the catalog, the seat holds
//! that enforce "no seat sold twice", the booking streams, and the
//! projections behind the read endpoints.

pub mod catalog;
pub mod holds;
pub mod streams;
pub mod views;

/// The booking-service's own migrations (the shared event-store ones run first).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
