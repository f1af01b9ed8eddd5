//! payment-service: takes the money.
//!
//! | path | what it holds |
//! |---|---|
//! | `domain/` | the PaymentIntent aggregate (`decide`/`apply`) and ledger postings: pure, no I/O |
//! | `use_cases.rs` | what callers ask: execute (request → admit → charge → record), reconcile, refund, get |
//! | `psp.rs` | the payment service provider port and the durable simulated PSP |
//! | `store/` | the append-only ledger, the reconciler's and refund worker's queues (`queues.rs`), and what an intent's events change in them (`effects.rs`) |
//! | `publish.rs` | domain events → public protobuf events on `payment.events.v1` |
//! | `consumer.rs` | reactions to `booking.events.v1` (create, close, refund) |
//! | `grpc.rs` | the `PaymentService` gRPC adapter |
//! | `app.rs` | start-up, background tasks, shutdown |

pub mod app;
pub mod config;
pub mod consumer;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod psp;
pub mod publish;
pub mod refund_review;
pub mod store;
pub mod use_cases;

pub use app::PaymentApp;
pub use config::PaymentSettings;
