//! booking-service: holds seats and owns bookings.
//!
//! | path | what it holds |
//! |---|---|
//! | `domain/` | the Booking aggregate (`decide`/`apply`) and catalog rules: pure, no I/O |
//! | `bookings.rs` | use cases: load → decide → append events + seat holds in one transaction |
//! | `store/holds.rs` | **where "no seat is sold twice" is enforced** (one row per seat) |
//! | `store/` | catalog, booking streams, projections (`booking_view`, `occupied_seats`) |
//! | `events.rs` | domain events → public protobuf events on `booking.events.v1` |
//! | `consumer.rs` | reactions to `payment.events.v1` |
//! | `grpc.rs` | the `BookingService` gRPC adapter |
//! | `app.rs` | start-up, background tasks, shutdown |

pub mod app;
pub mod bookings;
pub mod config;
pub mod consumer;
pub mod domain;
pub mod error;
pub mod events;
pub mod grpc;
pub mod store;

pub use app::BookingApp;
pub use config::BookingSettings;
