//! What a payment intent's events change besides its stream, in the same
//! transaction: the charge and refund work queues, the ledger, and the
//! payment metrics.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;

use crate::{
    domain::{
        intent::{PaymentEvent, PaymentIntent},
        ledger,
    },
    error::PaymentError,
    store::{ledger as ledger_store, queues},
};

/// The payment-service's [`kernel::aggregate::Effects`] of a payment intent.
pub struct IntentEffects;

#[async_trait]
impl kernel::aggregate::Effects<PaymentIntent> for IntentEffects {
    type Error = PaymentError;

    async fn follow(
        &self,
        conn: &mut PgConnection,
        id: &str,
        _version: i64,
        event: &PaymentEvent,
        _after: &PaymentIntent,
    ) -> Result<(), PaymentError> {
        match event {
            PaymentEvent::ChargeRequested { attempt, attempt_key, .. } => {
                queues::open_charge(conn, id, *attempt, attempt_key).await?;
            }
            PaymentEvent::ChargeAbandoned { attempt, .. } => {
                queues::close_charge(conn, id, *attempt).await?;
            }
            PaymentEvent::PaymentSucceeded { attempt, amount, currency, .. } => {
                metrics::counter!("payments_total", "outcome" => "success", "failure_code" => "").increment(1);
                queues::close_charge(conn, id, *attempt).await?;
                ledger_store::post(conn, &ledger::capture(id, *amount, currency)).await?;
            }
            PaymentEvent::PaymentFailed { attempt, failure_code, .. } => {
                metrics::counter!("payments_total", "outcome" => "failure", "failure_code" => failure_code.clone())
                    .increment(1);
                queues::close_charge(conn, id, *attempt).await?;
            }
            PaymentEvent::PaymentRefundRequested { .. } => queues::open_refund(conn, id).await?,
            PaymentEvent::RefundAttemptFailed { attempt, .. } => {
                metrics::counter!("refunds_total", "outcome" => "attempt_failed").increment(1);
                // Exponential backoff from 500 ms, capped at a minute.
                let delay_ms = 500_u64.saturating_mul(1_u64 << (*attempt - 1).clamp(0, 7)).min(60_000);
                queues::retry_refund_after(conn, id, *attempt, Duration::from_millis(delay_ms)).await?;
            }
            PaymentEvent::RefundNeedsReview { attempts, reason } => {
                metrics::counter!("refunds_total", "outcome" => "needs_review").increment(1);
                tracing::error!(
                    payment_intent_id = id,
                    attempts,
                    reason = reason.as_str(),
                    "refund needs review: the PSP kept refusing it"
                );
                queues::close_refund(conn, id).await?;
            }
            PaymentEvent::RefundRetried { operator, .. } => {
                tracing::info!(payment_intent_id = id, operator = operator.as_str(), "refund retried after review");
                queues::open_refund(conn, id).await?;
            }
            PaymentEvent::RefundResolvedByHand { operator, note, .. } => {
                tracing::info!(
                    payment_intent_id = id,
                    operator = operator.as_str(),
                    note = note.as_str(),
                    "refund recorded as made by hand"
                );
            }
            PaymentEvent::PaymentRefunded { amount, currency, .. } => {
                ledger_store::post(conn, &ledger::refund(id, *amount, currency)).await?;
                metrics::counter!("refunds_total", "outcome" => "refunded").increment(1);
                queues::close_refund(conn, id).await?;
            }
            PaymentEvent::PaymentIntentCreated(_) | PaymentEvent::PaymentIntentClosed { .. } => {}
        }
        Ok(())
    }
}
