//! payment-service: takes the money.
//!
//! | path | what it holds |
//! |---|---|
//! | `domain/` | the PaymentIntent aggregate (`decide`/`apply`) and ledger postings: pure, no I/O |
//! | `payments.rs` | use cases: execute (check → admit → charge → record), get |
//! | `payment_gateway.rs` | the gateway port and the mock gateway of decisions.md |
//! | `store/` | intent streams and the append-only ledger |
//! | `events.rs` | domain events → public protobuf events on `payment.events.v1` |
//! | `consumer.rs` | reactions to `booking.events.v1` (create, close, refund) |
//! | `grpc.rs` | the `PaymentService` gRPC adapter |
//! | `app.rs` | start-up, background tasks, shutdown |

pub mod app;
pub mod config;
pub mod consumer;
pub mod domain;
pub mod error;
pub mod events;
pub mod grpc;
pub mod payment_gateway;
pub mod payments;
pub mod store;

pub use app::PaymentApp;
pub use config::PaymentSettings;
