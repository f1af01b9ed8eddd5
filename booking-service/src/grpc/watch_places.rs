//! `WatchQueuePlaces`: the place streams of many viewers of one performance
//! on one gRPC stream, for a gateway that serves them all. The call carries
//! no identity; each viewer starts with its own bearer token, verified like
//! any caller's, and is then told its place as `StreamQueuePlace` would
//! tell it (`waiting_room::Viewers` keeps the pace). The call ends when the
//! gateway ends its side, stops reading, or the service stops.

use std::pin::Pin;
use std::sync::Arc;

use edge::auth::Verifier;
use edge::shutdown::Shutdown;
use proto::booking::{self as pb, viewer_place::Outcome};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::waiting_room::{Viewers, WaitingRoom};

/// The response stream of a `WatchQueuePlaces` call.
pub type PlacesStream = Pin<Box<dyn futures::Stream<Item = Result<pb::WatchQueuePlacesResponse, Status>> + Send>>;

/// Most places in one response message.
const PLACES_PER_MESSAGE: usize = 1_000;
/// Response messages the gateway has not read yet, at most: beyond, the
/// viewers' looks wait for it.
const MESSAGES_WAITING: usize = 16;
/// Viewers one call may watch at once; a start beyond is refused
/// (RESOURCE_EXHAUSTED) and the others go on.
const MOST_VIEWERS: usize = 200_000;

/// One viewer's outcome before it is framed.
type Told = (u64, Result<crate::waiting_room::PlaceView, Status>);

/// Serves one call: its work runs in a task of its own, so the response
/// headers go back at once.
pub fn serve(
    room: WaitingRoom,
    verifier: Arc<Verifier>,
    shutdown: Shutdown,
    requests: Streaming<pb::WatchQueuePlacesRequest>,
) -> PlacesStream {
    let (out, messages) = mpsc::channel(MESSAGES_WAITING);
    tokio::spawn(async move {
        let failed = tokio::select! {
            ended = run(room, &verifier, requests, &out) => ended.err(),
            () = shutdown.cancelled() => None,
        };
        if let Some(status) = failed {
            let _ = out.send(Err(status)).await;
        }
    });
    Box::pin(futures::stream::unfold(messages, |mut messages| async move {
        messages.recv().await.map(|message| (message, messages))
    }))
}

/// Reads the viewers to start and stop, and tells them their places, until
/// the gateway ends its side or stops reading. A malformed request ends the
/// call with its status.
async fn run(
    room: WaitingRoom,
    verifier: &Verifier,
    mut requests: Streaming<pb::WatchQueuePlacesRequest>,
    out: &mpsc::Sender<Result<pb::WatchQueuePlacesResponse, Status>>,
) -> Result<(), Status> {
    let Some(first) = requests.message().await? else { return Ok(()) };
    if first.performance_id.is_empty() {
        return Err(Status::invalid_argument("The first message must name the performance."));
    }
    let performance_id = first.performance_id.clone();
    let mut viewers = Viewers::new(room, performance_id.clone());
    let mut next = Some(first);
    loop {
        let told: Vec<Told> = match next.take() {
            Some(request) => changes(&mut viewers, verifier, &performance_id, request).await?,
            None => tokio::select! {
                request = requests.message() => match request? {
                    Some(request) => {
                        next = Some(request);
                        continue;
                    }
                    None => return Ok(()),
                },
                alerted = viewers.due() => viewers
                    .look(alerted)
                    .await
                    .into_iter()
                    .map(|(id, told)| (id, told.map_err(Status::from)))
                    .collect(),
            },
        };
        for message in framed(&performance_id, told) {
            if out.send(Ok(message)).await.is_err() {
                // The gateway stopped reading: the call is over.
                return Ok(());
            }
        }
    }
}

/// Applies one request: stops, then starts, each start told its first
/// place or why it cannot be watched.
async fn changes(
    viewers: &mut Viewers,
    verifier: &Verifier,
    performance_id: &str,
    request: pb::WatchQueuePlacesRequest,
) -> Result<Vec<Told>, Status> {
    if !request.performance_id.is_empty() && request.performance_id != performance_id {
        return Err(Status::invalid_argument("A call watches one performance."));
    }
    let most = pb::WATCH_QUEUE_PLACES_MOST_STARTS;
    if request.start.len() > most {
        return Err(Status::invalid_argument(format!("At most {most} viewers start per message.")));
    }
    for id in request.stop {
        viewers.stop(id);
    }
    let mut told = Vec::with_capacity(request.start.len());
    for viewer in request.start {
        let place = match super::token_caller(verifier, &viewer.token).await {
            Err(refused) => Err(refused),
            Ok(_) if viewers.len() >= MOST_VIEWERS => {
                Err(Status::resource_exhausted("This call watches as many viewers as it may."))
            }
            Ok(caller) => viewers.start(viewer.id, caller).await.map_err(Status::from),
        };
        told.push((viewer.id, place));
    }
    Ok(told)
}

/// The outcomes as response messages of at most [`PLACES_PER_MESSAGE`].
fn framed(performance_id: &str, told: Vec<Told>) -> Vec<pb::WatchQueuePlacesResponse> {
    let mut messages: Vec<pb::WatchQueuePlacesResponse> = Vec::new();
    for (viewer, outcome) in told {
        let outcome = match outcome {
            Ok(place) => Outcome::Place(super::place_to_pb(performance_id.to_owned(), place)),
            Err(refused) => Outcome::Refused(pb::JoinRefusal::from(&refused)),
        };
        match messages.last_mut() {
            Some(message) if message.places.len() < PLACES_PER_MESSAGE => {
                message.places.push(pb::ViewerPlace { viewer, outcome: Some(outcome) });
            }
            _ => messages.push(pb::WatchQueuePlacesResponse {
                places: vec![pb::ViewerPlace { viewer, outcome: Some(outcome) }],
            }),
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_framed_in_order_in_messages_a_gateway_takes() {
        let told: Vec<Told> = (0..2_500u64).map(|id| (id, Err(Status::not_found("Not in the queue.")))).collect();
        let messages = framed("p", told);
        assert_eq!(messages.iter().map(|m| m.places.len()).collect::<Vec<_>>(), vec![1_000, 1_000, 500]);
        let ids: Vec<u64> = messages.iter().flat_map(|m| m.places.iter().map(|p| p.viewer)).collect();
        assert_eq!(ids, (0..2_500).collect::<Vec<_>>());
        let Some(Outcome::Refused(refused)) = &messages[0].places[0].outcome else { panic!("a refusal") };
        assert_eq!((refused.code, refused.message.as_str()), (tonic::Code::NotFound as i32, "Not in the queue."));
        assert!(framed("p", Vec::new()).is_empty());
    }
}
