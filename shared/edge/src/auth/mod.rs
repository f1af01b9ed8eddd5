//! Bearer-token verification, one implementation for every boundary: the
//! gateway verifies the user's token on each REST request, forwards it in
//! gRPC `authorization` metadata, and each service verifies it again here
//! before it trusts a user id or a role.
//!
//! Keys: HS256 with `JWT_SECRET` (dev and small deployments), RS256/ES256
//! public keys from `JWT_JWKS` (a file or inline JSON) and/or from an
//! identity provider's `JWT_JWKS_URL`, fetched at start, cached, and
//! fetched again (at most once per [`JWKS_MIN_REFRESH`]) when a token names
//! a key id the cache does not hold, or when the cache is older than
//! [`JWKS_MAX_AGE`].
//!
//! Claims: the user is `sub`, `exp` is required, `nbf` is honoured,
//! `role: "admin"` marks an administrator. `iss` and `aud` are checked when
//! `JWT_ISSUER` / `JWT_AUDIENCE` are set and ignored otherwise, so identity
//! providers' tokens (which carry them) work. With a JWKS configured, HS256
//! tokens are refused unless `JWT_ALLOW_HS256` says otherwise.

use std::{sync::Arc, time::Duration};

use clap::Args;
use jsonwebtoken::{decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

mod jwks;

use jwks::{parse_jwks, Key, RemoteJwks};

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
    /// The issuer, when tokens must name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The audience, when tokens must name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// Every other claim (where `JWT_ROLE_CLAIM` may point).
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// An authenticated caller, as its verified token names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    /// The `sub` claim.
    pub user_id: String,
    /// `role == "admin"`.
    pub admin: bool,
    /// `role == "events"` (or an administrator): may read the event feed.
    pub reads_events: bool,
    /// The `exp` claim: the token is refused from this second on (after
    /// [`LEEWAY_SECS`]).
    pub expires_at: i64,
}

/// A secret setting: its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

/// Clock skew a verifier forgives on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;

/// The longest user id (`sub`) accepted.
pub const MAX_SUBJECT_LEN: usize = 128;
/// The shortest HS256 secret accepted (the hash's output size).
pub const MIN_SECRET_BYTES: usize = 32;
/// The soonest a JWKS is fetched again after the last try.
pub const JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);
/// A fetched JWKS older than this is fetched again (keys are revoked too).
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// Configuration errors of the verifier (refused at start).
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// Neither a secret nor keys.
    #[error("set JWT_SECRET (HS256), JWT_JWKS or JWT_JWKS_URL (RS256/ES256)")]
    Missing,
    /// JWT_JWKS is unreadable or not a JWKS.
    #[error("JWT_JWKS is not a readable JWKS: {0}")]
    BadJwks(String),
    /// JWT_JWKS_URL is not an http(s) URL.
    #[error("JWT_JWKS_URL must be an http:// or https:// URL")]
    BadJwksUrl,
    /// An HS256 secret that can be brute-forced.
    #[error("JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")]
    WeakSecret,
}

/// Why a token was refused (logged at debug; callers answer 401 / UNAUTHENTICATED).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT.
    #[error("not a JWT: {0}")]
    Malformed(jsonwebtoken::errors::Error),
    /// An algorithm this deployment does not accept.
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(Algorithm),
    /// No configured key can check it.
    #[error("no key matches the token")]
    UnknownKey,
    /// Bad signature, expired, not yet valid, wrong issuer or audience.
    #[error("{0}")]
    Invalid(jsonwebtoken::errors::Error),
    /// `sub` is empty or too long.
    #[error("the subject is empty or longer than {MAX_SUBJECT_LEN} bytes")]
    Subject,
}

/// What a verifier checks besides the signature, `exp` and `nbf`.
#[derive(Debug, Clone, Default)]
pub struct TokenRules {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences), when set.
    pub audience: Option<String>,
    /// Accept HS256 tokens even though a JWKS is configured.
    pub allow_hs256_with_jwks: bool,
    /// Where the admin role is (`crate::roles`); `None`: the `role` claim.
    pub role_claim: Option<String>,
}

