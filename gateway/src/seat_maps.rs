//! The seat map, cached and size-capped. During an on-sale everyone polls
//! the same map: the gateway keeps each performance's rendered JSON for a
//! short time (`GATEWAY_SEAT_MAP_CACHE_MS`) and loads it once however many
//! ask at the same moment. The cache holds at most
//! `GATEWAY_SEAT_MAP_CACHE_MIB` of JSON. A booking made through this
//! gateway drops its performance's entry, and a cancellation drops all, so
//! a user sees their own change at once; other changes show within the TTL.

use std::{future::Future, time::Duration};

use bytes::Bytes;
use moka::future::Cache;

use crate::error::ApiError;

/// Rendered seat maps by performance id.
pub struct SeatMapCache {
    cache: Option<Cache<String, Bytes>>,
}

impl SeatMapCache {
    /// Entries live `ttl` (zero turns caching off); at most `max_bytes` in all.
    pub fn new(ttl: Duration, max_bytes: u64) -> Self {
        let cache = (!ttl.is_zero()).then(|| {
            Cache::builder()
                .time_to_live(ttl)
                .max_capacity(max_bytes)
                .weigher(|_id: &String, json: &Bytes| u32::try_from(json.len()).unwrap_or(u32::MAX))
                .build()
        });
        Self { cache }
    }

    /// The cached map of `performance_id`, or `load`'s (run once for all
    /// concurrent callers; failures are not cached).
    pub async fn get_or_load<F>(&self, performance_id: &str, load: F) -> Result<Bytes, ApiError>
    where
        F: Future<Output = Result<Bytes, ApiError>>,
    {
        match &self.cache {
            None => load.await,
            Some(cache) => {
                cache.try_get_with_by_ref(performance_id, load).await.map_err(|error| ApiError::clone(&error))
            }
        }
    }

    /// Drops one performance's map (a booking changed it).
    pub async fn forget(&self, performance_id: &str) {
        if let Some(cache) = &self.cache {
            cache.invalidate(performance_id).await;
        }
    }

    /// Drops every map (a cancellation changed one we cannot name).
    pub fn forget_all(&self) {
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use super::*;

    #[tokio::test]
    async fn concurrent_readers_share_one_load_and_failures_are_not_kept() {
        let cache = Arc::new(SeatMapCache::new(Duration::from_secs(60), 1 << 20));
        let loads = Arc::new(AtomicUsize::new(0));
        let readers = (0..50).map(|_| {
            let (cache, loads) = (cache.clone(), loads.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load("perf", async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(Bytes::from_static(b"{}"))
                    })
                    .await
            })
        });
        for reader in futures::future::join_all(readers).await {
            assert_eq!(reader.unwrap().unwrap(), Bytes::from_static(b"{}"));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);

        let failed = cache.get_or_load("other", async { Err(ApiError::not_found("no")) }).await;
        assert!(failed.is_err());
        let loaded = cache.get_or_load("other", async { Ok(Bytes::from_static(b"[]")) }).await;
        assert_eq!(loaded.unwrap(), Bytes::from_static(b"[]"));

        cache.forget("perf").await;
        cache.get_or_load("perf", async { Ok(Bytes::from_static(b"new")) }).await.unwrap();
        assert_eq!(cache.get_or_load("perf", async { Ok(Bytes::new()) }).await.unwrap(), Bytes::from_static(b"new"));
    }

    #[tokio::test]
    async fn entries_larger_than_the_cap_are_not_kept() {
        let cache = SeatMapCache::new(Duration::from_secs(60), 8);
        let big = Bytes::from(vec![b'x'; 64]);
        cache.get_or_load("perf", async { Ok(big.clone()) }).await.unwrap();
        if let Some(inner) = &cache.cache {
            inner.run_pending_tasks().await;
            assert_eq!(inner.weighted_size(), 0, "over the cap: evicted");
        }
    }
}
