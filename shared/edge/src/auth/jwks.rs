//! Public keys from a JWKS: given at start (`JWT_JWKS`) or fetched from an
//! identity provider's `JWT_JWKS_URL`, at most one fetch at a time and none
//! sooner than [`JWKS_MIN_REFRESH`] after the last try.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use jsonwebtoken::{
    jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
    Algorithm, DecodingKey,
};

use super::JWKS_MIN_REFRESH;

/// How long one JWKS fetch may take.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read.
const JWKS_MAX_BYTES: usize = 256 * 1024;

/// One public key.
#[derive(Clone)]
pub(super) struct Key {
    pub(super) kid: Option<String>,
    pub(super) alg: Algorithm,
    pub(super) key: DecodingKey,
}

/// Keys fetched from an identity provider.
pub(super) struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    pub(super) keys: tokio::sync::RwLock<(Arc<Vec<Key>>, Option<Instant>)>,
    /// When the last fetch was tried; held while fetching (one fetch at a time).
    last_try: tokio::sync::Mutex<Option<Instant>>,
    pub(super) min_refresh: Duration,
    /// How many fetches were made (tests read it).
    pub(super) fetches: std::sync::atomic::AtomicU64,
}

impl RemoteJwks {
    /// Keys of `url`, none fetched yet.
    pub(super) fn new(url: &str) -> Result<Self, String> {
        let client = reqwest::Client::builder().timeout(JWKS_FETCH_TIMEOUT).build().map_err(|e| e.to_string())?;
        Ok(Self {
            url: url.to_owned(),
            client,
            keys: tokio::sync::RwLock::new((Arc::new(Vec::new()), None)),
            last_try: tokio::sync::Mutex::new(None),
            min_refresh: JWKS_MIN_REFRESH,
            fetches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Starts a fetch beside the caller, unless one runs or the last try
    /// was less than `min_refresh` ago.
    pub(super) fn refresh_in_background(self: &Arc<Self>) {
        let due = self.last_try.try_lock().is_ok_and(|last| last.is_none_or(|at| at.elapsed() >= self.min_refresh));
        if due {
            let remote = Arc::clone(self);
            tokio::spawn(async move { remote.refresh().await });
        }
    }

    /// Fetches the key set unless the last try was less than `min_refresh`
    /// ago; concurrent callers wait for the one fetch in progress.
    pub(super) async fn refresh(&self) {
        let mut last_try = self.last_try.lock().await;
        if last_try.is_some_and(|at| at.elapsed() < self.min_refresh) {
            return;
        }
        *last_try = Some(Instant::now());
        self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "fetched the identity provider's JWKS");
                *self.keys.write().await = (Arc::new(keys), Some(Instant::now()));
            }
            Err(error) => tracing::warn!(url = %self.url, %error, "fetching the JWKS failed; keeping the keys held"),
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let response = self.client.get(&self.url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        if response.content_length().is_some_and(|n| n > JWKS_MAX_BYTES as u64) {
            return Err("the JWKS is too large".into());
        }
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > JWKS_MAX_BYTES {
            return Err("the JWKS is too large".into());
        }
        parse_jwks(&String::from_utf8_lossy(&body))
    }
}

/// The RS256/ES256 signing keys of a JWKS document; other keys (encryption
/// keys, other algorithms) are skipped.
pub(super) fn parse_jwks(json: &str) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(set.keys.iter().filter_map(signing_key).collect())
}

fn signing_key(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(_), None | Some(KeyAlgorithm::ES256)) => Algorithm::ES256,
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|error| tracing::warn!(%error, kid = ?jwk.common.key_id, "skipping a JWKS key that does not decode"))
        .ok()?;
    Some(Key { kid: jwk.common.key_id.clone(), alg, key })
}
