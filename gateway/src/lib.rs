//! The REST gateway: serves the seed contract and decisions.md over axum,
//! authenticates bearer JWTs, and calls booking-service and payment-service
//! over gRPC. It holds no state of its own.
//!
//! | path | what it holds |
//! |---|---|
//! | `app.rs` | router, middleware (request id, access log, body limits), start-up |
//! | `auth.rs` | JWT verification (HS256 / JWKS) and dev-token minting |
//! | `routes/` | one module per resource of the contract |
//! | `error.rs` | the JSON error shape; gRPC → HTTP status, once |
//! | `json.rs` | a JSON extractor whose rejections are 400s naming the problem |
//! | `path_id.rs` | ids from the URL path, checked (length, no control characters) before any call |
//! | `openapi.rs` | the OpenAPI 3.1 document at `/openapi.json` |

pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod json;
pub mod openapi;
pub mod path_id;
pub mod routes;

pub use app::{AppState, GatewayApp};
pub use config::GatewaySettings;
