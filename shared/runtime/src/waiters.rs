//! Waiting for something to happen to an aggregate (a payment intent to be
//! created, a booking to be decided) without polling per request:
//!
//! - in this process, whoever commits the change (a consumer, after its
//!   transaction) announces the aggregate's id, waking exactly its waiters;
//! - done by another replica, it is found by one watcher per process that,
//!   only while someone waits, asks the store every [`WATCH_INTERVAL`] about
//!   all awaited ids in one query.
//!
//! So a thousand waiting requests cost one small query per interval, not a
//! thousand, and none while nobody waits.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::Notify;

/// How often the watcher asks about what other replicas did.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// Ids being waited for, each with the signal its waiters wait on.
#[derive(Default)]
pub struct Waiters {
    waiting: Mutex<HashMap<String, Arc<Notify>>>,
    someone_waits: Notify,
}

/// One waiter's registration; dropping it forgets the id when it was the last.
pub struct Waiting<'a> {
    waiters: &'a Waiters,
    id: String,
    signal: Arc<Notify>,
}

impl Waiting<'_> {
    /// The signal that fires when the aggregate may have changed.
    pub fn signal(&self) -> &Notify {
        &self.signal
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = self.waiters.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's handle and ours: nobody else waits for this id.
        if Arc::strong_count(&self.signal) <= 2 {
            waiting.remove(&self.id);
        }
    }
}

impl Waiters {
    /// Registers interest in `id` (before looking at the store, so a
    /// change in between is not missed).
    pub fn wait_for(&self, id: &str) -> Waiting<'_> {
        let signal = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            waiting.entry(id.to_owned()).or_default().clone()
        };
        self.someone_waits.notify_one();
        Waiting { waiters: self, id: id.to_owned(), signal }
    }

    /// Something happened to `id` (committed): wakes its waiters.
    pub fn announce(&self, id: &str) {
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(signal) = waiting.get(id) {
            signal.notify_waiters();
        }
    }

    fn awaited(&self) -> Vec<String> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    /// While anyone waits, asks `find` (one query for all awaited ids) which
    /// of them arrived, every [`WATCH_INTERVAL`], until `shutdown`.
    pub async fn watch<F, Fut>(self: Arc<Self>, find: F, shutdown: edge::shutdown::Shutdown)
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: Future<Output = Result<Vec<String>, sqlx::Error>>,
    {
        loop {
            let awaited = self.awaited();
            if awaited.is_empty() {
                tokio::select! {
                    () = self.someone_waits.notified() => continue,
                    () = shutdown.cancelled() => return,
                }
            }
            match find(awaited).await {
                Ok(found) => found.iter().for_each(|id| self.announce(id)),
                Err(error) => tracing::debug!(%error, "looking for awaited changes"),
            }
            if !edge::shutdown::sleep_or_shutdown(WATCH_INTERVAL, &shutdown).await {
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
        let waiters = Waiters::default();
        let first = waiters.wait_for("pi_1");
        let second = waiters.wait_for("pi_1");
        let other = waiters.wait_for("pi_2");
        {
            let (a, b, c) = (first.signal().notified(), second.signal().notified(), other.signal().notified());
            tokio::pin!(a, b, c);
            a.as_mut().enable();
            b.as_mut().enable();
            c.as_mut().enable();
            waiters.announce("pi_1");
            tokio::time::timeout(Duration::from_millis(100), a).await.expect("the first waiter is woken");
            tokio::time::timeout(Duration::from_millis(100), b).await.expect("the second waiter is woken");
            assert!(tokio::time::timeout(Duration::from_millis(50), c).await.is_err(), "pi_2 not woken");
        }
        drop(first);
        assert_eq!(waiters.awaited().len(), 2, "pi_1 still awaited by the second");
        drop(second);
        drop(other);
        assert!(waiters.awaited().is_empty());
    }
}
