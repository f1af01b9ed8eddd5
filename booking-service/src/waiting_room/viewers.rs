//! Many people's place streams of one performance in one loop: what a
//! gateway's `WatchQueuePlaces` call is served by. Each viewer is looked at
//! on the pace its own stream would keep ([`look_again_after`]), all at once
//! when the on-sale opens, sells out or closes, and a place is passed on
//! when it changed or was last sent [`RESEND_EVERY`] ago, exactly as
//! [`place_changes`](super::place_changes) does for one. A viewer is done
//! after `admitted`, `sold_out` or `closed`, or when its place can no longer
//! be looked at. Looking keeps a place, as every look does.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::{look_again_after, PlaceView, WaitingRoom, RESEND_EVERY};
use crate::domain::booking::Caller;
use crate::error::BookingError;

/// Looks that may wait on the database at once (a place the warm copy
/// cannot answer for); looks served from memory do not wait at all.
const LOOKS_AT_ONCE: usize = 16;
/// The shortest time between two rounds of looks (but an alert): viewers
/// started at different moments are looked at together, and the loop does
/// not wake for each one (a look comes at most this much after its pace).
const ROUNDS_AT_MOST_EVERY: Duration = Duration::from_millis(100);

/// What one viewer is told: its place, or why it is done.
pub type Told = Result<PlaceView, BookingError>;

struct Viewer {
    caller: Caller,
    last: PlaceView,
    sent_at: Instant,
    look_at: Instant,
}

/// One performance's viewers.
pub struct Viewers {
    room: WaitingRoom,
    performance_id: String,
    viewers: HashMap<u64, Viewer>,
    alerts: tokio::sync::watch::Receiver<super::warm::Milestones>,
    alerts_open: bool,
    last_round: Instant,
}

impl Viewers {
    /// No viewers yet, for the on-sale of `performance_id`.
    pub fn new(room: WaitingRoom, performance_id: String) -> Self {
        let mut alerts = room.warm.alerts(&performance_id);
        alerts.mark_unchanged();
        Self { room, performance_id, viewers: HashMap::new(), alerts, alerts_open: true, last_round: Instant::now() }
    }

    /// Viewers being watched.
    pub fn len(&self) -> usize {
        self.viewers.len()
    }

    /// Whether nobody is watched.
    pub fn is_empty(&self) -> bool {
        self.viewers.is_empty()
    }

    /// Starts watching `caller` as viewer `id` (replacing one of that id):
    /// their place now, or why they cannot be watched. A place in a final
    /// state is told and not watched.
    pub async fn start(&mut self, id: u64, caller: Caller) -> Told {
        self.viewers.remove(&id);
        let first = self.room.place(&caller, &self.performance_id).await?;
        // Opened between this look and the next alert: look again at once.
        let opened = first.state == "queued" && self.alerts.borrow().opened;
        if !final_state(&first) {
            let now = Instant::now();
            let look_at = if opened { now } else { now + look_again_after(&first) };
            self.viewers.insert(id, Viewer { caller, last: first.clone(), sent_at: now, look_at });
        }
        Ok(first)
    }

    /// Stops watching viewer `id` (nothing if it is not watched).
    pub fn stop(&mut self, id: u64) {
        self.viewers.remove(&id);
    }

    /// Waits until a viewer is due a look (forever while nobody is
    /// watched) or the on-sale opened, sold out or closed; answers whether
    /// it did the latter (then everyone is due). Cancel-safe: an alert is
    /// only taken by the wait that returns it.
    pub async fn due(&mut self) -> bool {
        let earliest = self.last_round + ROUNDS_AT_MOST_EVERY;
        let due_at = self.viewers.values().map(|v| v.look_at).min().map(|at| at.max(earliest));
        tokio::select! {
            () = async {
                match due_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => false,
            changed = self.alerts.changed(), if self.alerts_open => {
                // Never closed while the warm copy lives; if it were, the
                // viewers would still be looked at on their own pace.
                self.alerts_open = changed.is_ok();
                self.alerts_open
            }
        }
    }

    /// Looks at every viewer due (all of them after an alert) and answers
    /// what to tell: places that changed or are due again, and why a viewer
    /// whose look failed is done. Viewers told a final state or a failure
    /// are no longer watched.
    pub async fn look(&mut self, alerted: bool) -> Vec<(u64, Told)> {
        let now = Instant::now();
        self.last_round = now;
        let due: Vec<(u64, Caller)> = self
            .viewers
            .iter()
            .filter(|(_, v)| alerted || v.look_at <= now)
            .map(|(id, v)| (*id, v.caller.clone()))
            .collect();
        let (room, performance_id) = (&self.room, self.performance_id.as_str());
        let looks: Vec<(u64, Told)> = futures::stream::iter(due)
            .map(|(id, caller)| async move { (id, room.place(&caller, performance_id).await) })
            .buffered(LOOKS_AT_ONCE)
            .collect()
            .await;
        let now = Instant::now();
        let mut told = Vec::new();
        for (id, look) in looks {
            let Some(viewer) = self.viewers.get_mut(&id) else { continue };
            match look {
                Ok(place) => {
                    viewer.look_at = now + look_again_after(&place);
                    if place != viewer.last || now.duration_since(viewer.sent_at) >= RESEND_EVERY {
                        viewer.sent_at = now;
                        viewer.last = place.clone();
                        if final_state(&place) {
                            self.viewers.remove(&id);
                        }
                        told.push((id, Ok(place)));
                    }
                }
                Err(failed) => {
                    self.viewers.remove(&id);
                    told.push((id, Err(failed)));
                }
            }
        }
        told
    }
}

/// A state after which a place stream ends.
fn final_state(place: &PlaceView) -> bool {
    matches!(place.state, "admitted" | "sold_out" | "closed")
}
