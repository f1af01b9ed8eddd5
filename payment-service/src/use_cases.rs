//! The payment-service's use cases.
//!
//! `execute` follows the model of payment processors that never lose money
//! in flight:
//!
//! 1. record `ChargeRequested` (attempt `n`, PSP key `{intent}:{n}`): the
//!    stream allows one pending attempt, so a concurrent execute is refused
//!    at once, without waiting on any lock or second connection;
//! 2. ask the booking-service to admit the charge (fresh booking state; the
//!    admission keeps a cancel or the sweeper from releasing the seats);
//! 3. charge the PSP under the attempt key;
//! 4. record the answer with its ledger posting and the Idempotency-Key's
//!    outcome in one transaction, retried until it commits.
//!
//! Whatever stops this between 1 and 4 (a crash, a lost answer, a database
//! outage) leaves a pending attempt; the reconciler asks the PSP by key and
//! records what happened, or voids the key if the PSP never saw it.

use std::{sync::Arc, time::Duration};

use agreements::PaymentPolicy;
use kernel::aggregate;
use kernel::event_store::EventMetadata;
use proto::booking::{booking_service_client::BookingServiceClient, AdmitPaymentRequest, GetBookingRequest};
use runtime::failpoint;
use runtime::grpc::Credentials;
use runtime::idempotency;
use runtime::idempotency::Claim;
use runtime::idempotent::ok_outcome;
use sqlx::PgPool;
use tonic::{transport::Channel, Code};

use crate::{
    domain::intent::{IntentStatus, PaymentCommand, PaymentEvent, PaymentIntent, PaymentRejection, PspOutcome},
    error::PaymentError,
    psp::{Charge, Cvv, Psp, Refund},
    store::{effects::IntentEffects, queues},
};

const REQUIRED_FIELDS: &str = "paymentIntentId, paymentMethodToken and cvv are required.";
/// The idempotency operation name of `POST /payments/execute`.
pub const EXECUTE_OPERATION: &str = "execute_payment";
/// What an Idempotency-Key of `POST /payments/execute` is bound to: the
/// intent and the token (never the CVV, which is not stored).
pub fn execute_fingerprint(payment_intent_id: &str, payment_method_token: &str) -> String {
    format!("{payment_intent_id}|{payment_method_token}")
}

/// Asks of the PSP per attempt before its answer is left to the reconciler.
const PSP_ASKS: u32 = 3;

/// A `POST /payments/execute` request. The CVV lives only here and in the PSP call.
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
    /// A token the PSP recognises.
    pub payment_method_token: String,
    /// The CVV.
    pub cvv: Cvv,
}

/// What an execution answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Executed {
    /// The intent.
    pub payment_intent_id: String,
    /// The PSP's answer.
    pub outcome: PspOutcome,
    /// The booking paid for (empty in outcomes stored before it was recorded).
    #[serde(default)]
    pub booking_id: String,
}

/// Timing of the reconciler and the refund worker.
#[derive(Debug, Clone, Copy)]
pub struct Reconciliation {
    /// An attempt this old without an outcome is settled with the PSP.
    /// Longer than an execute can take (admission and PSP timeouts).
    pub grace: Duration,
}

/// The payment-service's use cases.
#[derive(Clone)]
pub struct Payments {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    psp: Arc<dyn Psp>,
    booking: BookingServiceClient<Channel>,
    policy: PaymentPolicy,
    intent_wait: Duration,
    reconciliation: Reconciliation,
    intent_waiters: Arc<runtime::waiters::Waiters>,
}

impl Payments {
    /// Use cases over `pool`, charging through `psp`, admitting through `booking`.
    pub fn new(
        pool: PgPool,
        psp: Arc<dyn Psp>,
        booking: BookingServiceClient<Channel>,
        policy: PaymentPolicy,
        intent_wait: Duration,
        reconciliation: Reconciliation,
        intent_waiters: Arc<runtime::waiters::Waiters>,
    ) -> Self {
        Self { inner: Arc::new(Inner { pool, psp, booking, policy, intent_wait, reconciliation, intent_waiters }) }
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
        if !self.inner.psp.recognizes(&request.payment_method_token) {
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

    /// Charges an intent for the payer `credentials` name (their token goes
    /// along to the booking-service's admission). Runs to completion even if the
    /// caller goes away: money that moved is always recorded, together with
    /// the idempotency outcome when a key was claimed.
    pub async fn execute(
        &self,
        credentials: &Credentials,
        payment: ValidPayment,
        metadata: EventMetadata,
        claim: Option<Claim>,
    ) -> Result<Executed, PaymentError> {
        let this = self.clone();
        let payer = credentials.clone();
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move { this.execute_to_completion(&payer, payment, &metadata, claim.as_ref()).await },
            tracing::Span::current(),
        ));
        task.await.map_err(|e| PaymentError::Internal(format!("payment task failed: {e}")))?
    }

