//! Refunds that need review, for operators (`ticketing refunds`): list
//! them, have one tried again once its cause is fixed, or record one that
//! was made by hand at the PSP. Each decision is an event on the intent,
//! with the operator's name, so the audit trail stays in the event store.

use chrono::{DateTime, Utc};
use kernel::aggregate::{self, Aggregate};
use kernel::event_store::{self, EventMetadata};
use sqlx::PgPool;

use crate::domain::intent::{IntentStatus, PaymentCommand, PaymentEvent, PaymentIntent, RefundReview};
use crate::error::PaymentError;
use crate::store::effects::IntentEffects;

/// One refund waiting for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundInReview {
    /// The intent.
    pub payment_intent_id: String,
    /// Its booking.
    pub booking_id: String,
    /// The payer.
    pub user_id: String,
    /// What must go back.
    pub amount: i64,
    /// In which currency.
    pub currency: String,
    /// Refund attempts the PSP refused.
    pub attempts: i32,
    /// The PSP's last reason.
    pub reason: String,
    /// Since when it waits.
    pub since: DateTime<Utc>,
}

/// Every refund waiting for review, oldest first.
pub async fn in_review(pool: &PgPool) -> Result<Vec<RefundInReview>, PaymentError> {
    let ids = event_store::streams_with_event(pool, PaymentIntent::STREAM_TYPE, "RefundNeedsReview").await?;
    let mut waiting = Vec::new();
    let mut conn = pool.acquire().await?;
    for id in ids {
        let stored = event_store::load_stream(&mut conn, PaymentIntent::STREAM_TYPE, &id)
            .await
            .map_err(|e| PaymentError::Internal(e.to_string()))?;
        let mut events = Vec::with_capacity(stored.len());
        for event in &stored {
            events.push(event.decode::<PaymentEvent>().map_err(|e| PaymentError::Internal(e.to_string()))?);
        }
        let Some(intent) = PaymentIntent::replay(&events) else { continue };
        if intent.status != IntentStatus::RefundNeedsReview {
            continue;
        }
        let last = events.iter().zip(&stored).rev().find_map(|(event, stored)| match event {
            PaymentEvent::RefundNeedsReview { attempts, reason } => {
                Some((*attempts, reason.clone(), stored.recorded_at))
            }
            _ => None,
        });
        let Some((attempts, reason, since)) = last else { continue };
        waiting.push(RefundInReview {
            payment_intent_id: id,
            booking_id: intent.created.booking_id,
            user_id: intent.created.user_id,
            amount: intent.created.amount,
            currency: intent.created.currency,
            attempts,
            reason,
            since,
        });
    }
    waiting.sort_by_key(|refund| refund.since);
    Ok(waiting)
}

/// Settles one refund in review as `operator` decided.
pub async fn review(
    pool: &PgPool,
    payment_intent_id: &str,
    action: RefundReview,
    operator: &str,
) -> Result<Vec<PaymentEvent>, PaymentError> {
    let metadata = EventMetadata { actor: Some(format!("operator:{operator}")), ..Default::default() };
    let operator = operator.to_owned();
    let executed = aggregate::execute(pool, payment_intent_id, &metadata, &IntentEffects, move |_, _, _| {
        let now = Utc::now();
        let command = PaymentCommand::ReviewRefund { action: action.clone(), operator: operator.clone(), now };
        Box::pin(std::future::ready(Ok(command)))
    })
    .await?;
    Ok(executed.events)
}
