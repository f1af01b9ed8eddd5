//! PostgreSQL adapters of the booking-service: the catalog, the seat holds
//! that enforce "no seat sold twice", and the projections behind the read
//! endpoints, and what a booking's events change in them (`effects`).
//! Booking streams are loaded and appended by `kernel::aggregate`.

pub mod catalog;
pub mod effects;
pub mod holds;
pub mod queue;
pub mod views;

/// The booking-service's own migrations (the shared event-store ones run first).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
