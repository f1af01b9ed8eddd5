//! One partition's records of a round, in offset order: first together in
//! one transaction (up to [`MAX_TOGETHER`] records, each with its inbox
//! row, and the partition's next offset), and record by record from the
//! first chunk that fails, where poison is dead-lettered and failures are
//! handed back to be retried.

use std::collections::VecDeque;

use rdkafka::message::{Message, OwnedMessage};
use sqlx::PgPool;

use super::{
    dead_letter::{dead_letter, DeadLetterProducer},
    dedupe::{apply_in, record_all, store_offset, store_offset_alone, Fenced, Position},
    handler::{EventHandler, Fresh, HandlerError, IncomingEvent},
    settings::ConsumerSettings,
    Outcome,
};
use edge::shutdown::Shutdown;

use crate::kafka::CloudEventHeaders;

/// Records of a lane that share one transaction at most.
pub const MAX_TOGETHER: usize = 64;

/// What one try at a record came to; `E` is what a retry keeps (the
/// decoded event, once there is one).
#[derive(Debug)]
pub enum Step<E = ()> {
    /// A final outcome. `stored`: the partition's next offset is stored
    /// past the record (an ignored record needs no transaction of its own;
    /// a later one stores past it).
    Done {
        /// What became of it.
        outcome: Outcome,
        /// Whether the offset after it is stored.
        stored: bool,
    },
    /// It failed; try again later. `permanent`: the database refused it
    /// for a reason that will not go away by itself.
    Retry {
        /// Why it failed.
        error: String,
        /// Whether the failure is permanent.
        permanent: bool,
        /// What to retry.
        event: E,
    },
    /// The partition's lease moved to another member.
    Fenced,
    /// Shutdown came first.
    Interrupted,
}

/// Everything a lane needs, borrowed from the consumer.
pub struct Lanes<'a, H> {
    /// The service database.
    pub pool: &'a PgPool,
    /// Where poison goes.
    pub dlq: &'a DeadLetterProducer,
    /// The service's handler.
    pub handler: &'a H,
    /// The consumer's settings.
    pub settings: &'a ConsumerSettings,
    /// Stops waiting for the DLQ.
    pub shutdown: &'a Shutdown,
}