/// How bearer tokens are verified (the gateway and both services read the same settings).
#[derive(Clone, Args)]
pub struct AuthSettings {
    /// HS256 secret for user tokens (dev/default). `ticketing dev` generates one if unset.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// RS256/ES256 public keys as a JWKS: a file path or inline JSON.
    #[arg(long, env = "JWT_JWKS", hide_env_values = true)]
    pub jwt_jwks: Option<String>,
    /// The identity provider's JWKS endpoint (fetched, cached, refreshed on an unknown `kid`).
    #[arg(long, env = "JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// Required `iss` of every token (unset: not checked).
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of every token (unset: not checked).
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Accept HS256 tokens (JWT_SECRET) even though a JWKS is configured.
    #[arg(long, env = "JWT_ALLOW_HS256", default_value_t = false)]
    pub jwt_allow_hs256: bool,
    /// The claim that carries roles (`admin` marks an administrator): a
    /// name (Auth0: `https://your.app/roles`) or a dotted path (Keycloak:
    /// `realm_access.roles`); a string or an array of strings.
    #[arg(long, env = "JWT_ROLE_CLAIM", default_value = "role")]
    pub jwt_role_claim: String,
    /// Key of the waiting room's admission tokens (at least 32 bytes), the
    /// same on the gateway and the booking-service. Unset, it is derived
    /// from JWT_SECRET; with neither, on-sales cannot be set up.
    #[arg(long, env = "ADMISSION_SECRET", hide_env_values = true)]
    pub admission_secret: Option<String>,
}

impl AuthSettings {
    /// The key admission tokens are signed and verified with: the
    /// admission secret, else one derived from the JWT secret (a different
    /// key, so an admission token never passes as a bearer token).
    pub fn admission_key(&self) -> Option<crate::admission::AdmissionKey> {
        match (&self.admission_secret, &self.jwt_secret) {
            (Some(secret), _) if secret.len() >= MIN_SECRET_BYTES => Some(crate::admission::AdmissionKey::new(secret)),
            (None, Some(secret)) if secret.len() >= MIN_SECRET_BYTES => {
                Some(crate::admission::AdmissionKey::new(&format!("{secret}:waiting-room-admission")))
            }
            _ => None,
        }
    }

    /// The token rules these settings ask for.
    pub fn rules(&self) -> TokenRules {
        TokenRules {
            issuer: self.jwt_issuer.clone().filter(|i| !i.is_empty()),
            audience: self.jwt_audience.clone().filter(|a| !a.is_empty()),
            allow_hs256_with_jwks: self.jwt_allow_hs256,
            role_claim: Some(self.jwt_role_claim.clone()).filter(|c| !c.is_empty() && c != "role"),
        }
    }

