//! Joins to a waiting room, sent to the booking-service together. At an
//! on-sale's opening tens of thousands of people join within a second;
//! one gRPC call each would spend most of both processes' CPU on framing
//! and headers (each call carries its own bearer token, which HPACK cannot
//! index). Here one task takes every join that arrived while the previous
//! calls were under way and sends them as one `JoinQueueMany` call per
//! performance. Each joiner's own token travels with it and the
//! booking-service verifies it like any caller's; each gets its own place
//! or its own refusal, mapped to HTTP like a `JoinQueue` answer.
//!
//! A booking-service that does not know `JoinQueueMany` yet (an upgrade
//! in progress) answers UNIMPLEMENTED: those joins are sent one by one.
//!
//! What a call shared by many people cannot carry is each one's request id
//! and trace context: the gateway's access log and span of each join still
//! have them; the booking-service's log of a batch does not.

use std::collections::HashMap;
use std::sync::Arc;

use proto::booking::{self as pb, booking_service_client::BookingServiceClient, join_outcome::Outcome};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::{transport::Channel, Code, Status};

/// Most joiners in one call (the contract's limit).
const MOST_PER_CALL: usize = pb::JOIN_QUEUE_MANY_MOST_JOINERS;
/// Most bytes of tokens in one call: well under the 4 MiB a gRPC server
/// takes by default, whatever size the identity provider's tokens are.
const MOST_TOKEN_BYTES_PER_CALL: usize = 1 << 20;
/// Calls under way at once; joins arriving meanwhile make up the next.
const CALLS_AT_ONCE: usize = 4;
/// Joins waiting for a call at most; the gateway's in-flight limit keeps
/// far fewer requests than this in its handlers.
const WAITING_AT_MOST: usize = 65_536;

/// What one join gets: the place, or the service's refusal.
pub type JoinAnswer = Result<pb::QueuePlace, Status>;

struct Pending {
    performance_id: String,
    token: String,
    reply: oneshot::Sender<JoinAnswer>,
}

/// The way in: hands a join to the sending task.
pub struct QueueJoins {
    sender: mpsc::Sender<Pending>,
}

impl QueueJoins {
    /// Starts the sending task (on the current runtime).
    pub fn new(booking: BookingServiceClient<Channel>) -> Self {
        let (sender, receiver) = mpsc::channel(WAITING_AT_MOST);
        tokio::spawn(run(booking, receiver));
        Self { sender }
    }

