//! Tokens verified lately. A client sends the same bearer token with every
//! request, and the gateway and each service behind it verify it again: a
//! header parse, a signature check and a claims parse per hop. A token
//! verified with a key that cannot change while the process runs (the
//! shared secret, or a JWKS given at start) is remembered here until it
//! expires, keyed by the whole token: never by its signature alone, so a
//! payload carrying a copied signature is checked like any other token.
//! Bounded: when full, expired tokens are dropped, and if none had expired,
//! all of them.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::auth::{AuthUser, LEEWAY_SECS};

/// Tokens remembered at most (a few hundred bytes each).
pub const REMEMBERED_AT_MOST: usize = 16_384;

/// Verified tokens and whom they name.
#[derive(Default)]
pub struct VerifiedTokens {
    tokens: Mutex<HashMap<Box<str>, AuthUser>>,
}

impl VerifiedTokens {
    /// The caller `token` names, if it was verified here and is still valid
    /// at `now` (Unix seconds, with the verifier's leeway).
    pub fn get(&self, token: &str, now: i64) -> Option<AuthUser> {
        let tokens = self.tokens.lock().ok()?;
        tokens.get(token).filter(|user| valid_at(user, now)).cloned()
    }

    /// Remembers that `token` was verified and names `user`.
    pub fn remember(&self, token: &str, user: &AuthUser, now: i64) {
        let Ok(mut tokens) = self.tokens.lock() else { return };
        if tokens.len() >= REMEMBERED_AT_MOST {
            tokens.retain(|_, user| valid_at(user, now));
            if tokens.len() >= REMEMBERED_AT_MOST {
                tokens.clear();
            }
        }
        tokens.insert(token.into(), user.clone());
    }

    /// How many tokens are remembered.
    pub fn len(&self) -> usize {
        self.tokens.lock().map_or(0, |tokens| tokens.len())
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// As the verifier judges `exp`: refused once `exp` plus the leeway has passed.
fn valid_at(user: &AuthUser, now: i64) -> bool {
    user.expires_at.saturating_add(i64::try_from(LEEWAY_SECS).unwrap_or(0)) >= now
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, expires_at: i64) -> AuthUser {
        AuthUser { user_id: name.into(), admin: false, reads_events: false, expires_at }
    }

    #[test]
    fn a_remembered_token_names_its_user_until_it_expires_with_the_leeway() {
        let tokens = VerifiedTokens::default();
        tokens.remember("t1", &user("ann", 1_000), 900);
        assert_eq!(tokens.get("t1", 1_000).map(|u| u.user_id), Some("ann".to_owned()));
        assert!(tokens.get("t1", 1_000 + 5).is_some(), "within the leeway");
        assert!(tokens.get("t1", 1_000 + 6).is_none(), "expired");
        assert!(tokens.get("t2", 900).is_none(), "never verified");
    }

    #[test]
    fn a_full_cache_drops_the_expired_first_and_everything_only_when_none_expired() {
        let tokens = VerifiedTokens::default();
        for n in 0..REMEMBERED_AT_MOST {
            // Every other token has expired by t = 500.
            let expires = if n % 2 == 0 { 100 } else { 10_000 };
            tokens.remember(&format!("t{n}"), &user("u", expires), 0);
        }
        tokens.remember("new", &user("u", 10_000), 500);
        assert_eq!(tokens.len(), REMEMBERED_AT_MOST / 2 + 1);
        assert!(tokens.get("t1", 500).is_some(), "a live token is kept");
        for n in 0..REMEMBERED_AT_MOST / 2 {
            tokens.remember(&format!("more{n}"), &user("u", 10_000), 500);
        }
        assert!(tokens.len() <= REMEMBERED_AT_MOST, "bounded: {}", tokens.len());
    }
}
