//! Bearer-token authentication: HS256 with `JWT_SECRET`, or RS256/ES256
//! with public keys from `JWT_JWKS`. The user is the `sub` claim, `exp` is
//! required, `nbf` is honoured, `role: "admin"` marks an administrator.
//! `iss` and `aud` are checked when `JWT_ISSUER` / `JWT_AUDIENCE` are set and
//! ignored otherwise, so identity providers' tokens (which carry them) work.
//! With a JWKS configured, HS256 tokens are refused unless allowed.

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
    /// An HS256 secret that can be brute-forced.
    #[error("JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")]
    WeakSecret,
}

/// The shortest HS256 secret accepted (the hash's output size).
pub const MIN_SECRET_BYTES: usize = 32;

/// What a verifier checks besides the signature, `exp` and `nbf`.
#[derive(Debug, Clone, Default)]
pub struct TokenRules {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences), when set.
    pub audience: Option<String>,
    /// Accept HS256 tokens even though a JWKS is configured.
    pub allow_hs256_with_jwks: bool,
}

/// Verifies bearer tokens.
pub struct JwtVerifier {
    secret: Option<DecodingKey>,
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    rules: TokenRules,
}

impl JwtVerifier {
    /// Builds from a secret and/or a JWKS (path or inline JSON).
    pub fn new(secret: Option<&str>, jwks: Option<&str>) -> Result<Self, AuthConfigError> {
        let secret = secret.filter(|s| !s.is_empty());
        if secret.is_some_and(|s| s.len() < MIN_SECRET_BYTES) {
            return Err(AuthConfigError::WeakSecret);
        }
        let secret = secret.map(|s| DecodingKey::from_secret(s.as_bytes()));
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
        Ok(Self { secret, keys, rules: TokenRules::default() })
    }

    /// The same verifier, also checking `rules`.
    pub fn with_rules(mut self, rules: TokenRules) -> Self {
        self.rules = rules;
        self
    }

    /// The caller named by a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Option<AuthUser> {
        let header = decode_header(token).ok()?;
        let key = match header.alg {
            Algorithm::HS256 if !self.keys.is_empty() && !self.rules.allow_hs256_with_jwks => return None,
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
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.rules.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.rules.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
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

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes";

    /// A token with arbitrary claims, signed with `SECRET`.
    fn hs256(claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn identity_provider_tokens_with_iss_aud_nbf_and_jti_are_accepted_when_those_are_not_configured() {
        let verifier = JwtVerifier::new(Some(SECRET), None).unwrap();
        let token = hs256(serde_json::json!({
            "sub": "user_idp", "exp": now() + 60, "nbf": now() - 5, "iat": now(),
            "iss": "https://idp.example/realms/tickets", "aud": ["ticketing", "account"], "jti": "j-1"
        }));
        assert_eq!(verifier.verify(&token).map(|u| u.user_id), Some("user_idp".to_owned()));
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_configured() {
        let rules = TokenRules {
            issuer: Some("https://idp.example".into()),
            audience: Some("ticketing".into()),
            ..TokenRules::default()
        };
        let verifier = JwtVerifier::new(Some(SECRET), None).unwrap().with_rules(rules);
        let token = |iss: Option<&str>, aud: Option<&str>| {
            let mut claims = serde_json::json!({"sub": "u", "exp": now() + 60});
            if let Some(iss) = iss {
                claims["iss"] = iss.into();
            }
            if let Some(aud) = aud {
                claims["aud"] = aud.into();
            }
            hs256(claims)
        };
        assert!(verifier.verify(&token(Some("https://idp.example"), Some("ticketing"))).is_some());
        assert!(verifier.verify(&token(Some("https://other.example"), Some("ticketing"))).is_none(), "wrong iss");
        assert!(verifier.verify(&token(Some("https://idp.example"), Some("billing"))).is_none(), "wrong aud");
        assert!(verifier.verify(&token(None, Some("ticketing"))).is_none(), "missing iss");
        assert!(verifier.verify(&token(Some("https://idp.example"), None)).is_none(), "missing aud");
    }

    #[test]
    fn a_token_that_is_not_valid_yet_is_refused() {
        let verifier = JwtVerifier::new(Some(SECRET), None).unwrap();
        let early = hs256(serde_json::json!({"sub": "u", "exp": now() + 600, "nbf": now() + 300}));
        assert!(verifier.verify(&early).is_none());
    }

    #[test]
    fn a_secret_shorter_than_32_bytes_is_refused_at_start() {
        assert!(matches!(JwtVerifier::new(Some("s3cret"), None), Err(AuthConfigError::WeakSecret)));
        assert!(JwtVerifier::new(Some(&"k".repeat(MIN_SECRET_BYTES)), None).is_ok());
    }

    #[test]
    fn with_a_jwks_hs256_is_refused_unless_allowed() {
        let token = issue_token(SECRET, "u", false, 60).unwrap();
        let strict = JwtVerifier::new(Some(SECRET), Some(EC_JWKS)).unwrap();
        assert!(strict.verify(&token).is_none());
        let allowing = JwtVerifier::new(Some(SECRET), Some(EC_JWKS))
            .unwrap()
            .with_rules(TokenRules { allow_hs256_with_jwks: true, ..TokenRules::default() });
        assert!(allowing.verify(&token).is_some());
    }

    #[test]
    fn hs256_tokens_verify_and_carry_the_admin_role() {
        let verifier = JwtVerifier::new(Some(SECRET), None).unwrap();
        let token = issue_token(SECRET, "user_1", true, 60).unwrap();
        assert_eq!(verifier.verify(&token), Some(AuthUser { user_id: "user_1".into(), admin: true }));
        let plain = issue_token(SECRET, "user_2", false, 60).unwrap();
        assert_eq!(verifier.verify(&plain).map(|u| u.admin), Some(false));
    }

    #[test]
    fn bad_signatures_expired_and_malformed_tokens_are_rejected() {
        let verifier = JwtVerifier::new(Some(SECRET), None).unwrap();
        assert!(verifier
            .verify(&issue_token("another-secret-of-at-least-32-bytes", "u", false, 60).unwrap())
            .is_none());
        assert!(verifier.verify(&issue_token(SECRET, "u", false, -120).unwrap()).is_none());
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
        assert!(inline.verify(&issue_token(SECRET, "u", false, 60).unwrap()).is_none(), "no HS256 without a secret");

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