    /// A token for this process itself (`sub` = `subject`), signed with the
    /// HS256 secret and carrying the required issuer and audience; `None`
    /// without a secret that verifiers accept (a JWKS-only setup gets its
    /// service tokens from the identity provider).
    pub fn service_token(&self, subject: &str, ttl_secs: i64) -> Option<Result<String, jsonwebtoken::errors::Error>> {
        let secret = self.jwt_secret.as_deref().filter(|s| !s.is_empty())?;
        let jwks = [&self.jwt_jwks, &self.jwt_jwks_url].iter().any(|v| v.as_deref().is_some_and(|s| !s.is_empty()));
        if jwks && !self.jwt_allow_hs256 {
            return None;
        }
        let rules = self.rules();
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: subject.to_owned(),
            exp: now + ttl_secs,
            iat: Some(now),
            role: None,
            iss: rules.issuer,
            aud: rules.audience.map(serde_json::Value::String),
            other: serde_json::Map::new(),
        };
        Some(encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())))
    }

    /// Whether any key source is set.
    pub fn has_keys(&self) -> bool {
        [&self.jwt_secret, &self.jwt_jwks, &self.jwt_jwks_url]
            .iter()
            .any(|v| v.as_deref().is_some_and(|s| !s.is_empty()))
    }

    /// The verifier these settings describe; a JWKS URL is fetched once now
    /// (a failure is logged, and retried when a token needs it).
    pub async fn verifier(&self) -> Result<Arc<Verifier>, AuthConfigError> {
        let verifier =
            Verifier::new(self.jwt_secret.as_deref(), self.jwt_jwks.as_deref(), self.jwt_jwks_url.as_deref())?
                .with_rules(self.rules());
        verifier.prefetch().await;
        Ok(Arc::new(verifier))
    }
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "***"))
            .field("jwt_jwks", &self.jwt_jwks.as_ref().map(|_| "<set>"))
            .field("jwt_jwks_url", &self.jwt_jwks_url)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_allow_hs256", &self.jwt_allow_hs256)
            .field("admission_secret", &self.admission_secret.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Verifies bearer tokens.
pub struct Verifier {
    secret: Option<DecodingKey>,
    keys: Vec<Key>,
    remote: Option<Arc<RemoteJwks>>,
    rules: TokenRules,
    /// The claim checks of each accepted algorithm, built from `rules` once
    /// rather than for every token.
    validations: Validations,
    /// Tokens verified with a key that cannot change while this runs.
    verified: crate::verified::VerifiedTokens,
}

/// The claim checks of the accepted algorithms.
struct Validations {
    hs256: Validation,
    rs256: Validation,
    es256: Validation,
}

impl Validations {
    fn new(rules: &TokenRules) -> Self {
        Self {
            hs256: validation(rules, Algorithm::HS256),
            rs256: validation(rules, Algorithm::RS256),
            es256: validation(rules, Algorithm::ES256),
        }
    }

    fn of(&self, alg: Algorithm) -> &Validation {
        match alg {
            Algorithm::RS256 => &self.rs256,
            Algorithm::ES256 => &self.es256,
            _ => &self.hs256,
        }
    }
}

/// What a token signed with `alg` must carry and satisfy under `rules`.
fn validation(rules: &TokenRules, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    match &rules.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    if let Some(issuer) = &rules.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    validation
}

impl Verifier {
    /// Builds from a secret, a JWKS (path or inline JSON) and/or a JWKS URL.
    pub fn new(secret: Option<&str>, jwks: Option<&str>, jwks_url: Option<&str>) -> Result<Self, AuthConfigError> {
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
                let keys = parse_jwks(&json).map_err(AuthConfigError::BadJwks)?;
                if keys.is_empty() {
                    return Err(AuthConfigError::BadJwks("no RS256 or ES256 signing key in it".into()));
                }
                keys
            }
        };
        let remote = match jwks_url.map(str::trim).filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(AuthConfigError::BadJwksUrl);
                }
                Some(Arc::new(RemoteJwks::new(url).map_err(AuthConfigError::BadJwks)?))
            }
        };
        if secret.is_none() && keys.is_empty() && remote.is_none() {
            return Err(AuthConfigError::Missing);
        }
        let rules = TokenRules::default();
        let validations = Validations::new(&rules);
        Ok(Self { secret, keys, remote, rules, validations, verified: Default::default() })
    }

    /// The same verifier, also checking `rules`.
    pub fn with_rules(mut self, rules: TokenRules) -> Self {
        self.validations = Validations::new(&rules);
        self.rules = rules;
        self
    }

    /// The same verifier, fetching a JWKS URL at most once per `interval` (tests shorten it).
    pub fn with_min_refresh(mut self, interval: Duration) -> Self {
        if let Some(remote) = self.remote.as_mut().and_then(Arc::get_mut) {
            remote.min_refresh = interval;
        }
        self
    }

    /// How many times the JWKS URL was fetched.
    pub fn jwks_fetches(&self) -> u64 {
        self.remote.as_ref().map_or(0, |r| r.fetches.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Fetches the JWKS URL now, if one is set.
    pub async fn prefetch(&self) {
        if let Some(remote) = &self.remote {
            remote.refresh().await;
        }
    }

    fn any_jwks(&self) -> bool {
        !self.keys.is_empty() || self.remote.is_some()
    }

    /// The caller named by a valid, unexpired token. A token verified
    /// before with the secret or a JWKS given at start is answered from
    /// memory until it expires (`crate::verified`); a token of a JWKS
    /// fetched from a URL is checked every time, so a key the identity
    /// provider withdraws stops working at its next fetch.
    pub async fn verify(&self, token: &str) -> Result<AuthUser, TokenError> {
        let now = chrono::Utc::now().timestamp();
        if let Some(user) = self.verified.get(token, now) {
            return Ok(user);
        }
        let (user, alg) = self.check(token).await?;
        if alg == Algorithm::HS256 || self.remote.is_none() {
            self.verified.remember(token, &user, now);
        }
        Ok(user)
    }

    /// Tokens remembered as verified (tests read it).
    pub fn remembered(&self) -> usize {
        self.verified.len()
    }

    /// The signature, the claims and the rules, checked; with the algorithm.
    async fn check(&self, token: &str) -> Result<(AuthUser, Algorithm), TokenError> {
        let header = decode_header(token).map_err(TokenError::Malformed)?;
        let candidates: Vec<DecodingKey> = match header.alg {
            Algorithm::HS256 if self.any_jwks() && !self.rules.allow_hs256_with_jwks => {
                return Err(TokenError::Algorithm(Algorithm::HS256))
            }
            Algorithm::HS256 => self.secret.iter().cloned().collect(),
            Algorithm::RS256 | Algorithm::ES256 => self.public_keys(header.alg, header.kid.as_deref()).await,
            other => return Err(TokenError::Algorithm(other)),
        };
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey);
        }
        let validation = self.validations.of(header.alg);
        let mut last = TokenError::UnknownKey;
        for key in &candidates {
            match decode::<Claims>(token, key, validation) {
                Ok(data) => {
                    let claims = data.claims;
                    if claims.sub.is_empty() || claims.sub.len() > MAX_SUBJECT_LEN {
                        return Err(TokenError::Subject);
                    }
                    let (role, path) = (claims.role.as_deref(), self.rules.role_claim.as_deref());
                    let admin = crate::roles::is_admin(role, &claims.other, path);
                    let user = AuthUser {
                        admin,
                        reads_events: admin
                            || crate::roles::has_role(role, &claims.other, path, crate::roles::EVENTS_ROLE),
                        user_id: claims.sub,
                        expires_at: claims.exp,
                    };
                    return Ok((user, header.alg));
                }
                Err(error) => last = TokenError::Invalid(error),
            }
        }
        Err(last)
    }

    /// Keys that may have signed a token with `alg` and `kid` (a token
    /// without `kid` may be signed by any key of its algorithm).
    async fn public_keys(&self, alg: Algorithm, kid: Option<&str>) -> Vec<DecodingKey> {
        let matching = |keys: &[Key]| -> Vec<DecodingKey> {
            keys.iter()
                .filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
                .map(|k| k.key.clone())
                .collect()
        };
        let mut found = matching(&self.keys);
        if let Some(remote) = &self.remote {
            let (keys, fetched) = remote.keys.read().await.clone();
            let mut remote_found = matching(&keys);
            let stale = fetched.is_none_or(|at| at.elapsed() > JWKS_MAX_AGE);
            // Stale-while-revalidate: the keys held answer now, a fetch
            // runs beside; no request waits for the identity provider (a
            // token signed with a key rotated in a moment ago is refused
            // until that fetch lands).
            if (remote_found.is_empty() && found.is_empty()) || stale {
                remote.refresh_in_background();
            }
            found.append(&mut remote_found);
        }
        found
    }
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Signs an HS256 token for `user_id` valid for `ttl_secs` (the `ticketing token` command).
pub fn issue_token(
    secret: &str,
    user_id: &str,
    admin: bool,
    ttl_secs: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    issue_token_with_role(secret, user_id, admin.then_some(crate::roles::ADMIN_ROLE), ttl_secs)
}

