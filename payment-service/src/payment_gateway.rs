//! The payment gateway port and its mock adapter. A real PG adapter
//! implements [`PaymentGateway`]; the mock answers by token as decisions.md
//! tables it. The CVV goes to the gateway and nowhere else.

use std::{fmt, time::Duration};

use async_trait::async_trait;
use chrono::Utc;

use crate::domain::intent::{FailureConcept, GatewayOutcome, RefundOutcome};

/// A card verification value: its `Debug` never shows it.
#[derive(Clone)]
pub struct Cvv(String);

impl Cvv {
    /// Accepts 3 or 4 ASCII digits.
    pub fn parse(text: &str) -> Option<Self> {
        ((3..=4).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())).then(|| Self(text.to_owned()))
    }

    /// The digits, for the gateway call only.
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
    /// The intent, as the idempotency key towards the gateway.
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

/// One refund request; the gateway dedupes on `idempotency_key`, so a retry
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

/// A payment gateway.
#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    /// Whether the gateway knows this token (unknown ones are refused before any attempt).
    fn recognizes(&self, token: &str) -> bool;
    /// Charges; always answers (timeouts are a failure outcome).
    async fn charge(&self, charge: &Charge) -> GatewayOutcome;
    /// Refunds a capture; always answers.
    async fn refund(&self, refund: &Refund) -> RefundOutcome;
}

/// The mock gateway of decisions.md.
pub struct MockPaymentGateway {
    /// How long `tok_pgTimeout` takes before failing.
    pub timeout: Duration,
    /// Added to every call.
    pub latency: Duration,
    /// The first this-many refund attempts of each intent fail (to rehearse an unwell gateway).
    pub refund_failures: u32,
    /// Refund attempts seen per idempotency key.
    pub refund_attempts: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl MockPaymentGateway {
    /// A mock with the given timeout, latency and refund failures.
    pub fn new(timeout: Duration, latency: Duration, refund_failures: u32) -> Self {
        Self { timeout, latency, refund_failures, refund_attempts: Default::default() }
    }
}

fn mock_answer(token: &str) -> Option<Option<(&'static str, FailureConcept)>> {
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

#[async_trait]
impl PaymentGateway for MockPaymentGateway {
    fn recognizes(&self, token: &str) -> bool {
        mock_answer(token).is_some()
    }

    async fn charge(&self, charge: &Charge) -> GatewayOutcome {
        tokio::time::sleep(self.latency).await;
        if charge.token == "tok_pgTimeout" {
            tokio::time::sleep(self.timeout).await;
        }
        match mock_answer(&charge.token).flatten() {
            None if self.recognizes(&charge.token) => GatewayOutcome::Success { processed_at: Utc::now() },
            None => GatewayOutcome::Failure {
                failure_code: "CARD_DECLINED".into(),
                failure_concept: FailureConcept::ClientError,
                processed_at: Utc::now(),
            },
            Some((code, concept)) => GatewayOutcome::Failure {
                failure_code: code.into(),
                failure_concept: concept,
                processed_at: Utc::now(),
            },
        }
    }

    async fn refund(&self, refund: &Refund) -> RefundOutcome {
        let attempt = {
            let Ok(mut attempts) = self.refund_attempts.lock() else {
                return RefundOutcome::Failed { reason: "mock gateway state poisoned".into() };
            };
            let seen = attempts.entry(refund.idempotency_key.clone()).or_insert(0);
            *seen += 1;
            *seen
        };
        if attempt <= self.refund_failures {
            RefundOutcome::Failed { reason: format!("PG_PROCESSING_ERROR (attempt {attempt})") }
        } else {
            RefundOutcome::Refunded { processed_at: Utc::now() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(token: &str) -> Charge {
        Charge {
            payment_intent_id: "pi".into(),
            amount: 1,
            currency: "KRW".into(),
            token: token.into(),
            cvv: Cvv::parse("123").unwrap_or_else(|| Cvv(String::new())),
        }
    }

    #[tokio::test]
    async fn each_token_gets_its_documented_answer() {
        let gateway = MockPaymentGateway::new(Duration::from_millis(10), Duration::ZERO, 0);
        for token in ["tok_visa_creditCard", "tok_visa", "tok_mastercard"] {
            assert!(matches!(gateway.charge(&charge(token)).await, GatewayOutcome::Success { .. }));
        }
        for (token, code, concept) in [
            ("tok_chargeDeclined", "CARD_DECLINED", FailureConcept::ClientError),
            ("tok_insufficientFunds", "INSUFFICIENT_FUNDS", FailureConcept::ClientError),
            ("tok_expiredCard", "CARD_EXPIRED", FailureConcept::ClientError),
            ("tok_incorrectCvc", "INVALID_CVV", FailureConcept::ClientError),
            ("tok_processingError", "PG_PROCESSING_ERROR", FailureConcept::ServerError),
            ("tok_pgTimeout", "PG_TIMEOUT", FailureConcept::ServerError),
        ] {
            let GatewayOutcome::Failure { failure_code, failure_concept, .. } = gateway.charge(&charge(token)).await
            else {
                unreachable!("{token} must fail");
            };
            assert_eq!((failure_code.as_str(), failure_concept), (code, concept), "{token}");
        }
        assert!(!gateway.recognizes("tok_unknown"));
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