    async fn execute_to_completion(
        &self,
        payer: &Credentials,
        payment: ValidPayment,
        metadata: &EventMetadata,
        claim: Option<&Claim>,
    ) -> Result<Executed, PaymentError> {
        let payment_intent_id = payment.payment_intent_id;
        let user_id = payer.user.user_id.as_str();
        let Some(intent) = self.wait_for_intent(&payment_intent_id).await? else {
            return Err(self.missing_intent(&payment_intent_id, &payer.token).await);
        };
        if intent.created.user_id != user_id {
            return Err(PaymentRejection::NotOwner.into());
        }
        // A retry of a request whose charge is still unsettled (it took the
        // key over after its lease): the outcome is the reconciler's to
        // record under this key, so the key must stay claimed.
        let ours = intent.pending_charge.as_ref().and_then(|p| p.idempotency_key.as_deref());
        if ours.is_some() && ours == claim.map(Claim::key) {
            return Err(PaymentError::OutcomePending);
        }
        let request = PaymentCommand::RequestCharge {
            user_id: user_id.to_owned(),
            now: chrono::Utc::now(),
            safety_margin: self.inner.policy.safety_margin(),
            max_attempts: self.inner.policy.max_attempts(),
            payment_method_token: payment.payment_method_token.clone(),
            idempotency_key: claim.map(|c| c.key().to_owned()),
        };
        let (attempt, attempt_key) = match self.decide_and_append(&payment_intent_id, metadata, request).await?.first()
        {
            Some(PaymentEvent::ChargeRequested { attempt, attempt_key, .. }) => (*attempt, attempt_key.clone()),
            _ => return Err(PaymentError::Internal("no attempt was recorded".into())),
        };
        if let Err(refused) = self.admit(&intent, metadata, &payer.token).await {
            self.abandon(&payment_intent_id, attempt, &refused.to_string(), metadata).await;
            return Err(refused);
        }
        let charge = Charge {
            idempotency_key: attempt_key,
            payment_intent_id: payment_intent_id.clone(),
            amount: intent.created.amount,
            currency: intent.created.currency.clone(),
            token: payment.payment_method_token,
            cvv: payment.cvv,
        };
        let outcome = self.ask_psp(&charge).await?;
        drop(charge);
        failpoint::crash_if_armed("payment.after_psp_charge");
        let executed = Executed { payment_intent_id, outcome, booking_id: intent.created.booking_id.clone() };
        self.record_outcome(&executed, attempt, metadata, claim).await?;
        Ok(executed)
    }

    /// Loads, decides and appends `command` in one transaction, re-deciding
    /// on a lost race; returns the appended events.
    async fn decide_and_append(
        &self,
        payment_intent_id: &str,
        metadata: &EventMetadata,
        command: PaymentCommand,
    ) -> Result<Vec<PaymentEvent>, PaymentError> {
        let executed = aggregate::execute(&self.inner.pool, payment_intent_id, metadata, &IntentEffects, |_, _, _| {
            Box::pin(std::future::ready(Ok(command.clone())))
        })
        .await?;
        Ok(executed.events)
    }

