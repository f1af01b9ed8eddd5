//! The edge: what every process of the platform needs at its boundaries,
//! and nothing that needs a database or Kafka, so the stateless gateway
//! depends on this crate (and the generated API) alone. It verifies bearer
//! tokens (HS256 secret, JWKS file or URL refreshed in the background),
//! carries W3C trace context across HTTP, gRPC and Kafka, records and
//! serves Prometheus metrics, sets up tracing, stops a process on a signal
//! within a bound, configures gRPC TLS, and names what travels on the wire
//! between the gateway and the services.

pub mod admission;
pub mod auth;
pub mod config;
pub mod metrics;
pub mod process;
pub mod roles;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
pub mod trace_ids;
pub mod verified;
pub mod wire;
