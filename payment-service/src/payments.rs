//! The payment-service's use cases. `execute` decides payability from the
//! intent's own history, then asks the booking-service to admit the charge
//! (the booking's state is fresh there, and the admission keeps a cancel or
//! the sweeper from releasing the seats mid-charge), then calls the gateway
//! and records the outcome with its ledger posting in one transaction.

use std::{sync::Arc, time::Duration};

use proto::booking::{booking_service_client::BookingServiceClient, AdmitPaymentRequest};
use shared::{
    config::PaymentPolicy,
    event_store::EventMetadata,
    grpc::idempotent::ok_outcome,
    idempotency::{self, Claim},
};
use sqlx::{pool::PoolConnection, PgConnection, PgPool, Postgres};
use tonic::{transport::Channel, Code};

use crate::{
    domain::{
        intent::{decide, GatewayOutcome, PaymentCommand, PaymentEvent, PaymentIntent, PaymentRejection},
        ledger,
    },
    error::PaymentError,
    payment_gateway::{Charge, Cvv, PaymentGateway, Refund},
    store::{ledger as ledger_store, streams},
};

const MAX_RACE_RETRIES: usize = 5;
const REQUIRED_FIELDS: &str = "paymentIntentId, paymentMethodToken and cvv are required.";

/// A `POST /payments/execute` request. The CVV lives only here and in the gateway call.
pub struct ExecutePayment {
    /// The intent.
    pub payment_intent_id: String,
    /// The payment method token.
    pub payment_method_token: String,
    /// The CVV as sent.
    pub cvv: String,
}

/// A request that passed validation (the CVV still only in memory).
pub struct ValidPayment {
    /// The intent.
    pub payment_intent_id: String,
    /// A token the gateway recognises.
    pub payment_method_token: String,
    /// The CVV.
    pub cvv: Cvv,
}

/// What an execution answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Executed {
    /// The intent.
    pub payment_intent_id: String,
    /// The gateway's answer.
    pub outcome: GatewayOutcome,
}

/// The payment-service's use cases.
#[derive(Clone)]
pub struct Payments {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    gateway: Arc<dyn PaymentGateway>,
    booking: BookingServiceClient<Channel>,
    policy: PaymentPolicy,
    intent_wait: Duration,
}

impl Payments {
    /// Use cases over `pool`, charging through `gateway`, admitting through `booking`.
    pub fn new(
        pool: PgPool,
        gateway: Arc<dyn PaymentGateway>,
        booking: BookingServiceClient<Channel>,
        policy: PaymentPolicy,
        intent_wait: Duration,
    ) -> Self {
        Self { inner: Arc::new(Inner { pool, gateway, booking, policy, intent_wait }) }
    }

    /// Checks the request's shape; nothing is recorded for a malformed one.
    pub fn validate(&self, request: ExecutePayment) -> Result<ValidPayment, PaymentError> {
        if request.payment_intent_id.trim().is_empty()
            || request.payment_method_token.trim().is_empty()
            || request.cvv.is_empty()
        {
            return Err(PaymentError::Invalid(REQUIRED_FIELDS.into()));
        }
        let cvv = Cvv::parse(&request.cvv).ok_or_else(|| PaymentError::Invalid("cvv must be 3 or 4 digits.".into()))?;
        if !self.inner.gateway.recognizes(&request.payment_method_token) {
            return Err(PaymentError::UnknownToken);
        }
        if request.payment_intent_id.len() > 128 {
            return Err(PaymentRejection::NotFound.into());
        }
        Ok(ValidPayment {
            payment_intent_id: request.payment_intent_id,
            payment_method_token: request.payment_method_token,
            cvv,
        })
    }

