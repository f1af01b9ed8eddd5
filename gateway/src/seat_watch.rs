//! Live seat maps for any number of viewers: one watcher per watched
//! performance looks at the map (through [`SeatMaps`], so its loads are
//! shared with plain reads), compares it with the last one once, and fans
//! the change out as a ready event to every viewer. A viewer costs only its
//! own send. The watcher looks every `GATEWAY_SEAT_STREAM_EVERY_MS` and at
//! once after a write through this gateway (a booking, a cancel, a
//! payment); it stops when its last viewer leaves.
//!
//! Viewers are capped per user (429) and per gateway (503), so streams can
//! never take what requests need.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use edge::shutdown::Shutdown;
use tokio::sync::{broadcast, watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::{
    error::ApiError,
    seat_maps::{sse_frame, MapState, SeatMaps},
};

/// One change of a performance's map, ready to send. It holds no map (a
/// viewer that cannot apply it is sent the watcher's latest snapshot), so
/// the changes queued for slow viewers cost only their frames.
#[derive(Debug)]
pub struct Change {
    /// The version it applies to.
    pub from: String,
    /// The version after it.
    pub to: String,
    /// The whole `seats` Server-Sent Event: the seats whose state changed.
    pub frame: Bytes,
}

/// The seats of `now` whose state differs in `before`, as the `seats`
/// event's data; `None` when none does.
pub fn changes(before: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Option<String> {
    let changed: Vec<serde_json::Value> = now
        .iter()
        .filter(|(seat, state)| before.get(*seat) != Some(*state))
        .map(|(seat, state)| serde_json::json!({ "seatId": seat, "state": state }))
        .collect();
    (!changed.is_empty()).then(|| serde_json::json!({ "changes": changed }).to_string())
}

/// One performance's watcher, shared by its viewers.
pub struct Watcher {
    changes: broadcast::Sender<Arc<Change>>,
    latest: watch::Sender<Option<Arc<MapState>>>,
    look_now: Notify,
}

impl Watcher {
    /// The newest state the watcher has seen.
    pub fn latest(&self) -> Option<Arc<MapState>> {
        self.latest.borrow().clone()
    }
}

/// A viewer's place: its changes, and its share of the caps (given back on drop).
pub struct Viewing {
    /// Changes of the performance's map.
    pub changes: broadcast::Receiver<Arc<Change>>,
    /// The performance's watcher.
    pub watcher: Arc<Watcher>,
    _stream: OwnedSemaphorePermit,
    _user: UserSlot,
}

/// The shortest time between two looks at one map: a burst of writes
/// through the gateway is shown by one look, not one per write.
const LOOKS_AT_MOST_EVERY: Duration = Duration::from_millis(100);

/// Viewers to keep at most per performance in a watcher's queue before a
/// slow one is sent a fresh snapshot instead of every change.
const CHANGES_KEPT: usize = 64;

/// The watchers of one gateway and its caps.
pub struct SeatWatch {
    maps: Arc<SeatMaps>,
    every: Duration,
    watchers: Mutex<HashMap<String, Arc<Watcher>>>,
    streams: Arc<Semaphore>,
    per_user: Arc<Mutex<HashMap<String, usize>>>,
    max_per_user: usize,
    shutdown: Shutdown,
}

impl SeatWatch {
    /// Watchers looking every `every` through `maps`; at most `max_streams`
    /// viewers on this gateway and `max_per_user` per user.
    pub fn new(
        maps: Arc<SeatMaps>,
        every: Duration,
        max_streams: usize,
        max_per_user: usize,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            maps,
            every,
            watchers: Mutex::new(HashMap::new()),
            streams: Arc::new(Semaphore::new(max_streams)),
            per_user: Arc::new(Mutex::new(HashMap::new())),
            max_per_user,
            shutdown,
        }
    }

    /// A place for `user` among the viewers of `performance_id`, or 429
    /// (this user watches enough already) or 503 (this gateway does).
    pub fn view(self: &Arc<Self>, performance_id: &str, user: &str) -> Result<Viewing, ApiError> {
        let user_slot = UserSlot::take(&self.per_user, user, self.max_per_user).ok_or_else(|| {
            metrics::counter!("seat_streams_refused_total", "reason" => "per_user").increment(1);
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Too many seat streams open; close one first.").retry_after(5)
        })?;
        let stream = self.streams.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("seat_streams_refused_total", "reason" => "gateway").increment(1);
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "The service is busy; please retry shortly.").retry_after(5)
        })?;
        let (watcher, changes) = self.watcher(performance_id);
        Ok(Viewing { changes, watcher, _stream: stream, _user: user_slot })
    }

    /// Looks at `performance_id`'s map at once (a write through this gateway changed it).
    pub fn changed(&self, performance_id: &str) {
        if let Some(watcher) = self.watchers.lock().unwrap_or_else(PoisonError::into_inner).get(performance_id) {
            watcher.look_now.notify_one();
        }
    }

    /// Looks at every watched map at once (a change whose performance is not known here).
    pub fn changed_somewhere(&self) {
        for watcher in self.watchers.lock().unwrap_or_else(PoisonError::into_inner).values() {
            watcher.look_now.notify_one();
        }
    }

    /// Viewers on this gateway now.
    pub fn viewers(&self) -> usize {
        self.per_user.lock().unwrap_or_else(PoisonError::into_inner).values().sum()
    }

    /// The performance's watcher (started if none runs) and a receiver of
    /// its changes, subscribed under the lock a stopping watcher checks.
    fn watcher(self: &Arc<Self>, performance_id: &str) -> (Arc<Watcher>, broadcast::Receiver<Arc<Change>>) {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(watcher) = watchers.get(performance_id) {
            return (watcher.clone(), watcher.changes.subscribe());
        }
        let watcher = Arc::new(Watcher {
            changes: broadcast::channel(CHANGES_KEPT).0,
            latest: watch::channel(None).0,
            look_now: Notify::new(),
        });
        let changes = watcher.changes.subscribe();
        watchers.insert(performance_id.to_owned(), watcher.clone());
        metrics::gauge!("seat_stream_watchers").set(watchers.len() as f64);
        tokio::spawn(self.clone().watch(performance_id.to_owned(), watcher.clone()));
        (watcher, changes)
    }

    /// Looks at the map until its last viewer is gone.
    async fn watch(self: Arc<Self>, performance_id: String, watcher: Arc<Watcher>) {
        loop {
            if self.stop_if_unwatched(&performance_id, &watcher) {
                return;
            }
            let looked = tokio::time::Instant::now();
            match self.maps.current(&performance_id, &HeaderMap::new()).await {
                Ok(map) => publish(&watcher, map.state.clone()),
                Err(error) if error.status.is_server_error() => {
                    tracing::debug!(performance_id, error = error.message, "looking at a watched seat map");
                }
                Err(_) => {}
            }
            tokio::select! {
                () = tokio::time::sleep(self.every) => {}
                () = watcher.look_now.notified() => {
                    // Writes arriving together share one look.
                    tokio::time::sleep_until(looked + LOOKS_AT_MOST_EVERY).await;
                }
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    fn stop_if_unwatched(&self, performance_id: &str, watcher: &Arc<Watcher>) -> bool {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        if watcher.changes.receiver_count() > 0 {
            return false;
        }
        // Under the lock, so a viewer arriving now gets a new watcher.
        watchers.remove(performance_id);
        metrics::gauge!("seat_stream_watchers").set(watchers.len() as f64);
        true
    }
}

/// Sends what changed since the watcher's last look, once, to every viewer.
fn publish(watcher: &Watcher, now: Arc<MapState>) {
    let before = watcher.latest();
    if before.as_ref().is_some_and(|b| b.version == now.version) {
        return;
    }
    // The latest state first: a viewer that cannot apply the change reads it.
    watcher.latest.send_replace(Some(now.clone()));
    let Some(before) = before else { return };
    if let Some(seats) = changes(&before.states, &now.states) {
        let frame = sse_frame("seats", &now.version, &seats);
        let change = Change { from: before.version.clone(), to: now.version.clone(), frame };
        // No receiver is fine: nobody watches this instant.
        let _ = watcher.changes.send(Arc::new(change));
    }
}

/// One stream of a user, counted while it lives.
struct UserSlot {
    users: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl UserSlot {
    fn take(users: &Arc<Mutex<HashMap<String, usize>>>, user: &str, max: usize) -> Option<Self> {
        let mut counts = users.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(user.to_owned()).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        metrics::gauge!("seat_streams_open").increment(1.0);
        Some(Self { users: users.clone(), user: user.to_owned() })
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut counts = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
        metrics::gauge!("seat_streams_open").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(s, st)| ((*s).to_owned(), (*st).to_owned())).collect()
    }

    use crate::seat_maps::version_of;

    #[test]
    fn a_change_names_only_the_seats_that_changed_and_the_version_follows_the_state() {
        let before = states(&[("A1", "available"), ("A2", "available")]);
        let after = states(&[("A1", "locked"), ("A2", "available")]);
        assert_ne!(version_of(&before), version_of(&after));
        assert_eq!(version_of(&before), version_of(&before.clone()));
        assert!(changes(&before, &before).is_none(), "no event without a change");
        let changed = changes(&before, &after).unwrap_or_default();
        assert_eq!(changed, r#"{"changes":[{"seatId":"A1","state":"locked"}]}"#);
    }

    #[test]
    fn a_user_may_hold_only_so_many_streams_and_gets_them_back_when_they_end() {
        let users = Arc::new(Mutex::new(HashMap::new()));
        let first = UserSlot::take(&users, "alice", 2);
        let second = UserSlot::take(&users, "alice", 2);
        assert!(first.is_some() && second.is_some());
        assert!(UserSlot::take(&users, "alice", 2).is_none(), "the third is refused");
        assert!(UserSlot::take(&users, "bob", 2).is_some(), "others are not affected");
        drop(first);
        assert!(UserSlot::take(&users, "alice", 2).is_some(), "a closed stream gives its place back");
    }
}