    /// Charges under the attempt key, asking again (same key, so never a
    /// second charge) while the PSP's answer is lost.
    async fn ask_psp(&self, charge: &Charge) -> Result<PspOutcome, PaymentError> {
        let mut backoff = Duration::from_millis(200);
        for ask in 1..=PSP_ASKS {
            match self.inner.psp.charge(charge).await {
                Ok(outcome) => return Ok(outcome),
                Err(error) => {
                    tracing::warn!(attempt_key = charge.idempotency_key, ask, %error, "PSP answer lost; asking again");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
        // The reconciler settles it with the PSP; the client retries with its key.
        Err(PaymentError::OutcomePending)
    }

    /// Closes an attempt that never reached the PSP (best effort: the
    /// reconciler voids the key if this does not commit).
    async fn abandon(&self, payment_intent_id: &str, attempt: i32, reason: &str, metadata: &EventMetadata) {
        let command = PaymentCommand::AbandonCharge { attempt, reason: reason.to_owned() };
        if let Err(error) = self.decide_and_append(payment_intent_id, metadata, command).await {
            tracing::warn!(payment_intent_id, attempt, %error, "abandoned attempt not recorded; the reconciler will settle it");
        }
    }

    /// Asks the booking-service to admit the charge (fresh booking state),
    /// as the payer: their `token` is the call's credential.
    async fn admit(&self, intent: &PaymentIntent, metadata: &EventMetadata, token: &str) -> Result<(), PaymentError> {
        let mut request = tonic::Request::new(AdmitPaymentRequest {
            booking_id: intent.created.booking_id.clone(),
            payment_intent_id: intent.created.payment_intent_id.clone(),
            ..AdmitPaymentRequest::default()
        });
        edge::wire::forward_bearer(&mut request, token);
        if let Some(value) = metadata.correlation_id.as_deref().and_then(|v| v.parse().ok()) {
            request.metadata_mut().insert(edge::wire::REQUEST_ID, value);
        }
        edge::trace_context::inject_grpc(request.metadata_mut());
        match self.inner.booking.clone().admit_payment(request).await {
            Ok(_) => Ok(()),
            Err(status) => match status.code() {
                Code::FailedPrecondition | Code::NotFound => Err(PaymentRejection::NotPayable.into()),
                Code::PermissionDenied => Err(PaymentRejection::NotOwner.into()),
                Code::Unauthenticated => Err(PaymentError::PayerUnauthenticated),
                _ => Err(PaymentError::BookingUnavailable(status.message().to_owned())),
            },
        }
    }

    /// Records the PSP's answer to `attempt` (and the key's outcome). The
    /// money may have moved, so this retries until it commits.
    async fn record_outcome(
        &self,
        executed: &Executed,
        attempt: i32,
        metadata: &EventMetadata,
        claim: Option<&Claim>,
    ) -> Result<(), PaymentError> {
        let stored = ok_outcome(executed).map_err(|e| PaymentError::Internal(e.to_string()))?;
        let mut backoff = Duration::from_millis(50);
        loop {
            let recorded = async {
                let mut tx = self.inner.pool.begin().await?;
                let command = PaymentCommand::RecordOutcome { attempt, outcome: executed.outcome.clone() };
                aggregate::execute_in(
                    &mut tx,
                    &executed.payment_intent_id,
                    metadata,
                    &IntentEffects,
                    aggregate::just(command),
                )
                .await?;
                if let Some(claim) = claim {
                    idempotency::complete(&mut tx, claim, &stored).await?;
                }
                aggregate::commit(tx).await?;
                Ok::<_, PaymentError>(())
            }
            .await;
            match recorded {
                Ok(()) => return Ok(()),
                Err(PaymentError::Rejected(rejection)) => return Err(rejection.into()),
                Err(error) => {
                    tracing::warn!(
                        payment_intent_id = executed.payment_intent_id,
                        attempt,
                        %error,
                        "recording a PSP answer failed; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Why an intent that did not arrive in time is missing: a pending
    /// booking of the payer names it (not ready: retry shortly), a booking
    /// that ended names it (no longer payable), another user's booking does
    /// (not theirs), or none does (not found).
    async fn missing_intent(&self, payment_intent_id: &str, token: &str) -> PaymentError {
        let Some(booking_id) = agreements::ids::booking_of(payment_intent_id) else {
            return PaymentRejection::NotFound.into();
        };
        let mut request = tonic::Request::new(GetBookingRequest { booking_id, ..GetBookingRequest::default() });
        edge::wire::forward_bearer(&mut request, token);
        edge::trace_context::inject_grpc(request.metadata_mut());
        match self.inner.booking.clone().get_booking(request).await {
            Ok(booking) => {
                let booking = booking.into_inner();
                match (booking.payment_intent_id == payment_intent_id, booking.status.as_str()) {
                    (false, _) => PaymentRejection::NotFound.into(),
                    (true, "pending") => PaymentError::NotReady,
                    (true, _) => PaymentRejection::NotPayable.into(),
                }
            }
            Err(status) => match status.code() {
                Code::NotFound => PaymentRejection::NotFound.into(),
                Code::PermissionDenied => PaymentRejection::NotOwner.into(),
                Code::Unauthenticated => PaymentError::PayerUnauthenticated,
                _ => PaymentError::BookingUnavailable(status.message().to_owned()),
            },
        }
    }

    /// Waits up to the configured time for an intent created from `SeatLocked`
    /// (`None` if it did not arrive).
    async fn wait_for_intent(&self, payment_intent_id: &str) -> Result<Option<PaymentIntent>, PaymentError> {
        let deadline = tokio::time::Instant::now() + self.inner.intent_wait;
        // Registered before the first look, so an arrival in between wakes us.
        let waiting = self.inner.intent_waiters.wait_for(payment_intent_id);
        loop {
            let arrived = waiting.signal().notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let loaded = {
                let mut conn = self.inner.pool.acquire().await?;
                aggregate::load::<PaymentIntent, PaymentError>(&mut conn, payment_intent_id).await?.state
            };
            if loaded.is_some() {
                return Ok(loaded);
            }
            // Only its creation (here or in another replica) wakes this request.
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Settles every attempt older than the grace with the PSP (the
    /// reconciler's pass); returns how many it settled.
    pub async fn reconcile(&self) -> Result<usize, PaymentError> {
        let grace = self.inner.reconciliation.grace;
        let due = queues::take_due_charges(&self.inner.pool, 50, grace, grace).await?;
        let mut settled = 0;
        for charge in &due {
            match self.settle_attempt(charge).await {
                Ok(()) => settled += 1,
                Err(error) => tracing::warn!(
                    payment_intent_id = charge.payment_intent_id,
                    attempt = charge.attempt,
                    %error,
                    "reconciling a charge attempt failed; retrying later"
                ),
            }
        }
        Ok(settled)
    }

    async fn settle_attempt(&self, due: &queues::DueCharge) -> Result<(), PaymentError> {
        let intent = {
            let mut conn = self.inner.pool.acquire().await?;
            aggregate::load::<PaymentIntent, PaymentError>(&mut conn, &due.payment_intent_id)
                .await?
                .state
                .ok_or(PaymentRejection::NotFound)?
        };
        let metadata = EventMetadata { actor: Some("system:reconciler".into()), ..Default::default() };
        let claim = intent
            .pending_charge
            .as_ref()
            .filter(|p| p.attempt == due.attempt)
            .and_then(|p| Some((p.idempotency_key.as_deref()?, &p.payment_method_token)))
            .map(|(key, token)| {
                let fingerprint = execute_fingerprint(&due.payment_intent_id, token);
                Claim::resume(&intent.created.user_id, EXECUTE_OPERATION, key, &fingerprint)
            });
        let answer = self.inner.psp.settle_key(&due.payment_intent_id, &due.attempt_key).await?;
        match answer {
            Some(outcome) => {
                let executed = Executed {
                    payment_intent_id: due.payment_intent_id.clone(),
                    outcome,
                    booking_id: intent.created.booking_id.clone(),
                };
                tracing::warn!(
                    payment_intent_id = due.payment_intent_id,
                    attempt = due.attempt,
                    "reconciler recorded a PSP answer the execute did not"
                );
                self.record_outcome(&executed, due.attempt, &metadata, claim.as_ref()).await
            }
            None => {
                let command =
                    PaymentCommand::AbandonCharge { attempt: due.attempt, reason: "the PSP never received it".into() };
                self.decide_and_append(&due.payment_intent_id, &metadata, command).await?;
                if let Some(claim) = &claim {
                    idempotency::release(&self.inner.pool, claim).await?;
                }
                Ok(())
            }
        }
    }

    /// Makes every due refund once (the refund worker's pass); returns how many were tried.
    pub async fn refund_due(&self, max_attempts: i32) -> Result<usize, PaymentError> {
        let due = queues::take_due_refunds(&self.inner.pool, 50, Duration::from_secs(30)).await?;
        for payment_intent_id in &due {
            if let Err(error) = self.refund_once(payment_intent_id, max_attempts).await {
                tracing::warn!(payment_intent_id, %error, "refund attempt could not be recorded");
            }
        }
        Ok(due.len())
    }

    async fn refund_once(&self, payment_intent_id: &str, max_attempts: i32) -> Result<(), PaymentError> {
        let intent = {
            let mut conn = self.inner.pool.acquire().await?;
            aggregate::load::<PaymentIntent, PaymentError>(&mut conn, payment_intent_id)
                .await?
                .state
                .ok_or(PaymentRejection::NotFound)?
        };
        if intent.status != IntentStatus::RefundPending {
            return Ok(());
        }
        let refund = Refund {
            idempotency_key: format!("refund:{payment_intent_id}"),
            payment_intent_id: payment_intent_id.to_owned(),
            amount: intent.created.amount,
            currency: intent.created.currency.clone(),
        };
        // A lost answer is asked again when the lease lapses, under the same key.
        let outcome = self.inner.psp.refund(&refund).await?;
        let metadata = EventMetadata { actor: Some("system:refund-worker".into()), ..Default::default() };
        self.decide_and_append(payment_intent_id, &metadata, PaymentCommand::RecordRefund { outcome, max_attempts })
            .await?;
        Ok(())
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
        let intent = aggregate::load::<PaymentIntent, PaymentError>(&mut conn, payment_intent_id)
            .await?
            .state
            .ok_or(PaymentRejection::NotFound)?;
        if intent.created.user_id != user_id && !admin {
            return Err(PaymentRejection::NotOwner.into());
        }
        Ok(intent)
    }
}
