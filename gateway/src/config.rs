//! The gateway's settings (each an env var with a `--flag` twin). Secrets
//! are never shown as defaults or echoed in logs.

use std::net::SocketAddr;

use clap::Args;

/// Settings of the REST gateway.
#[derive(Debug, Clone, Args)]
pub struct GatewaySettings {
    /// HTTP listen address of the gateway.
    #[arg(long, env = "GATEWAY_ADDR", default_value = "0.0.0.0:8080")]
    pub gateway_addr: SocketAddr,
    /// URL of the booking-service gRPC endpoint.
    #[arg(long, env = "BOOKING_GRPC_URL", default_value = "http://127.0.0.1:50051")]
    pub booking_grpc_url: String,
    /// URL of the payment-service gRPC endpoint.
    #[arg(long, env = "PAYMENT_GRPC_URL", default_value = "http://127.0.0.1:50052")]
    pub payment_grpc_url: String,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub edge: EdgeLimits,
}

/// What the edge sheds before it reaches the services.
#[derive(Debug, Clone, Copy, Args)]
pub struct EdgeLimits {
    /// Requests handled at once; beyond that they are shed with 503 and
    /// `Retry-After` (health and metrics are exempt).
    #[arg(long, env = "GATEWAY_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub gateway_max_in_flight: u32,
    /// Longest a request may take (ms) before it is answered 504.
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub gateway_request_timeout_ms: u64,
}

/// How bearer tokens are verified.
#[derive(Clone, Args)]
pub struct AuthSettings {
    /// HS256 secret for user tokens (dev/default). `ticketing dev` generates one if unset.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// RS256/ES256 public keys as a JWKS: a file path or inline JSON (production).
    #[arg(long, env = "JWT_JWKS", hide_env_values = true)]
    pub jwt_jwks: Option<String>,
    /// Required `iss` of every token (unset: not checked).
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of every token (unset: not checked).
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Accept HS256 tokens (JWT_SECRET) even though JWT_JWKS is set.
    #[arg(long, env = "JWT_ALLOW_HS256", default_value_t = false)]
    pub jwt_allow_hs256: bool,
}

impl AuthSettings {
    /// The token rules these settings ask for.
    pub fn rules(&self) -> crate::auth::TokenRules {
        crate::auth::TokenRules {
            issuer: self.jwt_issuer.clone().filter(|i| !i.is_empty()),
            audience: self.jwt_audience.clone().filter(|a| !a.is_empty()),
            allow_hs256_with_jwks: self.jwt_allow_hs256,
        }
    }
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "***"))
            .field("jwt_jwks", &self.jwt_jwks.as_ref().map(|_| "<set>"))
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_allow_hs256", &self.jwt_allow_hs256)
            .finish()
    }
}
