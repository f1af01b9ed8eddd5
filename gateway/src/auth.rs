//! Bearer-token authentication: HS256 with `JWT_SECRET`, or RS256/ES256
//! with public keys from `JWT_JWKS`. The user is the `sub` claim, `exp` is
//! required, `role: "admin"` marks an administrator.

use std::sync::Arc;

use axum::{extract::FromRequestParts, http::request::Parts};
use jsonwebtoken::{
    decode, decode_header, encode,
    jwk::{Jwk, JwkSet},
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};

use crate::{error::ApiError, AppState};

/// The claims this system reads and issues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// `admin` for administrators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    /// The `sub` claim.
    pub user_id: String,
    /// `role == "admin"`.
    pub admin: bool,
}

/// Configuration errors of the verifier.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// Neither a secret nor keys.
    #[error("set JWT_SECRET (HS256) or JWT_JWKS (RS256/ES256)")]
    Missing,
    /// JWT_JWKS is unreadable or not a JWKS.
    #[error("JWT_JWKS is not a readable JWKS: {0}")]
    BadJwks(String),
}

/// Verifies bearer tokens.
pub struct JwtVerifier {
    secret: Option<DecodingKey>,
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
}

impl JwtVerifier {
    /// Builds from a secret and/or a JWKS (path or inline JSON).
    pub fn new(secret: Option<&str>, jwks: Option<&str>) -> Result<Self, AuthConfigError> {
        let secret = secret.filter(|s| !s.is_empty()).map(|s| DecodingKey::from_secret(s.as_bytes()));
        let keys = match jwks.filter(|j| !j.trim().is_empty()) {
            None => Vec::new(),
            Some(text) => {
                let json = if text.trim_start().starts_with('{') {
                    text.to_owned()
                } else {
                    std::fs::read_to_string(text).map_err(|e| AuthConfigError::BadJwks(e.to_string()))?
                };
                let set: JwkSet = serde_json::from_str(&json).map_err(|e| AuthConfigError::BadJwks(e.to_string()))?;
                set.keys.iter().map(decoding_key).collect::<Result<Vec<_>, _>>()?
            }
        };
        if secret.is_none() && keys.is_empty() {
            return Err(AuthConfigError::Missing);
        }
        Ok(Self { secret, keys })
    }

    /// The caller named by a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Option<AuthUser> {
        let header = decode_header(token).ok()?;
        let key = match header.alg {
            Algorithm::HS256 => self.secret.as_ref()?,
            Algorithm::RS256 | Algorithm::ES256 => {
                &self
                    .keys
                    .iter()
                    .find(|(kid, alg, _)| *alg == header.alg && (header.kid.is_none() || *kid == header.kid))?
                    .2
            }
            _ => return None,
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = decode::<Claims>(token, key, &validation).ok()?.claims;
        if claims.sub.is_empty() || claims.sub.len() > 128 {
            return None;
        }
        Some(AuthUser { admin: claims.role.as_deref() == Some("admin"), user_id: claims.sub })
    }
}

fn decoding_key(jwk: &Jwk) -> Result<(Option<String>, Algorithm, DecodingKey), AuthConfigError> {
    let key = DecodingKey::from_jwk(jwk).map_err(|e| AuthConfigError::BadJwks(e.to_string()))?;
    let alg = match &jwk.algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
        jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
        _ => return Err(AuthConfigError::BadJwks("only RSA (RS256) and EC P-256 (ES256) keys are accepted".into())),
    };
    Ok((jwk.common.key_id.clone(), alg, key))
}

/// Signs an HS256 token for `user_id` valid for `ttl_secs` (the `ticketing token` command).
pub fn issue_token(
    secret: &str,
    user_id: &str,
    admin: bool,
    ttl_secs: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: user_id.to_owned(),
        exp: now + ttl_secs,
        iat: Some(now),
        role: admin.then(|| "admin".to_owned()),
    };
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
}

impl FromRequestParts<Arc<AppState>> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        token.and_then(|t| state.auth.verify(t)).ok_or_else(ApiError::unauthenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hs256_tokens_verify_and_carry_the_admin_role() {
        let verifier = JwtVerifier::new(Some("s3cret"), None).unwrap();
        let token = issue_token("s3cret", "user_1", true, 60).unwrap();
        assert_eq!(verifier.verify(&token), Some(AuthUser { user_id: "user_1".into(), admin: true }));
        let plain = issue_token("s3cret", "user_2", false, 60).unwrap();
        assert_eq!(verifier.verify(&plain).map(|u| u.admin), Some(false));
    }

    #[test]
    fn bad_signatures_expired_and_malformed_tokens_are_rejected() {
        let verifier = JwtVerifier::new(Some("s3cret"), None).unwrap();
        assert!(verifier.verify(&issue_token("other", "u", false, 60).unwrap()).is_none());
        assert!(verifier.verify(&issue_token("s3cret", "u", false, -120).unwrap()).is_none());
        assert!(verifier.verify("not.a.jwt").is_none());
        assert!(verifier.verify("").is_none());
    }

    /// A throwaway P-256 key pair made for this test only.
    const EC_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgiwM9O5yf8utS6+HH
zWPbyGIFh6qVikdbbtmHF5OnO6KhRANCAAQwPFUkWK3slVadGYlxwoSBH1SOMjgm
lPEgq3YDVcG6jOn3SyIaAHs8Zmtoj7/2lGWtb1YF9XaiKcGssvaa5oIG
-----END PRIVATE KEY-----";
    const EC_JWKS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
        "x": "MDxVJFit7JVWnRmJccKEgR9UjjI4JpTxIKt2A1XBuow", "y": "6fdLIhoAezxma2iPv_aUZa1vVgX1dqIpwayy9prmggY"}]}"#;

    fn es256_token(kid: Option<&str>, exp_offset: i64) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        let now = chrono::Utc::now().timestamp();
        let claims = Claims { sub: "user_es".into(), exp: now + exp_offset, iat: Some(now), role: None };
        encode(&header, &claims, &EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn es256_tokens_verify_against_the_jwks_inline_or_from_a_file() {
        let inline = JwtVerifier::new(None, Some(EC_JWKS)).unwrap();
        assert_eq!(inline.verify(&es256_token(Some("k1"), 60)).map(|u| u.user_id), Some("user_es".to_owned()));
        assert!(inline.verify(&es256_token(None, 60)).is_some(), "a token without kid uses any matching key");
        assert!(inline.verify(&es256_token(Some("other"), 60)).is_none(), "unknown kid");
        assert!(inline.verify(&es256_token(Some("k1"), -120)).is_none(), "expired");
        assert!(inline.verify(&issue_token("s3cret", "u", false, 60).unwrap()).is_none(), "no HS256 without a secret");

        let path = std::env::temp_dir().join(format!("jwks-{}.json", std::process::id()));
        std::fs::write(&path, EC_JWKS).unwrap();
        let from_file = JwtVerifier::new(None, path.to_str()).unwrap();
        assert!(from_file.verify(&es256_token(Some("k1"), 60)).is_some());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_verifier_needs_a_secret_or_keys() {
        assert!(JwtVerifier::new(None, None).is_err());
        assert!(JwtVerifier::new(None, Some("{\"keys\": 5}")).is_err());
    }
}
