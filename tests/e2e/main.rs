//! End-to-end tests: the REST contract driven over HTTP against the whole
//! system (gateway, booking-service, payment-service, PostgreSQL, Kafka).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod catalog;
mod contention;
mod contract;
mod cors;
mod edge;
mod feed;
mod flows;
mod fuzz;
mod grpc_auth;
mod grpc_tls;
mod idempotency;
mod live;
mod observability;
mod operations;
mod problems;
mod replay;
mod support;
mod waiting_room;
