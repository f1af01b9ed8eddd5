//! booking-service: holds seats and owns bookings.
//!
//! | path | what it holds |
//! |---|---|
//! | `domain/` | the Booking aggregate (`decide`/`apply`) and catalog rules: pure, no I/O |
//! | `use_cases.rs` | what callers ask: create, cancel, admit a payment, get, list; each command runs through `kernel::aggregate::execute` |
//! | `store/holds.rs` | **where "no seat is sold twice" is enforced** (one row per seat) |
//! | `store/effects.rs` | what a booking's events change besides its stream: the list view, the seat holds |
//! | `store/` | catalog, seat holds, the `booking_view` read model |
//! | `publish.rs` | domain events → public protobuf events on `booking.events.v1` |
//! | `consumer.rs` | reactions to `payment.events.v1` |
//! | `grpc/` | the `BookingService` gRPC adapter; `watch_places.rs` serves a gateway's many place streams on one call |
//! | `app.rs` | start-up, background tasks, shutdown |

pub mod app;
pub mod config;
pub mod consumer;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod publish;
pub mod store;
pub mod use_cases;
pub mod waiting_room;

pub use app::BookingApp;
pub use config::BookingSettings;
