//! Place streams of the people this gateway serves, carried on one
//! `WatchQueuePlaces` call per performance. At an on-sale every person
//! waiting holds a stream; one gRPC stream each to the booking-service
//! would cost both processes an HTTP/2 stream, a verified token and a task
//! per person. Here one task per performance holds the call: it starts each
//! viewer with the viewer's own bearer token (verified by the
//! booking-service like any caller's), passes each viewer's places to it,
//! and tells the service which viewers left.
//!
//! If the call ends (the booking-service restarts or stops), its viewers'
//! streams end, as their own gRPC streams would have, and their pages come
//! back. A booking-service that does not know `WatchQueuePlaces` yet (an
//! upgrade in progress) answers UNIMPLEMENTED: streams then use
//! `StreamQueuePlace`, one call each, for a while.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use edge::shutdown::Shutdown;
use futures::StreamExt;
use proto::booking::{self as pb, booking_service_client::BookingServiceClient, viewer_place::Outcome};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{transport::Channel, Code, Status};

/// Viewers started in one request message at most (the contract's limit).
const MOST_STARTS: usize = pb::WATCH_QUEUE_PLACES_MOST_STARTS;
/// Most bytes of tokens in one request message.
const MOST_TOKEN_BYTES: usize = 1 << 20;
/// Starts waiting for their call at most.
const STARTS_WAITING: usize = 65_536;
/// Request messages on their way to the booking-service at most.
const REQUESTS_WAITING: usize = 4;
/// How often the viewers who left are told to the booking-service.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A call with no viewer for this long ends.
const IDLE_FOR: Duration = Duration::from_secs(60);
/// After an UNIMPLEMENTED, how long streams use one call each before
/// `WatchQueuePlaces` is tried again.
const PER_PERSON_FOR: Duration = Duration::from_secs(60);

/// Why a place stream could not start here.
#[derive(Debug)]
pub enum WatchError {
    /// The booking-service does not serve `WatchQueuePlaces`: use
    /// `StreamQueuePlace`.
    Unsupported,
    /// The booking-service's answer for this viewer (not in the queue, a
    /// refused token, unavailable).
    Refused(Status),
}

/// A viewer's place stream: the first place, then each change.
pub struct Watching {
    /// The place when the stream started.
    pub first: pb::QueuePlace,
    places: watch::Receiver<pb::QueuePlace>,
}

impl Watching {
    /// The first place, then every place the booking-service tells; ends
    /// after a final state or when the call ends. A viewer slower than its
    /// places gets the latest.
    pub fn places(self) -> impl futures::Stream<Item = pb::QueuePlace> + Send + 'static {
        let later = futures::stream::unfold(self.places, |mut places| async move {
            places.changed().await.ok()?;
            let place = places.borrow_and_update().clone();
            Some((place, places))
        });
        futures::stream::once(std::future::ready(self.first)).chain(later)
    }
}

/// Counts an open place stream (`queue_streams_open`) for as long as it lives.
pub struct StreamOpen(());

impl StreamOpen {
    /// One more place stream open.
    pub fn new() -> Self {
        metrics::gauge!("queue_streams_open").increment(1.0);
        Self(())
    }
}

impl Default for StreamOpen {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        metrics::gauge!("queue_streams_open").decrement(1.0);
    }
}

/// One viewer waiting to start.
struct Start {
    id: u64,
    token: String,
    first: oneshot::Sender<Result<pb::QueuePlace, Status>>,
    places: watch::Sender<pb::QueuePlace>,
}

/// A started (or starting) viewer, as its call keeps it.
struct Viewer {
    /// Until its first answer.
    first: Option<oneshot::Sender<Result<pb::QueuePlace, Status>>>,
    places: watch::Sender<pb::QueuePlace>,
}

impl Viewer {
    /// Its stream is gone (the page left, or the request timed out first).
    fn left(&self) -> bool {
        match &self.first {
            Some(first) => first.is_closed(),
            None => self.places.is_closed(),
        }
    }
}

type Calls = Arc<Mutex<HashMap<String, mpsc::Sender<Start>>>>;

