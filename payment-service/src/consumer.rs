//! Reactions of the payment-service to `booking.events.v1`: `SeatLocked`
//! creates the payment intent (amount from the booking-service, never the
//! client); a cancelled, expired or failed booking closes it, and refunds it
//! if it was already paid.

use std::sync::Arc;

use async_trait::async_trait;
use kernel::aggregate::Start;
use kernel::event_store::EventMetadata;
use messaging::inbox::EventHandler;
use messaging::inbox::Fresh;
use messaging::inbox::HandlerError;
use messaging::inbox::IncomingEvent;
use messaging::topics::booking_type;
use proto::events as pb;
use proto::time::from_timestamp;
use sqlx::PgConnection;

use crate::{
    domain::intent::{BookingEnd, IntentCreated, PaymentCommand, PaymentIntent, PaymentRejection},
    error::PaymentError,
    store::effects::IntentEffects,
};

/// Handles booking events inside the inbox transaction, and announces each
/// intent it created to the requests waiting for it.
pub struct BookingEventHandler {
    /// Who waits for which intent.
    pub intent_waiters: Arc<runtime::waiters::Waiters>,
}

/// The booking events this service reacts to, decoded once. Every other
/// type (BookingConfirmed, types added later) is acknowledged untouched.
enum BookingEventIn {
    SeatLocked(pb::SeatLocked),
    Cancelled(pb::BookingCancelled),
    Expired(pb::BookingExpired),
    Failed(pb::BookingFailed),
}

type Decoder<T> = fn(&IncomingEvent) -> Result<T, HandlerError>;

impl BookingEventIn {
    /// How to decode records of `ce_type`, if this service wants them.
    fn decoder(ce_type: &str) -> Option<Decoder<Self>> {
        let name = ce_type.strip_prefix(&booking_type(""))?;
        Some(match name {
            "SeatLocked" => |e| e.decode().map(Self::SeatLocked),
            "BookingCancelled" => |e| e.decode().map(Self::Cancelled),
            "BookingExpired" => |e| e.decode().map(Self::Expired),
            "BookingFailed" => |e| e.decode().map(Self::Failed),
            _ => return None,
        })
    }
}

const ACTOR: &str = "system:booking-events";

fn outcome(result: Result<impl Sized, PaymentError>) -> Result<(), HandlerError> {
    match result {
        // Re-created or re-closed: already applied.
        Ok(_) | Err(PaymentError::Rejected(PaymentRejection::AlreadyExists)) => Ok(()),
        // Any other refusal is deterministic: retrying cannot change it.
        Err(PaymentError::Rejected(rejection)) => {
            Err(HandlerError::Poison(format!("booking event refused by the intent: {rejection}")))
        }
        Err(PaymentError::Invalid(reason)) => Err(HandlerError::Poison(reason)),
        // The database's own words decide: a lost connection is retried, a
        // refused statement is dead-lettered after a few tries.
        Err(PaymentError::Database(error)) => Err(error.into()),
        Err(PaymentError::Internal(reason)) => Err(HandlerError::Permanent(reason)),
        Err(error) => Err(HandlerError::Transient(anyhow::anyhow!(error.to_string()))),
    }
}

/// Runs `command` on the intent `id` in the inbox transaction.
async fn execute_in(
    tx: &mut PgConnection,
    id: &str,
    metadata: &kernel::event_store::EventMetadata,
    command: PaymentCommand,
) -> Result<(), PaymentError> {
    kernel::aggregate::execute_in(tx, id, metadata, &IntentEffects, kernel::aggregate::just(command)).await.map(|_| ())
}

async fn end(
    tx: &mut PgConnection,
    event: &IncomingEvent,
    booking_id: &str,
    end: BookingEnd,
) -> Result<(), HandlerError> {
    // The booking-service's SeatLocked names the intent; find it by booking.
    let intent = crate::store::queues::intent_of_booking(tx, booking_id).await?;
    let Some(intent) = intent else {
        return Err(HandlerError::Poison(format!("no payment intent for booking {booking_id}")));
    };
    let now = chrono::Utc::now();
    outcome(execute_in(tx, &intent, &event.caused_metadata(ACTOR), PaymentCommand::BookingEnded { end, now }).await)
}

/// The intent a `SeatLocked` asks for, or why the record is poison.
fn intent_of(locked: pb::SeatLocked) -> Result<IntentCreated, HandlerError> {
    let total = locked.total.unwrap_or_default();
    let payable_until = locked.locked_until.as_ref().and_then(from_timestamp);
    let created_at = locked.created_at.as_ref().and_then(from_timestamp);
    let (Some(payable_until), Some(created_at)) = (payable_until, created_at) else {
        return Err(HandlerError::Poison("SeatLocked without locked_until or created_at".into()));
    };
    if locked.payment_intent_id.is_empty() || total.amount <= 0 {
        return Err(HandlerError::Poison("SeatLocked without an intent id or a positive total".into()));
    }
    Ok(IntentCreated {
        payment_intent_id: locked.payment_intent_id,
        booking_id: locked.booking_id,
        user_id: locked.user_id,
        amount: total.amount,
        currency: if total.currency.is_empty() { "KRW".into() } else { total.currency },
        payable_until,
        created_at,
    })
}

