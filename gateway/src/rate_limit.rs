//! Per-user rate limits on the writes that hold seats or move money
//! (`POST /bookings`, `POST /payments/execute`): a token bucket per user and
//! route (GCRA, from `governor`), so one user's flood is answered 429 with
//! `Retry-After` before it reaches a service, while everyone else goes on.

use std::{num::NonZeroU32, time::Duration};

use governor::{clock::Clock, DefaultKeyedRateLimiter, Quota};

use crate::error::ApiError;

/// The per-user limiter of the gateway.
pub struct UserRateLimit {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl UserRateLimit {
    /// `per_sec` sustained requests per user and route, `burst` at once; `per_sec == 0` disables it.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_sec).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            DefaultKeyedRateLimiter::dashmap(Quota::per_second(rate).allow_burst(burst))
        });
        Self { limiter }
    }

    /// Takes one request of `user` on `route`, or answers 429 with the wait.
    pub fn check(&self, user: &str, route: &'static str) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        let key = format!("{route} {user}");
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            metrics::counter!("http_requests_rate_limited_total", "route" => route).increment(1);
            ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, "Too many requests; please slow down.")
                .retry_after(u64::try_from(wait.as_millis().div_ceil(1000)).unwrap_or(u64::MAX).max(1))
        })
    }

    /// Forgets users whose buckets are full again (bounds the memory held).
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Users (and routes) currently tracked.
    pub fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// How often idle users are forgotten.
pub const FORGET_EVERY: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_user_gets_the_burst_then_429_with_retry_after_while_others_go_on() {
        let limit = UserRateLimit::new(1, 3);
        for _ in 0..3 {
            assert!(limit.check("alice", "POST /bookings").is_ok());
        }
        let refused = limit.check("alice", "POST /bookings").unwrap_err();
        assert_eq!(refused.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.retry_after, Some(1));
        assert!(limit.check("bob", "POST /bookings").is_ok(), "other users are not affected");
        assert!(limit.check("alice", "POST /payments/execute").is_ok(), "each route has its own bucket");
    }

    #[test]
    fn zero_disables_the_limit_and_idle_users_are_forgotten() {
        let off = UserRateLimit::new(0, 0);
        for _ in 0..1000 {
            assert!(off.check("alice", "POST /bookings").is_ok());
        }
        let limit = UserRateLimit::new(1000, 1);
        limit.check("alice", "POST /bookings").unwrap();
        assert_eq!(limit.tracked(), 1);
        std::thread::sleep(Duration::from_millis(5));
        limit.forget_idle();
        assert_eq!(limit.tracked(), 0);
    }
}