impl<H: EventHandler> Lanes<'_, H> {
    /// Runs `records` of one partition in order, until one must be retried
    /// (the rest are read again once it succeeds), the lease moves, or
    /// shutdown comes.
    pub async fn run(&self, at: &Position, records: Vec<OwnedMessage>) -> Vec<(OwnedMessage, Step<IncomingEvent>)> {
        let mut results = Vec::with_capacity(records.len());
        let mut rest: VecDeque<OwnedMessage> = records.into();
        // How many records the next shared transaction may take: after a
        // failure, the ones before the failing record go together, the
        // failing one alone, and the rest together again.
        let mut limit = MAX_TOGETHER;
        while !rest.is_empty() {
            if limit >= 2 && rest.len() >= 2 {
                let chunk: Vec<OwnedMessage> = rest.drain(..rest.len().min(limit)).collect();
                match self.together(at, &chunk).await {
                    Together::Done(outcomes) => {
                        let done = chunk.into_iter().zip(outcomes);
                        results.extend(done.map(|(message, outcome)| (message, Step::Done { outcome, stored: true })));
                        limit = MAX_TOGETHER;
                    }
                    Together::Fenced => {
                        results.extend(chunk.into_iter().take(1).map(|message| (message, Step::Fenced)));
                        return results;
                    }
                    Together::FailedAt(index) => {
                        for message in chunk.into_iter().rev() {
                            rest.push_front(message);
                        }
                        limit = index;
                    }
                }
                continue;
            }
            let Some(message) = rest.pop_front() else { break };
            let step = self.alone(at, &message).await;
            let go_on = matches!(step, Step::Done { .. });
            results.push((message, step));
            if !go_on {
                break;
            }
            limit = MAX_TOGETHER;
        }
        results
    }

    /// One record in a transaction of its own, where its failure is handled.
    async fn alone(&self, at: &Position, message: &OwnedMessage) -> Step<IncomingEvent> {
        let event = match to_incoming(message) {
            Err(reason) => return self.dead_letter(at, message, &reason).await,
            Ok(event) => event,
        };
        let span = consume_span(&self.settings.group, &event, message.topic());
        match tracing::Instrument::instrument(self.try_record(at, message, &event), span).await {
            Step::Retry { error, permanent, event: () } => Step::Retry { error, permanent, event },
            Step::Done { outcome, stored } => Step::Done { outcome, stored },
            Step::Fenced => Step::Fenced,
            Step::Interrupted => Step::Interrupted,
        }
    }

    /// Tries `event` once: applied, duplicate, ignored, dead-lettered
    /// (poison) or to be retried; its offset is stored with its effects.
    pub async fn try_record(&self, at: &Position, message: &OwnedMessage, event: &IncomingEvent) -> Step {
        if !self.handler.wants(&event.headers.event_type) {
            return Step::Done { outcome: Outcome::Ignored, stored: false };
        }
        match self.handle_once(at, message.offset() + 1, event).await {
            Ok(Ok(outcome)) => Step::Done { outcome, stored: true },
            Ok(Err(Fenced(_))) => Step::Fenced,
            Err(HandlerError::Poison(reason)) => self.dead_letter(at, message, &reason).await,
            Err(HandlerError::Permanent(reason)) => Step::Retry { error: reason, permanent: true, event: () },
            Err(HandlerError::Transient(error)) => {
                Step::Retry { error: format!("{error:#}"), permanent: false, event: () }
            }
        }
    }

    /// Publishes `message` to the DLQ, then stores the offset past it.
    pub async fn dead_letter<E>(&self, at: &Position, message: &OwnedMessage, reason: &str) -> Step<E> {
        if dead_letter(self.dlq, self.settings, message, reason, self.shutdown).await.is_none() {
            return Step::Interrupted;
        }
        match store_offset_alone(self.pool, &self.settings.group, at, message.offset() + 1).await {
            Ok(Ok(())) => Step::Done { outcome: Outcome::DeadLettered, stored: true },
            Ok(Err(Fenced(_))) => Step::Fenced,
            Err(error) => {
                // The record is in the DLQ; the next stored offset covers it.
                tracing::warn!(%error, group = self.settings.group, "storing the offset past a dead letter");
                Step::Done { outcome: Outcome::DeadLettered, stored: false }
            }
        }
    }

    async fn handle_once(
        &self,
        at: &Position,
        next: i64,
        event: &IncomingEvent,
    ) -> Result<Result<Outcome, Fenced>, HandlerError> {
        let mut tx = self.pool.begin().await?;
        let outcome = apply_in(&mut tx, self.handler, &self.settings.group, event).await?;
        if let Err(fenced) = store_offset(&mut tx, &self.settings.group, at, next).await? {
            tx.rollback().await?;
            return Ok(Err(fenced));
        }
        tx.commit().await?;
        metrics::counter!("consumer_transactions_total", "group" => self.settings.group.clone(), "kind" => "single")
            .increment(1);
        if outcome == Outcome::Applied {
            kernel::global_log::committed();
            self.handler.committed(event).await;
        }
        Ok(Ok(outcome))
    }

    /// The fast path: every record in one transaction, each with its inbox
    /// row, in order, then the offset past the last. On any failure the
    /// transaction is rolled back and the index of the record that failed
    /// is returned (0 when the transaction itself failed), so the caller
    /// can take the ones before it together and that one alone, where its
    /// failure is handled.
    async fn together(&self, at: &Position, records: &[OwnedMessage]) -> Together {
        let group = &self.settings.group;
        let mut events = Vec::with_capacity(records.len());
        for (index, message) in records.iter().enumerate() {
            match to_incoming(message) {
                Ok(event) => events.push(event),
                Err(_) => return Together::FailedAt(index),
            }
        }
        let Some(next) = records.last().map(|m| m.offset() + 1) else { return Together::Done(Vec::new()) };
        let mut tx = match self.pool.begin().await {
            Ok(tx) => tx,
            Err(error) => {
                tracing::debug!(%error, group, "a shared transaction could not begin; going record by record");
                return Together::FailedAt(0);
            }
        };
        // Every wanted record's inbox row in one statement, then the handlers.
        let mut wanted = Vec::with_capacity(events.len());
        let (mut ids, mut topics) = (Vec::with_capacity(events.len()), Vec::with_capacity(events.len()));
        for (index, event) in events.iter().enumerate() {
            if self.handler.wants(&event.headers.event_type) {
                let Ok(id) = event.event_id() else { return Together::FailedAt(index) };
                wanted.push(index);
                ids.push(id);
                topics.push(event.topic.as_str());
            }
        }
        let fresh = match record_all(&mut tx, group, &ids, &topics).await {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::debug!(%error, group, "a shared transaction's inbox rows failed; going record by record");
                return Together::FailedAt(0);
            }
        };
        let mut fresh = wanted.into_iter().zip(fresh).peekable();
        let mut outcomes = Vec::with_capacity(events.len());
        let mut applied = Vec::with_capacity(events.len());
        let mut to_handle = Vec::with_capacity(events.len());
        for (index, (event, message)) in events.iter().zip(records).enumerate() {
            outcomes.push(match fresh.next_if(|(wanted, _)| *wanted == index) {
                None => Outcome::Ignored,
                Some((_, false)) => Outcome::Duplicate,
                Some((_, true)) => {
                    applied.push(index);
                    to_handle.push(Fresh { event, span: consume_span(group, event, message.topic()) });
                    Outcome::Applied
                }
            });
        }
        if let Err((failed, error)) = self.handler.handle_all(&mut tx, &to_handle).await {
            let index = applied.get(failed).copied().unwrap_or(0);
            // On its own, that record's failure is handled (and logged).
            let ce_id = events.get(index).map_or("", |event| event.headers.id.as_str());
            tracing::debug!(%error, group, ce_id, "a record failed in a shared transaction");
            return Together::FailedAt(index);
        }
        drop(to_handle);
        match store_offset(&mut tx, group, at, next).await {
            Ok(Ok(())) => {}
            Ok(Err(Fenced(_))) => return Together::Fenced,
            Err(error) => {
                tracing::debug!(%error, group, "storing a shared transaction's offset failed");
                return Together::FailedAt(0);
            }
        }
        if let Err(error) = tx.commit().await {
            tracing::warn!(%error, group, "a shared transaction did not commit; going record by record");
            return Together::FailedAt(0);
        }
        metrics::counter!("consumer_transactions_total", "group" => group.clone(), "kind" => "shared").increment(1);
        kernel::global_log::committed();
        for (event, outcome) in events.iter().zip(&outcomes) {
            if *outcome == Outcome::Applied {
                self.handler.committed(event).await;
            }
        }
        Together::Done(outcomes)
    }
}