/// Creates the intents of a run of `SeatLocked` records (`(index, intent,
/// metadata)`) with one statement; an intent that exists already (a
/// redelivery under a new event id) is read and decided on like any other
/// command.
async fn create_intents(
    tx: &mut PgConnection,
    run: Vec<(usize, IntentCreated, EventMetadata)>,
) -> Result<(), (usize, HandlerError)> {
    let Some(first) = run.first().map(|(index, _, _)| *index) else { return Ok(()) };
    let starts = run
        .iter()
        .map(|(_, created, metadata)| Start {
            id: created.payment_intent_id.clone(),
            metadata: metadata.clone(),
            command: PaymentCommand::Create(created.clone()),
        })
        .collect();
    let existed = match kernel::aggregate::start_each_in::<PaymentIntent, _>(tx, &IntentEffects, starts).await {
        Ok(existed) => existed,
        Err((at, error)) => {
            // The shared transaction fails; that record is then handled on its own.
            let index = run.get(at).map_or(first, |(index, _, _)| *index);
            let error = outcome(Err::<(), _>(error))
                .err()
                .unwrap_or_else(|| HandlerError::Permanent("an intent's start was refused".into()));
            return Err((index, error));
        }
    };
    for (index, created, metadata) in run {
        if existed.contains(&created.payment_intent_id) {
            let id = created.payment_intent_id.clone();
            outcome(execute_in(tx, &id, &metadata, PaymentCommand::Create(created)).await)
                .map_err(|error| (index, error))?;
        }
    }
    Ok(())
}

/// Runs what one decoded booking event asks of its intent.
async fn apply(tx: &mut PgConnection, event: &IncomingEvent, decoded: BookingEventIn) -> Result<(), HandlerError> {
    match decoded {
        BookingEventIn::SeatLocked(locked) => {
            let created = intent_of(locked)?;
            let meta = event.caused_metadata(ACTOR);
            let id = created.payment_intent_id.clone();
            // Appended at version 0 without reading the stream, which is
            // new but for a redelivery; one that exists refuses the append
            // and is then read and decided on like any other command (if
            // a concurrent writer aborted the transaction, that read
            // fails and the record is tried again).
            let create = PaymentCommand::Create(created.clone());
            match kernel::aggregate::start_in(tx, &id, &meta, &IntentEffects, create).await {
                Err(PaymentError::Contention) => {
                    outcome(execute_in(tx, &id, &meta, PaymentCommand::Create(created)).await)
                }
                started => outcome(started),
            }
        }
        BookingEventIn::Cancelled(e) => end(tx, event, &e.booking_id, BookingEnd::Cancelled).await,
        BookingEventIn::Expired(e) => end(tx, event, &e.booking_id, BookingEnd::Expired).await,
        BookingEventIn::Failed(e) => end(tx, event, &e.booking_id, BookingEnd::Failed).await,
    }
}

#[async_trait]
impl EventHandler for BookingEventHandler {
    fn wants(&self, ce_type: &str) -> bool {
        BookingEventIn::decoder(ce_type).is_some()
    }

    async fn handle(&self, tx: &mut PgConnection, event: &IncomingEvent) -> Result<(), HandlerError> {
        let Some(decode) = BookingEventIn::decoder(&event.headers.event_type) else { return Ok(()) };
        apply(tx, event, decode(event)?).await
    }

    /// A shared transaction's records in order: runs of `SeatLocked` create
    /// their intents with one statement (`aggregate::start_each_in`); every
    /// other record is handled on its own, after the run before it.
    async fn handle_all(&self, tx: &mut PgConnection, events: &[Fresh<'_>]) -> Result<(), (usize, HandlerError)> {
        let mut run: Vec<(usize, IntentCreated, EventMetadata)> = Vec::new();
        for (index, fresh) in events.iter().enumerate() {
            let Some(decode) = BookingEventIn::decoder(&fresh.event.headers.event_type) else { continue };
            match decode(fresh.event).map_err(|error| (index, error))? {
                BookingEventIn::SeatLocked(locked) => {
                    let created = intent_of(locked).map_err(|error| (index, error))?;
                    // In the record's span, so the intent's event continues its trace.
                    let meta = fresh.span.in_scope(|| fresh.event.caused_metadata(ACTOR));
                    run.push((index, created, meta));
                }
                other => {
                    create_intents(tx, std::mem::take(&mut run)).await?;
                    tracing::Instrument::instrument(apply(tx, fresh.event, other), fresh.span.clone())
                        .await
                        .map_err(|error| (index, error))?;
                }
            }
        }
        create_intents(tx, run).await
    }

    async fn committed(&self, event: &IncomingEvent) {
        if let Some(Ok(BookingEventIn::SeatLocked(locked))) =
            BookingEventIn::decoder(&event.headers.event_type).map(|decode| decode(event))
        {
            self.intent_waiters.announce(&locked.payment_intent_id);
        }
    }
}
