//! Waiting for a payment intent that is not there yet, without polling per
//! request. A client may pay the moment its booking is answered, before
//! `SeatLocked` has travelled over Kafka and created the intent; the
//! request then waits (`INTENT_WAIT_MS`) for the intent's creation:
//!
//! - in this process, the consumer announces each intent it created as
//!   soon as its transaction commits, waking exactly that intent's waiters;
//! - created by another replica, it is found by one watcher per process
//!   that, only while someone waits, asks the store every
//!   [`WATCH_INTERVAL`] for all awaited ids in one query.
//!
//! So a thousand waiting requests cost one small query per interval, not a
//! thousand, and none while nobody waits.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::domain::intent::PaymentIntent;

/// How often the watcher looks for intents created by other replicas.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// Intents being waited for, each with the signal its waiters wait on.
#[derive(Default)]
pub struct IntentArrivals {
    waiting: Mutex<HashMap<String, Arc<Notify>>>,
    someone_waits: Notify,
}

/// One waiter's registration; dropping it forgets the intent when it was the last.
pub struct Waiting<'a> {
    arrivals: &'a IntentArrivals,
    intent: String,
    signal: Arc<Notify>,
}

impl Waiting<'_> {
    /// The signal that fires when the intent may have arrived.
    pub fn signal(&self) -> &Notify {
        &self.signal
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = self.arrivals.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's handle and ours: nobody else waits for this intent.
        if Arc::strong_count(&self.signal) <= 2 {
            waiting.remove(&self.intent);
        }
    }
}

impl IntentArrivals {
    /// Registers interest in `intent` (before looking for it, so an arrival
    /// in between is not missed).
    pub fn wait_for(&self, intent: &str) -> Waiting<'_> {
        let signal = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            waiting.entry(intent.to_owned()).or_default().clone()
        };
        self.someone_waits.notify_one();
        Waiting { arrivals: self, intent: intent.to_owned(), signal }
    }

    /// `intent` was created (committed): wakes its waiters.
    pub fn announce(&self, intent: &str) {
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(signal) = waiting.get(intent) {
            signal.notify_waiters();
        }
    }

    fn awaited(&self) -> Vec<String> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    /// Finds intents created by other replicas while anyone waits, until `shutdown`.
    pub async fn watch(self: Arc<Self>, pool: PgPool, shutdown: shared::shutdown::Shutdown) {
        loop {
            let awaited = self.awaited();
            if awaited.is_empty() {
                tokio::select! {
                    () = self.someone_waits.notified() => continue,
                    () = shutdown.cancelled() => return,
                }
            }
            match shared::aggregate::existing::<PaymentIntent>(&pool, &awaited).await {
                Ok(found) => found.iter().for_each(|intent| self.announce(intent)),
                Err(error) => tracing::debug!(%error, "looking for awaited payment intents"),
            }
            if !shared::shutdown::sleep_or_shutdown(WATCH_INTERVAL, &shutdown).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn an_announcement_wakes_the_waiters_of_that_intent_only_and_registrations_are_forgotten() {
        let arrivals = IntentArrivals::default();
        let first = arrivals.wait_for("pi_1");
        let second = arrivals.wait_for("pi_1");
        let other = arrivals.wait_for("pi_2");
        {
            let (a, b, c) = (first.signal().notified(), second.signal().notified(), other.signal().notified());
            tokio::pin!(a, b, c);
            a.as_mut().enable();
            b.as_mut().enable();
            c.as_mut().enable();
            arrivals.announce("pi_1");
            tokio::time::timeout(Duration::from_millis(100), a).await.expect("the first waiter is woken");
            tokio::time::timeout(Duration::from_millis(100), b).await.expect("the second waiter is woken");
            assert!(tokio::time::timeout(Duration::from_millis(50), c).await.is_err(), "pi_2 not woken");
        }
        drop(first);
        assert_eq!(arrivals.awaited().len(), 2, "pi_1 still awaited by the second");
        drop(second);
        drop(other);
        assert!(arrivals.awaited().is_empty());
    }
}