/// This gateway's calls, one per watched performance.
pub struct QueueWatch {
    booking: BookingServiceClient<Channel>,
    calls: Calls,
    next_id: AtomicU64,
    per_person_until: Mutex<Option<Instant>>,
    shutdown: Shutdown,
}

impl QueueWatch {
    /// No calls yet; each starts with its first viewer.
    pub fn new(booking: BookingServiceClient<Channel>, shutdown: Shutdown) -> Self {
        Self {
            booking,
            calls: Arc::default(),
            next_id: AtomicU64::new(1),
            per_person_until: Mutex::new(None),
            shutdown,
        }
    }

    /// Starts the place stream of the person whose token is `token` (verified
    /// by the caller, and again by the booking-service).
    pub async fn watch(&self, performance_id: &str, token: String) -> Result<Watching, WatchError> {
        let per_person_until = *self.per_person_until.lock().unwrap_or_else(PoisonError::into_inner);
        if per_person_until.is_some_and(|until| Instant::now() < until) {
            return Err(WatchError::Unsupported);
        }
        // A call that ends while this start waits for it: once more, on a new one.
        for _ in 0..2 {
            let call = self.call_for(performance_id);
            let (first, answer) = oneshot::channel();
            let (places, receiver) = watch::channel(pb::QueuePlace::default());
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if call.send(Start { id, token: token.clone(), first, places }).await.is_err() {
                continue;
            }
            match answer.await {
                Ok(Ok(first)) => return Ok(Watching { first, places: receiver }),
                Ok(Err(status)) if status.code() == Code::Unimplemented => {
                    *self.per_person_until.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(Instant::now() + PER_PERSON_FOR);
                    return Err(WatchError::Unsupported);
                }
                Ok(Err(status)) => return Err(WatchError::Refused(status)),
                Err(_) => continue,
            }
        }
        Err(WatchError::Refused(Status::unavailable("The booking-service's place streams ended; please retry.")))
    }

    /// The call of `performance_id`, started if there is none.
    fn call_for(&self, performance_id: &str) -> mpsc::Sender<Start> {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(call) = calls.get(performance_id).filter(|c| !c.is_closed()) {
            return call.clone();
        }
        let (sender, starts) = mpsc::channel(STARTS_WAITING);
        calls.insert(performance_id.to_owned(), sender.clone());
        let call = Call {
            booking: self.booking.clone(),
            performance_id: performance_id.to_owned(),
            calls: self.calls.clone(),
            sender: sender.clone(),
        };
        tokio::spawn(call.run(starts, self.shutdown.clone()));
        sender
    }
}

/// One performance's call.
struct Call {
    booking: BookingServiceClient<Channel>,
    performance_id: String,
    calls: Calls,
    /// Its own way in, to leave the map only if it is still there.
    sender: mpsc::Sender<Start>,
}

impl Call {
    /// Holds the call until it ends, is idle, or the gateway stops; then
    /// leaves the map, so the next viewer opens a new one. Viewers still
    /// waiting for their first place are told why it ended; started ones'
    /// streams end; starts not yet sent go to a new call.
    async fn run(self, mut starts: mpsc::Receiver<Start>, shutdown: Shutdown) {
        metrics::gauge!("queue_stream_calls").increment(1.0);
        let mut viewers = HashMap::new();
        let ended = tokio::select! {
            ended = self.serve(&mut starts, &mut viewers) => ended,
            () = shutdown.cancelled() => Ok(()),
        };
        {
            let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
            if calls.get(&self.performance_id).is_some_and(|c| c.same_channel(&self.sender)) {
                calls.remove(&self.performance_id);
            }
        }
        starts.close();
        metrics::gauge!("queue_stream_calls").decrement(1.0);
        if let Err(status) = ended {
            tracing::warn!(performance_id = %self.performance_id, %status, "place streams' call ended");
            for viewer in viewers.into_values() {
                if let Some(first) = viewer.first {
                    let _ = first.send(Err(status.clone()));
                }
            }
        }
    }