    /// Charges an intent for `user_id`. Runs to completion even if the
    /// caller goes away: money that moved is always recorded, together with
    /// the idempotency outcome when a key was claimed.
    pub async fn execute(
        &self,
        user_id: &str,
        payment: ValidPayment,
        metadata: EventMetadata,
        claim: Option<Claim>,
    ) -> Result<Executed, PaymentError> {
        let this = self.clone();
        let user_id = user_id.to_owned();
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move {
                this.execute_to_completion(
                    &user_id,
                    payment.payment_intent_id,
                    payment.payment_method_token,
                    payment.cvv,
                    &metadata,
                    claim.as_ref(),
                )
                .await
            },
            tracing::Span::current(),
        ));
        task.await.map_err(|e| PaymentError::Internal(format!("payment task failed: {e}")))?
    }

    async fn execute_to_completion(
        &self,
        user_id: &str,
        payment_intent_id: String,
        token: String,
        cvv: Cvv,
        metadata: &EventMetadata,
        claim: Option<&Claim>,
    ) -> Result<Executed, PaymentError> {
        let intent = self.wait_for_intent(&payment_intent_id).await?;
        if intent.created.user_id != user_id {
            return Err(PaymentRejection::NotOwner.into());
        }
        // One charge at a time per intent; a session advisory lock holds no
        // transaction open while the gateway works.
        let mut lock = self.inner.pool.acquire().await?;
        sqlx::query("select pg_advisory_lock(hashtextextended($1, 0))")
            .bind(format!("charge:{payment_intent_id}"))
            .execute(&mut *lock)
            .await?;
        let result = self.charge_locked(user_id, &payment_intent_id, token, cvv, metadata, claim).await;
        release(lock, &payment_intent_id).await;
        result
    }

    async fn charge_locked(
        &self,
        user_id: &str,
        payment_intent_id: &str,
        token: String,
        cvv: Cvv,
        metadata: &EventMetadata,
        claim: Option<&Claim>,
    ) -> Result<Executed, PaymentError> {
        let intent = {
            let mut conn = self.inner.pool.acquire().await?;
            streams::load(&mut conn, payment_intent_id).await?.state.ok_or(PaymentRejection::NotFound)?
        };
        decide(
            Some(&intent),
            PaymentCommand::CheckPayable {
                user_id: user_id.to_owned(),
                now: chrono::Utc::now(),
                safety_margin: self.inner.policy.safety_margin(),
                max_attempts: self.inner.policy.max_attempts(),
            },
        )?;
        self.admit(&intent, metadata).await?;
        let charge = Charge {
            payment_intent_id: payment_intent_id.to_owned(),
            amount: intent.created.amount,
            currency: intent.created.currency.clone(),
            token: token.clone(),
            cvv,
        };
        let outcome = self.inner.gateway.charge(&charge).await;
        drop(charge);
        let executed = Executed { payment_intent_id: payment_intent_id.to_owned(), outcome };
        self.record_outcome(&executed, token, metadata, claim).await?;
        Ok(executed)
    }

    /// Asks the booking-service to admit the charge (fresh booking state).
    async fn admit(&self, intent: &PaymentIntent, metadata: &EventMetadata) -> Result<(), PaymentError> {
        let mut request = tonic::Request::new(AdmitPaymentRequest {
            booking_id: intent.created.booking_id.clone(),
            payment_intent_id: intent.created.payment_intent_id.clone(),
            user_id: intent.created.user_id.clone(),
            admission_secs: 0,
        });
        if let Some(value) = metadata.correlation_id.as_deref().and_then(|v| v.parse().ok()) {
            request.metadata_mut().insert(shared::grpc::REQUEST_ID, value);
        }
        shared::trace_context::inject_grpc(request.metadata_mut());
        match self.inner.booking.clone().admit_payment(request).await {
            Ok(_) => Ok(()),
            Err(status) => match status.code() {
                Code::FailedPrecondition | Code::NotFound => Err(PaymentRejection::NotPayable.into()),
                Code::PermissionDenied => Err(PaymentRejection::NotOwner.into()),
                _ => Err(PaymentError::BookingUnavailable(status.message().to_owned())),
            },
        }
    }

    /// Records the gateway's answer; retried on lost races because the
    /// money has moved and must be recorded.
    async fn record_outcome(
        &self,
        executed: &Executed,
        token: String,
        metadata: &EventMetadata,
        claim: Option<&Claim>,
    ) -> Result<(), PaymentError> {
        let stored = ok_outcome(executed).map_err(|e| PaymentError::Internal(e.to_string()))?;
        for _ in 0..MAX_RACE_RETRIES {
            let mut tx = self.inner.pool.begin().await?;
            let command = PaymentCommand::RecordOutcome {
                outcome: executed.outcome.clone(),
                payment_method_token: token.clone(),
            };
            match execute_in(&mut tx, &executed.payment_intent_id, metadata, command).await {
                Ok(_) => {
                    if let Some(claim) = claim {
                        idempotency::complete(&mut tx, claim, &stored).await?;
                    }
                    tx.commit().await?;
                    return Ok(());
                }
                Err(PaymentError::Contention) => continue,
                Err(other) => return Err(other),
            }
        }
        Err(PaymentError::Contention)
    }

    /// Waits up to the configured time for an intent created from `SeatLocked`.
    async fn wait_for_intent(&self, payment_intent_id: &str) -> Result<PaymentIntent, PaymentError> {
        let deadline = tokio::time::Instant::now() + self.inner.intent_wait;
        loop {
            let loaded = {
                let mut conn = self.inner.pool.acquire().await?;
                streams::load(&mut conn, payment_intent_id).await?.state
            };
            if let Some(intent) = loaded {
                return Ok(intent);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(PaymentRejection::NotFound.into());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Makes every due refund once (the refund worker's pass); returns how many were tried.
    pub async fn refund_due(&self, max_attempts: i32) -> Result<usize, PaymentError> {
        let due: Vec<String> = sqlx::query_scalar(
            "select payment_intent_id from pending_refunds where due_at <= now() order by due_at limit 50",
        )
        .fetch_all(&self.inner.pool)
        .await?;
        for payment_intent_id in &due {
            if let Err(error) = self.refund_once(payment_intent_id, max_attempts).await {
                tracing::warn!(payment_intent_id, %error, "refund attempt could not be recorded");
            }
        }
        Ok(due.len())
    }

    async fn refund_once(&self, payment_intent_id: &str, max_attempts: i32) -> Result<(), PaymentError> {
        // Serialised with charges of the same intent and with other workers.
        let mut lock = self.inner.pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(format!("charge:{payment_intent_id}"))
            .fetch_one(&mut *lock)
            .await?;
        if !locked {
            return Ok(());
        }
        let result = async {
            let intent = {
                let mut conn = self.inner.pool.acquire().await?;
                streams::load(&mut conn, payment_intent_id).await?.state.ok_or(PaymentRejection::NotFound)?
            };
            if intent.status != crate::domain::intent::IntentStatus::RefundPending {
                return Ok(());
            }
            let refund = Refund {
                idempotency_key: format!("refund:{payment_intent_id}"),
                payment_intent_id: payment_intent_id.to_owned(),
                amount: intent.created.amount,
                currency: intent.created.currency.clone(),
            };
            let outcome = self.inner.gateway.refund(&refund).await;
            let metadata = EventMetadata { actor: Some("system:refund-worker".into()), ..Default::default() };
            for _ in 0..MAX_RACE_RETRIES {
                let mut tx = self.inner.pool.begin().await?;
                let command = PaymentCommand::RecordRefund { outcome: outcome.clone(), max_attempts };
                match execute_in(&mut tx, payment_intent_id, &metadata, command).await {
                    Ok(_) => return Ok(tx.commit().await?),
                    Err(PaymentError::Contention) => continue,
                    Err(other) => return Err(other),
                }
            }
            Err(PaymentError::Contention)
        }
        .await;
        release(lock, payment_intent_id).await;
        result
    }

    /// The database pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// One intent, for its owner or an admin.
    pub async fn get(
        &self,
        user_id: &str,
        admin: bool,
        payment_intent_id: &str,
    ) -> Result<PaymentIntent, PaymentError> {
        let mut conn = self.inner.pool.acquire().await?;
        let intent = streams::load(&mut conn, payment_intent_id).await?.state.ok_or(PaymentRejection::NotFound)?;
        if intent.created.user_id != user_id && !admin {
            return Err(PaymentRejection::NotOwner.into());
        }
        Ok(intent)
    }
}

async fn release(mut lock: PoolConnection<Postgres>, payment_intent_id: &str) {
    let unlocked = sqlx::query("select pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(format!("charge:{payment_intent_id}"))
        .execute(&mut *lock)
        .await;
    if unlocked.is_err() {
        // Closing the session is the other way to release the lock.
        drop(lock.detach());
    }
}

/// Loads the intent, decides `command`, appends the events and posts their
/// ledger entries on `conn` (the caller's transaction).
pub async fn execute_in(
    conn: &mut PgConnection,
    payment_intent_id: &str,
    metadata: &EventMetadata,
    command: PaymentCommand,
) -> Result<Vec<PaymentEvent>, PaymentError> {
    let loaded = streams::load(conn, payment_intent_id).await?;
    let events = decide(loaded.state.as_ref(), command)?;
    if events.is_empty() {
        return Ok(events);
    }
    streams::append(conn, payment_intent_id, loaded.version, &events, metadata).await?;
    for event in &events {
        match event {
            PaymentEvent::PaymentSucceeded { .. } => {
                metrics::counter!("payments_total", "outcome" => "success", "failure_code" => "").increment(1);
            }
            PaymentEvent::PaymentFailed { failure_code, .. } => {
                metrics::counter!("payments_total", "outcome" => "failure", "failure_code" => failure_code.clone())
                    .increment(1);
            }
            _ => {}
        }
        match event {
            PaymentEvent::PaymentRefundRequested { .. } => {
                sqlx::query(
                    "insert into pending_refunds (payment_intent_id, due_at) values ($1, now()) on conflict do nothing",
                )
                .bind(payment_intent_id)
                .execute(&mut *conn)
                .await?;
            }
            PaymentEvent::RefundAttemptFailed { attempt, .. } => {
                metrics::counter!("refunds_total", "outcome" => "attempt_failed").increment(1);
                // Exponential backoff from 500 ms, capped at a minute.
                let delay_ms = 500_i64.saturating_mul(1_i64 << (*attempt - 1).clamp(0, 7)).min(60_000);
                sqlx::query(
                    "update pending_refunds set attempts = $2, due_at = now() + make_interval(secs => $3) \
                     where payment_intent_id = $1",
                )
                .bind(payment_intent_id)
                .bind(attempt)
                .bind(delay_ms as f64 / 1000.0)
                .execute(&mut *conn)
                .await?;
            }
            PaymentEvent::RefundNeedsReview { attempts, reason } => {
                metrics::counter!("refunds_total", "outcome" => "needs_review").increment(1);
                tracing::error!(
                    payment_intent_id,
                    attempts,
                    reason = reason.as_str(),
                    "refund needs review: the gateway kept refusing it"
                );
                sqlx::query("delete from pending_refunds where payment_intent_id = $1")
                    .bind(payment_intent_id)
                    .execute(&mut *conn)
                    .await?;
            }
            PaymentEvent::PaymentSucceeded { amount, currency, .. } => {
                ledger_store::post(conn, &ledger::capture(payment_intent_id, *amount, currency)).await?;
            }
            PaymentEvent::PaymentRefunded { amount, currency, .. } => {
                ledger_store::post(conn, &ledger::refund(payment_intent_id, *amount, currency)).await?;
                metrics::counter!("refunds_total", "outcome" => "refunded").increment(1);
                sqlx::query("delete from pending_refunds where payment_intent_id = $1")
                    .bind(payment_intent_id)
                    .execute(&mut *conn)
                    .await?;
            }
            _ => {}
        }
    }
    Ok(events)
}