/// How a shared transaction went.
enum Together {
    /// Every record's outcome, in order.
    Done(Vec<Outcome>),
    /// The record at this index (0: the transaction itself) failed; nothing was written.
    FailedAt(usize),
    /// The partition's lease moved.
    Fenced,
}

/// The record as an event, or why it is not one.
pub fn to_incoming(message: &OwnedMessage) -> Result<IncomingEvent, String> {
    let headers = CloudEventHeaders::from_kafka(message.headers())
        .ok_or_else(|| "record lacks the CloudEvents headers ce_id and ce_type".to_owned())?;
    Ok(IncomingEvent {
        topic: message.topic().to_owned(),
        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        headers,
        value: message.payload().unwrap_or_default().to_vec(),
    })
}

/// The consumer span of one record, child of the producer's trace context.
pub fn consume_span(group: &str, event: &IncomingEvent, topic: &str) -> tracing::Span {
    let headers = &event.headers;
    let span = tracing::info_span!(
        "consume",
        otel.name = %format!("{group} consume {}", headers.event_type),
        otel.kind = "consumer",
        messaging.consumer.group = group,
        messaging.destination = topic,
        ce_type = %headers.event_type,
        ce_id = %headers.id,
        trace_id = tracing::field::Empty,
    );
    edge::trace_context::adopt(&span, edge::trace_context::from_traceparent(headers.traceparent.as_deref()));
    span
}
