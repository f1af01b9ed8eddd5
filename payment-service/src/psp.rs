//! The payment service provider (PSP) port and the simulated PSP behind it.
//!
//! The port follows the contract real processors offer (Stripe's model):
//! every charge and refund carries an idempotency key; the same key always
//! gets the same answer; a key can be looked up; and a key that was never
//! used can be voided, so a late request under it never moves money. The
//! payment-service records `ChargeRequested` before it calls [`Psp::charge`],
//! which is what lets its reconciler settle an attempt whose answer was lost.
//!
//! [`SimulatedPsp`] keeps its records in its own schema (`psp.*`), apart
//! from the payment-service's event store, so they survive a restart of the
//! service and can be reconciled against it. It answers by token as the
//! decline catalogue below tables it. The CVV goes to the PSP and nowhere else.

use std::{fmt, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::domain::intent::{FailureConcept, PspOutcome, RefundOutcome};

/// A card verification value: its `Debug` never shows it.
#[derive(Clone)]
pub struct Cvv(String);

impl Cvv {
    /// Accepts 3 or 4 ASCII digits.
    pub fn parse(text: &str) -> Option<Self> {
        ((3..=4).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())).then(|| Self(text.to_owned()))
    }

    /// The digits, for the PSP call only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Cvv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cvv(***)")
    }
}

/// One charge request.
#[derive(Debug, Clone)]
pub struct Charge {
    /// The attempt key `{intent}:{attempt}`: the PSP's idempotency key.
    pub idempotency_key: String,
    /// The intent.
    pub payment_intent_id: String,
    /// Amount in won.
    pub amount: i64,
    /// Currency.
    pub currency: String,
    /// The payment method token.
    pub token: String,
    /// The CVV.
    pub cvv: Cvv,
}

/// One refund request; the PSP dedupes on `idempotency_key`, so a retry
/// after a lost answer never refunds twice.
#[derive(Debug, Clone)]
pub struct Refund {
    /// `refund:{intent}`, the same on every retry.
    pub idempotency_key: String,
    /// The intent whose capture is refunded.
    pub payment_intent_id: String,
    /// Amount in won.
    pub amount: i64,
    /// Currency.
    pub currency: String,
}

/// The PSP could not be asked, or its answer was lost: the outcome is
/// unknown. Ask again under the same key.
#[derive(Debug, thiserror::Error)]
#[error("the payment service provider did not answer: {0}")]
pub struct PspUnavailable(pub String);

/// A payment service provider.
#[async_trait]
pub trait Psp: Send + Sync + 'static {
    /// Whether the PSP knows this token (unknown ones are refused before any attempt).
    fn recognizes(&self, token: &str) -> bool;
    /// Charges under `charge.idempotency_key`; the same key gets the same answer.
    async fn charge(&self, charge: &Charge) -> Result<PspOutcome, PspUnavailable>;
    /// The answer given under `idempotency_key`, after voiding the key if it
    /// was never used (`None`: no money moved, and none ever will under it).
    async fn settle_key(
        &self,
        payment_intent_id: &str,
        idempotency_key: &str,
    ) -> Result<Option<PspOutcome>, PspUnavailable>;
    /// Refunds a capture; a failure is retried under the same key.
    async fn refund(&self, refund: &Refund) -> Result<RefundOutcome, PspUnavailable>;
}

/// Decline code and concept of an outcome the PSP stored.
const VOIDED: &str = "voided";

/// The simulated PSP: durable records in the `psp` schema, answers by token.
pub struct SimulatedPsp {
    pool: PgPool,
    /// How long `tok_pgTimeout` takes before failing.
    pub timeout: Duration,
    /// Added to every call.
    pub latency: Duration,
    /// The first this-many refund attempts of each intent fail (to rehearse an unwell PSP).
    pub refund_failures: u32,
}

impl SimulatedPsp {
    /// A PSP storing its records through `pool`.
    pub fn new(pool: PgPool, timeout: Duration, latency: Duration, refund_failures: u32) -> Self {
        Self { pool, timeout, latency, refund_failures }
    }
}

/// The decline catalogue: `None` for an unknown token, `Some(None)` for a
/// token that charges, `Some(Some(decline))` for one that is declined.
fn catalogue(token: &str) -> Option<Option<(&'static str, FailureConcept)>> {
    Some(match token {
        "tok_visa_creditCard" | "tok_visa" | "tok_mastercard" => None,
        "tok_chargeDeclined" => Some(("CARD_DECLINED", FailureConcept::ClientError)),
        "tok_insufficientFunds" => Some(("INSUFFICIENT_FUNDS", FailureConcept::ClientError)),
        "tok_expiredCard" => Some(("CARD_EXPIRED", FailureConcept::ClientError)),
        "tok_incorrectCvc" => Some(("INVALID_CVV", FailureConcept::ClientError)),
        "tok_processingError" => Some(("PG_PROCESSING_ERROR", FailureConcept::ServerError)),
        "tok_pgTimeout" => Some(("PG_TIMEOUT", FailureConcept::ServerError)),
        _ => return None,
    })
}

fn unavailable(error: sqlx::Error) -> PspUnavailable {
    PspUnavailable(error.to_string())
}

#[derive(sqlx::FromRow)]
struct StoredCharge {
    status: String,
    failure_code: Option<String>,
    failure_concept: Option<String>,
    processed_at: DateTime<Utc>,
}

