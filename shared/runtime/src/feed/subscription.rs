//! One subscriber: the history from the store in the log's order, then the
//! tail's live batches. The hand-over has no gap and no duplicate: the
//! subscriber listens to the tail before it reads the store, skips in a
//! live batch what it already sent, and reads the store again whenever a
//! batch does not start where it stands (it joined late, or fell behind).
//! A slow subscriber fills only its own buffer; one that reads nothing for
//! the stall limit is ended with the position to resume after.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge::shutdown::Shutdown;
use futures::{Stream, StreamExt};
use kernel::global_log::{self, LogPosition};
use messaging::outbox::IntegrationMapper;
use proto::feed::FeedEvent;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use super::tail::{encode, Entry, Tail, READ_AT_MOST};

/// Events encoded ahead of what the subscriber has read.
const BUFFERED: usize = 512;

/// A subscription being served.
pub(super) struct Subscription {
    pub(super) pool: PgPool,
    pub(super) mapper: Arc<dyn IntegrationMapper>,
    pub(super) live: Tail,
    pub(super) types: HashSet<String>,
    pub(super) stall: Duration,
    pub(super) shutdown: Shutdown,
}

/// Why a subscription stopped sending.
enum Stop {
    /// The subscriber went away.
    Gone,
    /// It ends with this status (after the events already buffered).
    Status(Status),
}

impl Subscription {
    /// The stream of events after `from_position`; `seat` is held while it runs.
    pub(super) fn start<S: Send + 'static>(
        self,
        from_position: i64,
        seat: S,
    ) -> impl Stream<Item = Result<FeedEvent, Status>> + Send + 'static {
        let (sender, receiver) = mpsc::channel(BUFFERED);
        let ending: Arc<Mutex<Option<Status>>> = Arc::default();
        let end = ending.clone();
        tokio::spawn(async move {
            let _seat = seat;
            let mut sent = from_position;
            if let Stop::Status(status) = self.serve(from_position, &sender, &mut sent).await {
                tracing::info!(code = ?status.code(), resume_after = sent, "event feed subscription ended");
                if let Ok(mut end) = end.lock() {
                    *end = Some(status);
                }
            }
        });
        let last = futures::stream::once(async move { ending.lock().ok().and_then(|mut end| end.take()) });
        tokio_stream::wrappers::ReceiverStream::new(receiver)
            .map(Ok)
            .chain(last.filter_map(|status| std::future::ready(status.map(Err))))
    }

    async fn serve(&self, from_position: i64, out: &mpsc::Sender<FeedEvent>, sent: &mut i64) -> Stop {
        let unavailable = |sent: i64, what: &str| {
            Stop::Status(Status::unavailable(format!("{what}; subscribe again after position {sent}.")))
        };
        let start = async { global_log::after_log_position(&mut *self.pool.acquire().await?, from_position).await };
        let mut at = match start.await {
            Ok(at) => at,
            Err(error) => {
                tracing::warn!(%error, "event feed: cannot find the starting position");
                return unavailable(*sent, "The event store cannot be read now");
            }
        };
        'catch_up: loop {
            // Listening first: whatever the tail reads from now on reaches us.
            let mut live = self.live.subscribe();
            loop {
                let read = async { global_log::read_after(&mut *self.pool.acquire().await?, at, READ_AT_MOST).await };
                let read = match read.await {
                    Ok(read) => read,
                    Err(error) => {
                        tracing::warn!(%error, "event feed: reading the store failed");
                        return unavailable(*sent, "The event store cannot be read now");
                    }
                };
                for stored in &read.events {
                    match encode(self.mapper.as_ref(), stored) {
                        Ok(Some(entry)) => {
                            if let Err(stop) = self.send(out, entry, sent).await {
                                return stop;
                            }
                        }
                        Ok(None) => {}
                        Err(error) => return Stop::Status(Status::internal(error.to_string())),
                    }
                    at = LogPosition::of(stored);
                }
                if (read.events.len() as i64) < READ_AT_MOST {
                    break;
                }
            }
            loop {
                let batch = tokio::select! {
                    batch = live.recv() => batch,
                    () = out.closed() => return Stop::Gone,
                    () = self.shutdown.cancelled() => return unavailable(*sent, "The service is stopping"),
                };
                let batch = match batch {
                    Ok(batch) => batch,
                    // Behind the broadcast: the store has what was dropped.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue 'catch_up,
                    Err(broadcast::error::RecvError::Closed) => return unavailable(*sent, "The service is stopping"),
                };
                if batch.from > at {
                    // Events between here and the batch went by before we listened.
                    continue 'catch_up;
                }
                for entry in batch.entries.iter().filter(|e| e.at > at) {
                    if let Err(stop) = self.send(out, entry.clone(), sent).await {
                        return stop;
                    }
                }
                at = at.max(batch.to);
            }
        }
    }

    /// Sends one event if its type is wanted; a subscriber that takes none
    /// for the stall limit is ended.
    async fn send(&self, out: &mpsc::Sender<FeedEvent>, entry: Entry, sent: &mut i64) -> Result<(), Stop> {
        if !self.types.is_empty() && !self.types.contains(&entry.event.r#type) {
            return Ok(());
        }
        let position = entry.event.position;
        match tokio::time::timeout(self.stall, out.send(entry.event)).await {
            Ok(Ok(())) => {
                *sent = position;
                Ok(())
            }
            Ok(Err(_)) => Err(Stop::Gone),
            Err(_) => {
                metrics::counter!("feed_subscribers_ended_total", "reason" => "stalled").increment(1);
                Err(Stop::Status(Status::resource_exhausted(format!(
                    "This subscriber read nothing for {} s; subscribe again after position {sent}.",
                    self.stall.as_secs()
                ))))
            }
        }
    }
}