/// [`issue_token`] with any `role` claim (`events` for a feed reader).
pub fn issue_token_with_role(
    secret: &str,
    user_id: &str,
    role: Option<&str>,
    ttl_secs: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: user_id.to_owned(),
        exp: now + ttl_secs,
        iat: Some(now),
        role: role.map(str::to_owned),
        iss: None,
        aud: None,
        other: serde_json::Map::new(),
    };
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::time::Instant;

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes";

    /// A token with arbitrary claims, signed with `SECRET`.
    fn hs256(claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn secret_only() -> Verifier {
        Verifier::new(Some(SECRET), None, None).unwrap()
    }

    #[tokio::test]
    async fn identity_provider_tokens_with_iss_aud_nbf_and_jti_are_accepted_when_those_are_not_configured() {
        let token = hs256(serde_json::json!({
            "sub": "user_idp", "exp": now() + 60, "nbf": now() - 5, "iat": now(),
            "iss": "https://idp.example/realms/tickets", "aud": ["ticketing", "account"], "jti": "j-1"
        }));
        assert_eq!(secret_only().verify(&token).await.map(|u| u.user_id).ok(), Some("user_idp".to_owned()));
    }

    #[tokio::test]
    async fn a_verified_token_is_remembered_but_its_signature_on_another_payload_is_checked_and_refused() {
        let verifier = secret_only();
        let genuine = hs256(serde_json::json!({"sub": "ann", "exp": now() + 60}));
        assert_eq!(verifier.verify(&genuine).await.unwrap().user_id, "ann");
        assert_eq!(verifier.remembered(), 1);
        assert_eq!(verifier.verify(&genuine).await.unwrap().user_id, "ann", "from memory");
        // Ann's signature on a payload naming Mallory.
        let signature = genuine.rsplit('.').next().unwrap();
        let forged_claims = hs256(serde_json::json!({"sub": "mallory", "exp": now() + 60}));
        let (head_and_payload, _) = forged_claims.rsplit_once('.').unwrap();
        let forged = format!("{head_and_payload}.{signature}");
        assert!(matches!(verifier.verify(&forged).await, Err(TokenError::Invalid(_))));
        assert_eq!(verifier.remembered(), 1, "a refused token is not remembered");
        // An expired token is refused, remembered or not.
        let old = hs256(serde_json::json!({"sub": "ann", "exp": now() - 60}));
        assert!(verifier.verify(&old).await.is_err());
    }

    #[tokio::test]
    async fn issuer_and_audience_are_enforced_when_configured() {
        let rules = TokenRules {
            issuer: Some("https://idp.example".into()),
            audience: Some("ticketing".into()),
            ..TokenRules::default()
        };
        let verifier = secret_only().with_rules(rules);
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
        assert!(verifier.verify(&token(Some("https://idp.example"), Some("ticketing"))).await.is_ok());
        assert!(verifier.verify(&token(Some("https://other.example"), Some("ticketing"))).await.is_err(), "wrong iss");
        assert!(verifier.verify(&token(Some("https://idp.example"), Some("billing"))).await.is_err(), "wrong aud");
        assert!(verifier.verify(&token(None, Some("ticketing"))).await.is_err(), "missing iss");
        assert!(verifier.verify(&token(Some("https://idp.example"), None)).await.is_err(), "missing aud");
    }

    #[tokio::test]
    async fn a_service_token_carries_the_required_issuer_and_audience_and_needs_an_accepted_secret() {
        let settings = AuthSettings {
            jwt_secret: Some(SECRET.into()),
            jwt_jwks: None,
            jwt_jwks_url: None,
            jwt_issuer: Some("https://idp.example".into()),
            jwt_audience: Some("ticketing".into()),
            jwt_allow_hs256: false,
            jwt_role_claim: "role".into(),
            admission_secret: None,
        };
        let token = settings.service_token("system:gateway", 60).unwrap().unwrap();
        let verified = settings.verifier().await.unwrap().verify(&token).await.unwrap();
        assert_eq!((verified.user_id.as_str(), verified.admin), ("system:gateway", false));
        let jwks_only = AuthSettings { jwt_jwks_url: Some("https://idp.example/jwks".into()), ..settings };
        assert!(jwks_only.service_token("system:gateway", 60).is_none(), "HS256 is refused beside a JWKS");
    }

    #[tokio::test]
    async fn a_token_that_is_not_valid_yet_is_refused() {
        let early = hs256(serde_json::json!({"sub": "u", "exp": now() + 600, "nbf": now() + 300}));
        assert!(matches!(secret_only().verify(&early).await, Err(TokenError::Invalid(_))));
    }

    #[test]
    fn a_secret_shorter_than_32_bytes_is_refused_at_start() {
        assert!(matches!(Verifier::new(Some("s3cret"), None, None), Err(AuthConfigError::WeakSecret)));
        assert!(Verifier::new(Some(&"k".repeat(MIN_SECRET_BYTES)), None, None).is_ok());
    }

    #[tokio::test]
    async fn with_a_jwks_hs256_is_refused_unless_allowed() {
        let token = issue_token(SECRET, "u", false, 60).unwrap();
        let strict = Verifier::new(Some(SECRET), Some(EC_JWKS), None).unwrap();
        assert!(matches!(strict.verify(&token).await, Err(TokenError::Algorithm(Algorithm::HS256))));
        let allowing = Verifier::new(Some(SECRET), Some(EC_JWKS), None)
            .unwrap()
            .with_rules(TokenRules { allow_hs256_with_jwks: true, ..TokenRules::default() });
        assert!(allowing.verify(&token).await.is_ok());
    }

    #[tokio::test]
    async fn hs256_tokens_verify_and_carry_the_admin_role() {
        let verifier = secret_only();
        let token = issue_token(SECRET, "user_1", true, 60).unwrap();
        let verified = verifier.verify(&token).await.unwrap();
        assert_eq!((verified.user_id.as_str(), verified.admin), ("user_1", true));
        let plain = issue_token(SECRET, "user_2", false, 60).unwrap();
        assert_eq!(verifier.verify(&plain).await.map(|u| u.admin).ok(), Some(false));
    }

    #[tokio::test]
    async fn bad_signatures_expired_malformed_and_oversized_subjects_are_rejected() {
        let verifier = secret_only();
        let forged = issue_token("another-secret-of-at-least-32-bytes", "u", false, 60).unwrap();
        assert!(matches!(verifier.verify(&forged).await, Err(TokenError::Invalid(_))));
        assert!(verifier.verify(&issue_token(SECRET, "u", false, -120).unwrap()).await.is_err());
        assert!(matches!(verifier.verify("not.a.jwt").await, Err(TokenError::Malformed(_))));
        assert!(verifier.verify("").await.is_err());
        let long = issue_token(SECRET, &"u".repeat(MAX_SUBJECT_LEN + 1), false, 60).unwrap();
        assert!(matches!(verifier.verify(&long).await, Err(TokenError::Subject)));
        // {"alg":"none","typ":"JWT"} with a valid payload and no signature.
        let signed = hs256(serde_json::json!({"sub": "u", "exp": now() + 60}));
        let payload = signed.split('.').nth(1).unwrap();
        let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(verifier.verify(&unsigned).await.is_err(), "alg none");
    }

    #[test]
    fn bearer_values_are_parsed_case_insensitively_and_empty_ones_refused() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("BEARER abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
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
        let claims = Claims {
            sub: "user_es".into(),
            exp: now + exp_offset,
            iat: Some(now),
            role: None,
            iss: None,
            aud: None,
            other: serde_json::Map::new(),
        };
        encode(&header, &claims, &EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn es256_tokens_verify_against_the_jwks_inline_or_from_a_file() {
        let inline = Verifier::new(None, Some(EC_JWKS), None).unwrap();
        assert_eq!(inline.verify(&es256_token(Some("k1"), 60)).await.map(|u| u.user_id).ok(), Some("user_es".into()));
        assert!(inline.verify(&es256_token(None, 60)).await.is_ok(), "a token without kid uses any matching key");
        assert!(matches!(inline.verify(&es256_token(Some("other"), 60)).await, Err(TokenError::UnknownKey)));
        assert!(inline.verify(&es256_token(Some("k1"), -120)).await.is_err(), "expired");
        assert!(
            inline.verify(&issue_token(SECRET, "u", false, 60).unwrap()).await.is_err(),
            "no HS256 without a secret"
        );

        let path = std::env::temp_dir().join(format!("jwks-{}.json", std::process::id()));
        std::fs::write(&path, EC_JWKS).unwrap();
        let from_file = Verifier::new(None, path.to_str(), None).unwrap();
        assert!(from_file.verify(&es256_token(Some("k1"), 60)).await.is_ok());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_verifier_needs_a_secret_or_keys_and_a_jwks_url_must_be_http() {
        assert!(matches!(Verifier::new(None, None, None), Err(AuthConfigError::Missing)));
        assert!(Verifier::new(None, Some("{\"keys\": 5}"), None).is_err());
        assert!(Verifier::new(None, Some(r#"{"keys": []}"#), None).is_err(), "a JWKS without signing keys");
        assert!(matches!(Verifier::new(None, None, Some("file:///etc/passwd")), Err(AuthConfigError::BadJwksUrl)));
        assert!(Verifier::new(None, None, Some("https://idp.example/jwks")).is_ok());
    }

    /// A local identity provider serving a JWKS that the test can change, counting requests.
    struct Idp {
        url: String,
        jwks: Arc<std::sync::Mutex<String>>,
        hits: Arc<std::sync::atomic::AtomicU64>,
    }

    async fn idp(initial: &str) -> Idp {
        let jwks = Arc::new(std::sync::Mutex::new(initial.to_owned()));
        let hits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get({
                let (jwks, hits) = (jwks.clone(), hits.clone());
                move || async move {
                    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    jwks.lock().unwrap().clone()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Idp { url, jwks, hits }
    }

    #[tokio::test]
    async fn a_jwks_url_is_fetched_cached_and_refetched_on_an_unknown_kid_at_most_once_per_interval() {
        let idp = idp(r#"{"keys": []}"#).await;
        let verifier = Verifier::new(None, None, Some(&idp.url)).unwrap().with_min_refresh(Duration::from_millis(300));
        verifier.prefetch().await;
        assert_eq!(idp.hits.load(std::sync::atomic::Ordering::SeqCst), 1);

        // The provider rotates in key k1; within the interval, an unknown kid fetches nothing.
        *idp.jwks.lock().unwrap() = EC_JWKS.to_owned();
        assert!(matches!(verifier.verify(&es256_token(Some("k1"), 60)).await, Err(TokenError::UnknownKey)));
        assert_eq!(idp.hits.load(std::sync::atomic::Ordering::SeqCst), 1, "rate-limited");

        // After it, the unknown kid starts one fetch beside the request (which
        // does not wait for it), and once it lands the key verifies.
        tokio::time::sleep(Duration::from_millis(350)).await;
        let started = Instant::now();
        let _ = verifier.verify(&es256_token(Some("k1"), 60)).await;
        assert!(started.elapsed() < Duration::from_millis(100), "the request did not wait for the fetch");
        let mut verified = false;
        for _ in 0..50 {
            if verifier.verify(&es256_token(Some("k1"), 60)).await.is_ok() {
                verified = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(verified, "the rotated-in key verifies once fetched");
        assert_eq!(idp.hits.load(std::sync::atomic::Ordering::SeqCst), 2);

        // Cached: known kids cost no fetch.
        for _ in 0..20 {
            assert!(verifier.verify(&es256_token(Some("k1"), 60)).await.is_ok());
        }
        assert_eq!(idp.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(verifier.remembered(), 0, "a fetched key's tokens are checked every time");

        // A flood of unknown kids costs at most one fetch per interval.
        let flood = (0..50).map(|n| {
            let token = es256_token(Some(&format!("forged-{n}")), 60);
            let verifier = &verifier;
            async move { verifier.verify(&token).await }
        });
        let results = futures::future::join_all(flood).await;
        assert!(results.iter().all(Result::is_err));
        assert!(idp.hits.load(std::sync::atomic::Ordering::SeqCst) <= 3, "{} fetches", verifier.jwks_fetches());
    }

    #[tokio::test]
    async fn an_unreachable_jwks_url_refuses_tokens_without_failing_start() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        drop(listener);
        let verifier = Verifier::new(None, None, Some(&url)).unwrap().with_min_refresh(Duration::ZERO);
        verifier.prefetch().await;
        assert!(matches!(verifier.verify(&es256_token(Some("k1"), 60)).await, Err(TokenError::UnknownKey)));
    }
}