impl StoredCharge {
    /// The answer this record stands for; `None` for a voided key.
    fn outcome(self) -> Option<PspOutcome> {
        match self.status.as_str() {
            "succeeded" => Some(PspOutcome::Success { processed_at: self.processed_at }),
            VOIDED => None,
            _ => Some(PspOutcome::Failure {
                failure_code: self.failure_code.unwrap_or_else(|| "CARD_DECLINED".into()),
                failure_concept: match self.failure_concept.as_deref() {
                    Some("SERVER_ERROR") => FailureConcept::ServerError,
                    _ => FailureConcept::ClientError,
                },
                processed_at: self.processed_at,
            }),
        }
    }
}

const STORED_CHARGE: &str =
    "select status, failure_code, failure_concept, processed_at from psp.charges where idempotency_key = $1";

#[async_trait]
impl Psp for SimulatedPsp {
    fn recognizes(&self, token: &str) -> bool {
        catalogue(token).is_some()
    }

    async fn charge(&self, charge: &Charge) -> Result<PspOutcome, PspUnavailable> {
        tokio::time::sleep(self.latency).await;
        if charge.token == "tok_pgTimeout" {
            tokio::time::sleep(self.timeout).await;
        }
        let decline = catalogue(&charge.token).unwrap_or(Some(("CARD_DECLINED", FailureConcept::ClientError)));
        let (status, code, concept) = match decline {
            None => ("succeeded", None, None),
            Some((code, concept)) => ("declined", Some(code), Some(concept.as_str())),
        };
        // First writer of a key wins; every later request gets its answer.
        sqlx::query(
            "insert into psp.charges \
               (idempotency_key, payment_intent_id, amount, currency, status, failure_code, failure_concept) \
             values ($1, $2, $3, $4, $5, $6, $7) on conflict (idempotency_key) do nothing",
        )
        .bind(&charge.idempotency_key)
        .bind(&charge.payment_intent_id)
        .bind(charge.amount)
        .bind(&charge.currency)
        .bind(status)
        .bind(code)
        .bind(concept)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        let stored: StoredCharge = sqlx::query_as(STORED_CHARGE)
            .bind(&charge.idempotency_key)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(stored.outcome().unwrap_or_else(|| PspOutcome::Failure {
            // The key was voided before this request arrived: nothing charged.
            failure_code: "PG_ATTEMPT_VOIDED".into(),
            failure_concept: FailureConcept::ServerError,
            processed_at: Utc::now(),
        }))
    }

    async fn settle_key(
        &self,
        payment_intent_id: &str,
        idempotency_key: &str,
    ) -> Result<Option<PspOutcome>, PspUnavailable> {
        sqlx::query(
            "insert into psp.charges (idempotency_key, payment_intent_id, amount, currency, status) \
             values ($1, $2, 0, '', 'voided') on conflict (idempotency_key) do nothing",
        )
        .bind(idempotency_key)
        .bind(payment_intent_id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        let stored: StoredCharge =
            sqlx::query_as(STORED_CHARGE).bind(idempotency_key).fetch_one(&self.pool).await.map_err(unavailable)?;
        Ok(stored.outcome())
    }

    async fn refund(&self, refund: &Refund) -> Result<RefundOutcome, PspUnavailable> {
        tokio::time::sleep(self.latency).await;
        let (attempts, refunded_at): (i32, Option<DateTime<Utc>>) = sqlx::query_as(
            "insert into psp.refunds (idempotency_key, payment_intent_id, amount, currency, attempts) \
             values ($1, $2, $3, $4, 1) \
             on conflict (idempotency_key) do update set attempts = psp.refunds.attempts + 1 \
             returning attempts, refunded_at",
        )
        .bind(&refund.idempotency_key)
        .bind(&refund.payment_intent_id)
        .bind(refund.amount)
        .bind(&refund.currency)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        if let Some(processed_at) = refunded_at {
            return Ok(RefundOutcome::Refunded { processed_at });
        }
        if u32::try_from(attempts).unwrap_or(u32::MAX) <= self.refund_failures {
            return Ok(RefundOutcome::Failed { reason: format!("PG_PROCESSING_ERROR (attempt {attempts})") });
        }
        let processed_at: DateTime<Utc> = sqlx::query_scalar(
            "update psp.refunds set refunded_at = coalesce(refunded_at, now()) where idempotency_key = $1 \
             returning refunded_at",
        )
        .bind(&refund.idempotency_key)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(RefundOutcome::Refunded { processed_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_token_is_in_the_decline_catalogue_with_its_documented_answer() {
        for token in ["tok_visa_creditCard", "tok_visa", "tok_mastercard"] {
            assert_eq!(catalogue(token), Some(None), "{token}");
        }
        for (token, code, concept) in [
            ("tok_chargeDeclined", "CARD_DECLINED", FailureConcept::ClientError),
            ("tok_insufficientFunds", "INSUFFICIENT_FUNDS", FailureConcept::ClientError),
            ("tok_expiredCard", "CARD_EXPIRED", FailureConcept::ClientError),
            ("tok_incorrectCvc", "INVALID_CVV", FailureConcept::ClientError),
            ("tok_processingError", "PG_PROCESSING_ERROR", FailureConcept::ServerError),
            ("tok_pgTimeout", "PG_TIMEOUT", FailureConcept::ServerError),
        ] {
            assert_eq!(catalogue(token), Some(Some((code, concept))), "{token}");
        }
        assert_eq!(catalogue("tok_unknown"), None);
    }

    #[test]
    fn cvvs_are_three_or_four_digits_and_never_printed() {
        assert!(Cvv::parse("123").is_some() && Cvv::parse("1234").is_some());
        for bad in ["12", "12345", "12a", ""] {
            assert!(Cvv::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(format!("{:?}", Cvv::parse("987")), "Some(Cvv(***))");
    }
}