    /// Joins the user named by `token` (verified by the caller, and again
    /// by the booking-service) to the queue of `performance_id`.
    pub async fn join(&self, performance_id: String, token: String) -> JoinAnswer {
        let stopped = || Status::unavailable("The gateway is stopping.");
        let (reply, answer) = oneshot::channel();
        self.sender.send(Pending { performance_id, token, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The sending task: at most [`CALLS_AT_ONCE`] rounds under way.
async fn run(booking: BookingServiceClient<Channel>, mut receiver: mpsc::Receiver<Pending>) {
    let calls = Arc::new(Semaphore::new(CALLS_AT_ONCE));
    loop {
        let Ok(permit) = calls.clone().acquire_owned().await else { return };
        let mut batch = Vec::with_capacity(MOST_PER_CALL);
        if receiver.recv_many(&mut batch, MOST_PER_CALL).await == 0 {
            return;
        }
        let mut by_performance: HashMap<String, Vec<Pending>> = HashMap::new();
        // A join whose request has gone (timed out, disconnected) is not
        // sent, as a single call would have been cancelled with it.
        for join in batch.into_iter().filter(|j| !j.reply.is_closed()) {
            by_performance.entry(join.performance_id.clone()).or_default().push(join);
        }
        if by_performance.is_empty() {
            continue;
        }
        let booking = booking.clone();
        tokio::spawn(async move {
            let calls = by_performance
                .into_iter()
                .flat_map(|(id, joins)| calls_of(joins).into_iter().map(move |joins| (id.clone(), joins)))
                .map(|(id, joins)| send(booking.clone(), id, joins));
            futures::future::join_all(calls).await;
            drop(permit);
        });
    }
}

/// One performance's joins cut into calls of at most
/// [`MOST_TOKEN_BYTES_PER_CALL`] bytes of tokens (a call holds one join at least).
fn calls_of(joins: Vec<Pending>) -> Vec<Vec<Pending>> {
    let mut calls: Vec<Vec<Pending>> = Vec::new();
    let mut bytes = 0;
    for join in joins {
        match calls.last_mut() {
            Some(call) if bytes + join.token.len() <= MOST_TOKEN_BYTES_PER_CALL => {
                bytes += join.token.len();
                call.push(join);
            }
            _ => {
                bytes = join.token.len();
                calls.push(vec![join]);
            }
        }
    }
    calls
}

/// One call for one performance's joins; every join is answered.
async fn send(mut booking: BookingServiceClient<Channel>, performance_id: String, joins: Vec<Pending>) {
    let joiners = joins.iter().map(|j| pb::Joiner { token: j.token.clone() }).collect();
    let request = pb::JoinQueueManyRequest { performance_id: performance_id.clone(), joiners };
    let answers: Vec<JoinAnswer> = match booking.join_queue_many(request).await {
        Ok(response) => outcomes(response.into_inner().outcomes, joins.len()),
        Err(status) if status.code() == Code::Unimplemented => one_by_one(&booking, &performance_id, &joins).await,
        Err(status) => vec![Err(status); joins.len()],
    };
    for (join, answer) in joins.into_iter().zip(answers) {
        let _ = join.reply.send(answer);
    }
}

/// Each joiner's outcome, in order; a reply of the wrong length fails all.
fn outcomes(outcomes: Vec<pb::JoinOutcome>, joiners: usize) -> Vec<JoinAnswer> {
    if outcomes.len() != joiners {
        tracing::error!(joiners, outcomes = outcomes.len(), "JoinQueueMany answered a different number of joiners");
        return vec![Err(Status::internal("The booking-service answered the joins incompletely.")); joiners];
    }
    outcomes
        .into_iter()
        .map(|o| match o.outcome {
            Some(Outcome::Place(place)) => Ok(place),
            Some(Outcome::Refused(refused)) => Err(Status::from(refused)),
            None => Err(Status::internal("The booking-service answered a join with nothing.")),
        })
        .collect()
}

/// The joins as separate `JoinQueue` calls, each with its own token.
async fn one_by_one(
    booking: &BookingServiceClient<Channel>,
    performance_id: &str,
    joins: &[Pending],
) -> Vec<JoinAnswer> {
    let calls = joins.iter().map(|join| {
        let mut booking = booking.clone();
        let mut request = tonic::Request::new(pb::JoinQueueRequest { performance_id: performance_id.to_owned() });
        edge::wire::forward_bearer(&mut request, &join.token);
        async move { booking.join_queue(request).await.map(tonic::Response::into_inner) }
    });
    futures::future::join_all(calls).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(n: i64) -> pb::JoinOutcome {
        pb::JoinOutcome { outcome: Some(Outcome::Place(pb::QueuePlace { position: Some(n), ..Default::default() })) }
    }

    #[test]
    fn each_joiner_gets_its_own_outcome_in_order() {
        let refused = pb::JoinOutcome {
            outcome: Some(Outcome::Refused(pb::JoinRefusal {
                code: Code::Unauthenticated as i32,
                message: "Missing or invalid bearer token.".into(),
            })),
        };
        let answers = outcomes(vec![place(1), refused, place(2)], 3);
        assert_eq!(answers[0].as_ref().ok().and_then(|p| p.position), Some(1));
        let status = answers[1].as_ref().err().map(|s| (s.code(), s.message().to_owned()));
        assert_eq!(status, Some((Code::Unauthenticated, "Missing or invalid bearer token.".to_owned())));
        assert_eq!(answers[2].as_ref().ok().and_then(|p| p.position), Some(2));
    }

    #[test]
    fn joins_with_large_tokens_are_cut_into_calls_that_a_server_takes_and_keep_their_order() {
        let joins: Vec<Pending> = (0..300)
            .map(|n| Pending {
                performance_id: "p".into(),
                token: format!("{n:08}{}", "x".repeat(8_000)),
                reply: oneshot::channel().0,
            })
            .collect();
        let calls = calls_of(joins);
        assert_eq!(calls.len(), 3, "300 tokens of 8 KB in calls of at most 1 MiB");
        for call in &calls {
            assert!(call.iter().map(|j| j.token.len()).sum::<usize>() <= MOST_TOKEN_BYTES_PER_CALL);
        }
        let order: Vec<String> = calls.iter().flatten().map(|j| j.token[..8].to_owned()).collect();
        assert_eq!(order, (0..300).map(|n| format!("{n:08}")).collect::<Vec<_>>());
        // One token larger than a call still travels, alone.
        let huge = Pending { performance_id: "p".into(), token: "y".repeat(2 << 20), reply: oneshot::channel().0 };
        assert_eq!(calls_of(vec![huge]).len(), 1);
    }

    #[test]
    fn an_answer_of_the_wrong_length_or_an_empty_outcome_fails_rather_than_misplacing_anyone() {
        let answers = outcomes(vec![place(1)], 2);
        assert!(answers.iter().all(|a| a.as_ref().is_err_and(|s| s.code() == Code::Internal)));
        let answers = outcomes(vec![pb::JoinOutcome { outcome: None }], 1);
        assert!(answers[0].as_ref().is_err_and(|s| s.code() == Code::Internal));
    }
}
