//! Admission tokens of the on-sale waiting room: HS256 JWTs naming the
//! user, the performance and the admission, with an expiry. The
//! booking-service signs one when a place is admitted; the gateway and the
//! booking-service verify it at `POST /bookings`. The key is not the user
//! tokens' key, and the audience is `admission`, so neither kind of token
//! passes as the other.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

const AUDIENCE: &str = "admission";

/// What an admission token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The admitted user.
    pub sub: String,
    /// The performance.
    pub perf: String,
    /// The admission's id (one per admitted place).
    pub adm: String,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Always `admission`.
    pub aud: String,
}

/// The key admission tokens are signed and checked with.
#[derive(Clone)]
pub struct AdmissionKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for AdmissionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdmissionKey(***)")
    }
}

impl AdmissionKey {
    /// From a secret.
    pub fn new(secret: &str) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// A token admitting `user` to `performance` until `exp`.
    pub fn sign(&self, user: &str, performance: &str, admission_id: &str, exp: i64) -> Option<String> {
        let claims = Admission {
            sub: user.to_owned(),
            perf: performance.to_owned(),
            adm: admission_id.to_owned(),
            exp,
            aud: AUDIENCE.to_owned(),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).ok()
    }

    /// The admission `token` grants, if it is genuine, unexpired, and for
    /// `user` and `performance`.
    pub fn verify(&self, token: &str, user: &str, performance: &str) -> Option<Admission> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        let admission = decode::<Admission>(token, &self.decoding, &validation).ok()?.claims;
        (admission.sub == user && admission.perf == performance).then_some(admission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_admits_only_its_user_to_its_performance_until_it_expires() {
        let key = AdmissionKey::new("an-admission-secret-of-enough-bytes");
        let exp = chrono::Utc::now().timestamp() + 60;
        let token = key.sign("ann", "perf_1", "a1", exp).unwrap();
        assert_eq!(key.verify(&token, "ann", "perf_1").map(|a| a.adm), Some("a1".into()));
        assert!(key.verify(&token, "bob", "perf_1").is_none(), "another user");
        assert!(key.verify(&token, "ann", "perf_2").is_none(), "another performance");
        let other = AdmissionKey::new("another-admission-secret-of-enough-bytes");
        assert!(other.verify(&token, "ann", "perf_1").is_none(), "forged");
        let old = key.sign("ann", "perf_1", "a1", chrono::Utc::now().timestamp() - 1).unwrap();
        assert!(key.verify(&old, "ann", "perf_1").is_none(), "expired");
    }
}