    async fn serve(
        &self,
        starts: &mut mpsc::Receiver<Start>,
        viewers: &mut HashMap<u64, Viewer>,
    ) -> Result<(), Status> {
        // A short line of request messages: what is not sent yet waits in
        // `unsent`, where a start whose page has gone is dropped at the next
        // sweep, so a hung booking-service holds no more than the streams
        // still asking (the gateway's in-flight limit bounds those).
        let (requests, request_stream) = mpsc::channel(REQUESTS_WAITING);
        let opening = pb::WatchQueuePlacesRequest { performance_id: self.performance_id.clone(), ..Default::default() };
        let _ = requests.try_send(opening);
        let request_stream = futures::stream::unfold(request_stream, |mut stream| async move {
            stream.recv().await.map(|request| (request, stream))
        });
        let mut booking = self.booking.clone();
        let mut places = booking.watch_queue_places(request_stream).await?.into_inner();
        let mut unsent = Unsent::default();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        let mut idle_since = Instant::now();
        let mut batch = Vec::with_capacity(MOST_STARTS);
        loop {
            tokio::select! {
                taken = starts.recv_many(&mut batch, MOST_STARTS) => {
                    if taken == 0 {
                        return Ok(());
                    }
                    unsent.starts.extend(batch.drain(..));
                }
                slot = requests.reserve(), if !unsent.is_empty() => {
                    let slot = slot.map_err(|_| Status::unavailable("The place streams' call ended."))?;
                    slot.send(unsent.next_request(viewers));
                }
                message = places.message() => match message? {
                    Some(message) => tell(viewers, message.places),
                    None => return Err(Status::unavailable("The booking-service ended the place streams.")),
                },
                _ = sweep.tick() => {
                    viewers.retain(|id, viewer| {
                        let left = viewer.left();
                        if left {
                            unsent.stops.push(*id);
                        }
                        !left
                    });
                    unsent.starts.retain(|start| !start.first.is_closed());
                    if !viewers.is_empty() || !unsent.starts.is_empty() {
                        idle_since = Instant::now();
                    } else if idle_since.elapsed() >= IDLE_FOR {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Starts and stops not sent yet.
#[derive(Default)]
struct Unsent {
    starts: VecDeque<Start>,
    stops: Vec<u64>,
}

impl Unsent {
    fn is_empty(&self) -> bool {
        self.starts.is_empty() && self.stops.is_empty()
    }

    /// The next request message: every stop, and the oldest starts whose
    /// streams are still wanted, at most [`MOST_STARTS`] and
    /// [`MOST_TOKEN_BYTES`] of tokens (one start at least). The viewers it
    /// starts are kept in `viewers`, to be told their first place.
    fn next_request(&mut self, viewers: &mut HashMap<u64, Viewer>) -> pb::WatchQueuePlacesRequest {
        let mut start: Vec<pb::QueueViewer> = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.starts.front() {
            let size = next.token.len();
            if start.len() == MOST_STARTS || (!start.is_empty() && bytes + size > MOST_TOKEN_BYTES) {
                break;
            }
            let Some(next) = self.starts.pop_front() else { break };
            if next.first.is_closed() {
                continue;
            }
            bytes += size;
            viewers.insert(next.id, Viewer { first: Some(next.first), places: next.places });
            start.push(pb::QueueViewer { id: next.id, token: next.token });
        }
        pb::WatchQueuePlacesRequest { start, stop: std::mem::take(&mut self.stops), ..Default::default() }
    }
}

/// Passes each place to its viewer; a viewer told a final state or a
/// refusal is done (its stream ends after what it was told).
fn tell(viewers: &mut HashMap<u64, Viewer>, places: Vec<pb::ViewerPlace>) {
    for told in places {
        let Some(viewer) = viewers.get_mut(&told.viewer) else { continue };
        let done = match told.outcome {
            Some(Outcome::Place(place)) => {
                let done = matches!(place.state.as_str(), "admitted" | "sold_out" | "closed");
                match viewer.first.take() {
                    Some(first) => {
                        let _ = first.send(Ok(place));
                    }
                    None => {
                        viewer.places.send_replace(place);
                    }
                }
                done
            }
            Some(Outcome::Refused(refused)) => {
                if let Some(first) = viewer.first.take() {
                    let _ = first.send(Err(Status::from(refused)));
                }
                true
            }
            None => true,
        };
        if done {
            viewers.remove(&told.viewer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer() -> (Viewer, oneshot::Receiver<Result<pb::QueuePlace, Status>>, watch::Receiver<pb::QueuePlace>) {
        let (first, answer) = oneshot::channel();
        let (places, receiver) = watch::channel(pb::QueuePlace::default());
        (Viewer { first: Some(first), places }, answer, receiver)
    }

    fn place(viewer: u64, state: &str, position: i64) -> pb::ViewerPlace {
        let place = pb::QueuePlace { state: state.into(), position: Some(position), ..Default::default() };
        pb::ViewerPlace { viewer, outcome: Some(Outcome::Place(place)) }
    }

    #[tokio::test]
    async fn each_viewer_gets_its_first_place_then_its_changes_and_its_stream_ends_after_a_final_state() {
        let (a, a_first, mut a_places) = viewer();
        let (b, b_first, _) = viewer();
        let mut viewers = HashMap::from([(1, a), (2, b)]);
        let refused = pb::JoinRefusal { code: Code::NotFound as i32, message: "You are not in the queue.".into() };
        tell(
            &mut viewers,
            vec![place(1, "waiting", 7), pb::ViewerPlace { viewer: 2, outcome: Some(Outcome::Refused(refused)) }],
        );
        assert_eq!(a_first.await.ok().and_then(Result::ok).and_then(|p| p.position), Some(7));
        let b_said = b_first.await.ok().and_then(Result::err).map(|s| (s.code(), s.message().to_owned()));
        assert_eq!(b_said, Some((Code::NotFound, "You are not in the queue.".to_owned())));
        assert_eq!(viewers.len(), 1, "a refused viewer is done");
        tell(&mut viewers, vec![place(1, "waiting", 3), place(1, "admitted", 3), place(9, "waiting", 1)]);
        assert!(viewers.is_empty(), "an admitted viewer is done");
        // The latest place is kept for a slow viewer, then the stream ends.
        assert!(a_places.changed().await.is_ok());
        assert_eq!(a_places.borrow_and_update().state, "admitted");
        assert!(a_places.changed().await.is_err());
    }

    #[test]
    fn a_start_whose_request_has_gone_is_not_sent_and_messages_are_cut_by_count_and_bytes() {
        let mut viewers = HashMap::new();
        let mut answers = Vec::new();
        let mut unsent = Unsent::default();
        for id in 0..1_300 {
            let (first, answer) = oneshot::channel();
            // The first one's request has gone.
            if id > 0 {
                answers.push(answer);
            }
            // Small tokens, but 8 KB ones from the 1,100th on.
            let token = if id >= 1_100 { "x".repeat(8_000) } else { format!("t{id}") };
            unsent.starts.push_back(Start { id, token, first, places: watch::channel(pb::QueuePlace::default()).0 });
        }
        unsent.stops = vec![7, 8];
        let first = unsent.next_request(&mut viewers);
        assert_eq!(first.stop, [7, 8], "every stop goes with the next message");
        assert_eq!((first.start.len(), first.start[0].id), (MOST_STARTS, 1), "at most 1,000 starts");
        let second = unsent.next_request(&mut viewers);
        assert!(second.stop.is_empty());
        let bytes: usize = second.start.iter().map(|v| v.token.len()).sum();
        assert!(bytes <= MOST_TOKEN_BYTES, "{bytes} bytes");
        assert_eq!(second.start.last().map(|v| v.id), Some(1_100 + 130), "cut by bytes, not by count");
        let mut sent = first.start.len() + second.start.len();
        while !unsent.is_empty() {
            sent += unsent.next_request(&mut viewers).start.len();
        }
        assert_eq!(sent, 1_299);
        assert_eq!(viewers.len(), 1_299, "each viewer sent is kept to be told its place");
    }
}
