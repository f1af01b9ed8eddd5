//! The PaymentIntent aggregate. An intent is created from `SeatLocked`
//! (amount from the server), can be attempted until it succeeds, the buyer
//! runs out of attempts, or the booking ends; a success on an ended booking
//! is refunded.
//!
//! Every attempt is recorded as `ChargeRequested` *before* the payment
//! service provider (PSP) is called, under an attempt key the PSP dedupes
//! on. At most one attempt is pending at a time: the stream itself is the
//! per-intent lock, so a concurrent execute is refused at once
//! (`ChargeInProgress`) and money never moves without a record.

mod commands;
mod events;

use chrono::{DateTime, Utc};

pub use commands::{PaymentCommand, PaymentRejection, RefundReview};
pub use events::{BookingEnd, FailureConcept, IntentCreated, PaymentEvent, PspOutcome, RefundOutcome};

/// Where an intent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentStatus {
    /// Payable.
    RequiresPayment,
    /// Paid.
    Succeeded,
    /// Paid, booking ended: the refund is being made.
    RefundPending,
    /// Paid, booking ended, refunding keeps failing: needs a person.
    RefundNeedsReview,
    /// Paid, then refunded.
    Refunded,
}

impl IntentStatus {
    /// The wire name.
    pub fn as_str(self, closed: bool) -> &'static str {
        match (self, closed) {
            (Self::Succeeded, _) => "succeeded",
            (Self::RefundPending, _) => "refund_pending",
            (Self::RefundNeedsReview, _) => "refund_needs_review",
            (Self::Refunded, _) => "refunded",
            (Self::RequiresPayment, true) => "cancelled",
            (Self::RequiresPayment, false) => "requires_payment",
        }
    }
}

/// An intent's state, folded from its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentIntent {
    /// Creation facts.
    pub created: IntentCreated,
    /// Status.
    pub status: IntentStatus,
    /// Client-error declines so far.
    pub client_failures: i32,
    /// Set once the booking ended.
    pub booking_end: Option<BookingEnd>,
    /// Failed refund attempts so far.
    pub refund_attempts: i32,
    /// Charge attempts requested so far.
    pub charge_attempts: i32,
    /// The attempt sent (or about to be sent) to the PSP whose outcome is not recorded yet.
    pub pending_charge: Option<PendingCharge>,
}

/// A charge attempt whose outcome is not recorded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCharge {
    /// Which attempt.
    pub attempt: i32,
    /// The PSP's idempotency key.
    pub attempt_key: String,
    /// The token used.
    pub payment_method_token: String,
    /// The client's Idempotency-Key, if it sent one.
    pub idempotency_key: Option<String>,
    /// When it was requested.
    pub requested_at: DateTime<Utc>,
}

/// The PSP idempotency key of an intent's `attempt`.
pub fn attempt_key(payment_intent_id: &str, attempt: i32) -> String {
    format!("{payment_intent_id}:{attempt}")
}

/// Payment intents are event-sourced aggregates: `decide` hands each
/// command to its rule below, `apply` folds an event; both pure.
impl kernel::aggregate::Aggregate for PaymentIntent {
    const STREAM_TYPE: &'static str = "payment_intent";
    type Event = PaymentEvent;
    type Command = PaymentCommand;
    type Rejection = PaymentRejection;

    fn decide(state: Option<&Self>, command: PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentRejection> {
        use PaymentCommand as C;
        let Some(intent) = state else {
            return match command {
                C::Create(created) => Ok(vec![PaymentEvent::PaymentIntentCreated(created)]),
                _ => Err(PaymentRejection::NotFound),
            };
        };
        match command {
            C::Create(_) => Err(PaymentRejection::AlreadyExists),
            C::RequestCharge { user_id, now, safety_margin, max_attempts, payment_method_token, idempotency_key } => {
                intent.request_charge(&user_id, now, safety_margin, max_attempts, payment_method_token, idempotency_key)
            }
            C::AbandonCharge { attempt, reason } => Ok(intent.abandon_charge(attempt, reason)),
            C::RecordOutcome { attempt, outcome } => intent.record_outcome(attempt, outcome),
            C::BookingEnded { end, now } => Ok(intent.booking_ended(end, now)),
            C::RecordRefund { outcome, max_attempts } => Ok(intent.record_refund(outcome, max_attempts)),
            C::ReviewRefund { action, operator, now } => intent.review_refund(action, operator, now),
        }
    }

    fn apply(state: Option<Self>, event: &PaymentEvent) -> Option<Self> {
        let Some(mut intent) = state else {
            return match event {
                PaymentEvent::PaymentIntentCreated(created) => Some(PaymentIntent {
                    created: created.clone(),
                    status: IntentStatus::RequiresPayment,
                    client_failures: 0,
                    booking_end: None,
                    refund_attempts: 0,
                    charge_attempts: 0,
                    pending_charge: None,
                }),
                _ => None,
            };
        };
        match event {
            PaymentEvent::PaymentIntentCreated(_) => {}
            PaymentEvent::ChargeRequested {
                attempt,
                attempt_key,
                payment_method_token,
                idempotency_key,
                requested_at,
            } => {
                intent.charge_attempts = *attempt;
                intent.pending_charge = Some(PendingCharge {
                    attempt: *attempt,
                    attempt_key: attempt_key.clone(),
                    payment_method_token: payment_method_token.clone(),
                    idempotency_key: idempotency_key.clone(),
                    requested_at: *requested_at,
                });
            }
            PaymentEvent::ChargeAbandoned { .. } => intent.pending_charge = None,
            PaymentEvent::PaymentSucceeded { .. } => {
                intent.status = IntentStatus::Succeeded;
                intent.pending_charge = None;
            }
            PaymentEvent::PaymentFailed { client_failures, .. } => {
                intent.client_failures = *client_failures;
                intent.pending_charge = None;
            }
            PaymentEvent::PaymentIntentClosed { booking_end, .. } => intent.booking_end = Some(*booking_end),
            PaymentEvent::PaymentRefundRequested { .. } => intent.status = IntentStatus::RefundPending,
            PaymentEvent::RefundAttemptFailed { attempt, .. } => intent.refund_attempts = *attempt,
            PaymentEvent::RefundNeedsReview { .. } => intent.status = IntentStatus::RefundNeedsReview,
            PaymentEvent::RefundRetried { .. } => {
                intent.status = IntentStatus::RefundPending;
                intent.refund_attempts = 0;
            }
            PaymentEvent::RefundResolvedByHand { .. } => {}
            PaymentEvent::PaymentRefunded { .. } => intent.status = IntentStatus::Refunded,
        }
        Some(intent)
    }
}

/// The rules, one per command on an existing intent.
impl PaymentIntent {
    /// The owner may start a charge while the intent is payable and no
    /// other attempt is with the PSP.
    fn request_charge(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
        safety_margin: chrono::Duration,
        max_attempts: i32,
        payment_method_token: String,
        idempotency_key: Option<String>,
    ) -> Result<Vec<PaymentEvent>, PaymentRejection> {
        let c = &self.created;
        if user_id != c.user_id {
            Err(PaymentRejection::NotOwner)
        } else if self.status != IntentStatus::RequiresPayment {
            Err(PaymentRejection::AlreadyProcessed)
        } else if self.pending_charge.is_some() {
            Err(PaymentRejection::ChargeInProgress)
        } else if self.booking_end.is_some()
            || self.client_failures >= max_attempts
            || now + safety_margin >= c.payable_until
        {
            Err(PaymentRejection::NotPayable)
        } else {
            let attempt = self.charge_attempts + 1;
            Ok(vec![PaymentEvent::ChargeRequested {
                attempt,
                attempt_key: attempt_key(&c.payment_intent_id, attempt),
                payment_method_token,
                idempotency_key,
                requested_at: now,
            }])
        }
    }

    /// A charge that never reached the PSP is given up.
    fn abandon_charge(&self, attempt: i32, reason: String) -> Vec<PaymentEvent> {
        match &self.pending_charge {
            Some(pending) if pending.attempt == attempt => vec![PaymentEvent::ChargeAbandoned { attempt, reason }],
            _ => vec![],
        }
    }

    /// The PSP's answer to the pending attempt; a success after the booking
    /// ended is refunded at once.
    fn record_outcome(&self, attempt: i32, outcome: PspOutcome) -> Result<Vec<PaymentEvent>, PaymentRejection> {
        let c = &self.created;
        let Some(pending) = self.pending_charge.as_ref().filter(|p| p.attempt == attempt) else {
            // Recorded already (a retry after a lost commit, or the
            // reconciler got there first): nothing to add.
            return Ok(vec![]);
        };
        if self.status != IntentStatus::RequiresPayment {
            // Never a second capture.
            return Err(PaymentRejection::AlreadyProcessed);
        }
        let payment_method_token = pending.payment_method_token.clone();
        match outcome {
            PspOutcome::Success { processed_at } => {
                let mut events = vec![PaymentEvent::PaymentSucceeded {
                    attempt,
                    booking_id: c.booking_id.clone(),
                    user_id: c.user_id.clone(),
                    amount: c.amount,
                    currency: c.currency.clone(),
                    payment_method_token,
                    processed_at,
                }];
                if self.booking_end.is_some() {
                    // The booking ended while the PSP was charging.
                    events.push(PaymentEvent::PaymentRefundRequested { requested_at: processed_at });
                }
                Ok(events)
            }
            PspOutcome::Failure { failure_code, failure_concept, processed_at } => {
                Ok(vec![PaymentEvent::PaymentFailed {
                    attempt,
                    booking_id: c.booking_id.clone(),
                    user_id: c.user_id.clone(),
                    failure_code,
                    failure_concept,
                    client_failures: self.client_failures + i32::from(failure_concept == FailureConcept::ClientError),
                    processed_at,
                }])
            }
        }
    }

    /// The booking ended: the intent closes; money already taken goes back.
    fn booking_ended(&self, end: BookingEnd, now: DateTime<Utc>) -> Vec<PaymentEvent> {
        if self.booking_end.is_some() {
            return vec![];
        }
        let mut events = vec![PaymentEvent::PaymentIntentClosed { booking_end: end, closed_at: now }];
        if self.status == IntentStatus::Succeeded {
            // Paid, but the booking ended (late payment): give the money back.
            events.push(PaymentEvent::PaymentRefundRequested { requested_at: now });
        }
        events
    }

    /// The PSP's answer to a refund; too many failures need a person.
    fn record_refund(&self, outcome: RefundOutcome, max_attempts: i32) -> Vec<PaymentEvent> {
        if self.status != IntentStatus::RefundPending {
            return vec![];
        }
        match outcome {
            RefundOutcome::Refunded { processed_at } => vec![refund(self, processed_at)],
            RefundOutcome::Failed { reason } => {
                let attempt = self.refund_attempts + 1;
                let mut events = vec![PaymentEvent::RefundAttemptFailed { attempt, reason: reason.clone() }];
                if attempt >= max_attempts {
                    events.push(PaymentEvent::RefundNeedsReview { attempts: attempt, reason });
                }
                events
            }
        }
    }
}

impl PaymentIntent {
    /// A refund that needs review is tried again, or recorded as made by
    /// hand (then refunded here too: the booking and the ledger follow).
    fn review_refund(
        &self,
        action: RefundReview,
        operator: String,
        now: DateTime<Utc>,
    ) -> Result<Vec<PaymentEvent>, PaymentRejection> {
        if self.status != IntentStatus::RefundNeedsReview {
            return Err(PaymentRejection::NoRefundInReview);
        }
        Ok(match action {
            RefundReview::Retry => vec![PaymentEvent::RefundRetried { operator, retried_at: now }],
            RefundReview::RefundedByHand { note } => {
                vec![PaymentEvent::RefundResolvedByHand { operator, note, resolved_at: now }, refund(self, now)]
            }
        })
    }
}

fn refund(intent: &PaymentIntent, at: DateTime<Utc>) -> PaymentEvent {
    PaymentEvent::PaymentRefunded {
        booking_id: intent.created.booking_id.clone(),
        user_id: intent.created.user_id.clone(),
        amount: intent.created.amount,
        currency: intent.created.currency.clone(),
        refunded_at: at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use kernel::aggregate::Aggregate;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).single().unwrap()
    }

    fn created() -> IntentCreated {
        IntentCreated {
            payment_intent_id: "pi1".into(),
            booking_id: "b1".into(),
            user_id: "user_123".into(),
            amount: 30000,
            currency: "KRW".into(),
            payable_until: t(600),
            created_at: t(0),
        }
    }

    fn given(history: &[PaymentEvent], command: PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentRejection> {
        PaymentIntent::decide(PaymentIntent::replay(history).as_ref(), command)
    }

    fn check(user: &str, now: i64) -> PaymentCommand {
        PaymentCommand::RequestCharge {
            user_id: user.into(),
            now: t(now),
            safety_margin: Duration::seconds(5),
            max_attempts: 3,
            payment_method_token: "tok_visa".into(),
            idempotency_key: None,
        }
    }

    fn ok(at: i64) -> PspOutcome {
        PspOutcome::Success { processed_at: t(at) }
    }

    fn declined(concept: FailureConcept) -> PspOutcome {
        PspOutcome::Failure { failure_code: "X".into(), failure_concept: concept, processed_at: t(9) }
    }

    fn apply_all(history: &[PaymentEvent], command: PaymentCommand) -> Vec<PaymentEvent> {
        let mut all = history.to_vec();
        all.extend(given(history, command).unwrap());
        all
    }

    /// One whole attempt: requested, then answered by the PSP.
    fn pay(history: &[PaymentEvent], outcome: PspOutcome) -> Vec<PaymentEvent> {
        let requested = apply_all(history, check("user_123", 8));
        let attempt = PaymentIntent::replay(&requested).and_then(|i| i.pending_charge).map_or(0, |p| p.attempt);
        apply_all(&requested, PaymentCommand::RecordOutcome { attempt, outcome })
    }

    #[test]
    fn an_intent_is_created_once() {
        let created_event = PaymentEvent::PaymentIntentCreated(created());
        assert_eq!(given(&[], PaymentCommand::Create(created())), Ok(vec![created_event.clone()]));
        assert_eq!(given(&[created_event], PaymentCommand::Create(created())), Err(PaymentRejection::AlreadyExists));
    }

    #[test]
    fn only_the_owner_may_pay_and_only_while_payable() {
        let history = [PaymentEvent::PaymentIntentCreated(created())];
        assert!(matches!(
            given(&history, check("user_123", 10)).as_deref(),
            Ok([PaymentEvent::ChargeRequested { attempt: 1, attempt_key, .. }]) if attempt_key == "pi1:1"
        ));
        assert_eq!(given(&history, check("user_999", 10)), Err(PaymentRejection::NotOwner));
        assert_eq!(given(&history, check("user_123", 595)), Err(PaymentRejection::NotPayable), "safety margin");
    }

    #[test]
    fn a_success_captures_once_and_a_second_payment_is_already_processed() {
        let history = pay(&[PaymentEvent::PaymentIntentCreated(created())], ok(20));
        assert!(matches!(history.last(), Some(PaymentEvent::PaymentSucceeded { amount: 30000, attempt: 1, .. })));
        assert_eq!(given(&history, check("user_123", 30)), Err(PaymentRejection::AlreadyProcessed));
        let again = PaymentCommand::RecordOutcome { attempt: 1, outcome: ok(31) };
        assert_eq!(given(&history, again), Ok(vec![]), "a duplicate answer records nothing");
    }

    #[test]
    fn client_declines_count_and_exhaust_the_attempts_but_psp_trouble_does_not() {
        let mut history = vec![PaymentEvent::PaymentIntentCreated(created())];
        history = pay(&history, declined(FailureConcept::ServerError));
        assert_eq!(PaymentIntent::replay(&history).map(|i| i.client_failures), Some(0));
        for _ in 0..3 {
            history = pay(&history, declined(FailureConcept::ClientError));
        }
        assert_eq!(PaymentIntent::replay(&history).map(|i| i.charge_attempts), Some(4));
        assert_eq!(PaymentIntent::replay(&history).map(|i| i.client_failures), Some(3));
        assert_eq!(given(&history, check("user_123", 10)), Err(PaymentRejection::NotPayable));
    }

    #[test]
    fn a_decline_leaves_the_intent_payable_again() {
        let history = pay(&[PaymentEvent::PaymentIntentCreated(created())], declined(FailureConcept::ClientError));
        assert!(given(&history, check("user_123", 10)).is_ok());
        assert!(matches!(pay(&history, ok(11)).last(), Some(PaymentEvent::PaymentSucceeded { attempt: 2, .. })));
    }

    #[test]
    fn an_ended_booking_is_not_payable() {
        let history = apply_all(
            &[PaymentEvent::PaymentIntentCreated(created())],
            PaymentCommand::BookingEnded { end: BookingEnd::Cancelled, now: t(5) },
        );
        assert_eq!(given(&history, check("user_123", 10)), Err(PaymentRejection::NotPayable));
    }

    #[test]
    fn a_success_after_the_booking_ended_is_refunded_at_once() {
        let history = apply_all(
            &[PaymentEvent::PaymentIntentCreated(created())],
            PaymentCommand::BookingEnded { end: BookingEnd::Expired, now: t(5) },
        );
        // The attempt was requested before the booking ended.
        let requested = apply_all(&[PaymentEvent::PaymentIntentCreated(created())], check("user_123", 4));
        let ended = apply_all(&requested, PaymentCommand::BookingEnded { end: BookingEnd::Expired, now: t(5) });
        let events = given(&ended, PaymentCommand::RecordOutcome { attempt: 1, outcome: ok(6) }).unwrap();
        assert!(matches!(
            events.as_slice(),
            [PaymentEvent::PaymentSucceeded { .. }, PaymentEvent::PaymentRefundRequested { .. }]
        ));
        assert_eq!(given(&history, check("user_123", 6)), Err(PaymentRejection::NotPayable));
    }

    #[test]
    fn a_booking_that_ends_after_it_was_paid_refunds_once() {
        let paid = pay(&[PaymentEvent::PaymentIntentCreated(created())], ok(20));
        let ended = PaymentCommand::BookingEnded { end: BookingEnd::Expired, now: t(30) };
        let events = given(&paid, ended.clone()).unwrap();
        assert!(matches!(
            events.as_slice(),
            [PaymentEvent::PaymentIntentClosed { .. }, PaymentEvent::PaymentRefundRequested { .. }]
        ));
        let mut after = paid.clone();
        after.extend(events);
        assert_eq!(given(&after, ended), Ok(vec![]), "a duplicate end refunds nothing");
        assert_eq!(PaymentIntent::replay(&after).map(|i| i.status), Some(IntentStatus::RefundPending));
        let refunded = apply_all(
            &after,
            PaymentCommand::RecordRefund { outcome: RefundOutcome::Refunded { processed_at: t(31) }, max_attempts: 3 },
        );
        assert!(matches!(refunded.last(), Some(PaymentEvent::PaymentRefunded { amount: 30000, .. })));
        assert_eq!(PaymentIntent::replay(&refunded).map(|i| i.status), Some(IntentStatus::Refunded));
        let again =
            PaymentCommand::RecordRefund { outcome: RefundOutcome::Refunded { processed_at: t(32) }, max_attempts: 3 };
        assert_eq!(given(&refunded, again), Ok(vec![]), "a late duplicate answer refunds nothing twice");
    }

    #[test]
    fn a_refund_that_keeps_failing_ends_in_review_after_the_last_attempt() {
        let mut history = pay(&[PaymentEvent::PaymentIntentCreated(created())], ok(20));
        history = apply_all(&history, PaymentCommand::BookingEnded { end: BookingEnd::Cancelled, now: t(21) });
        let fail = PaymentCommand::RecordRefund {
            outcome: RefundOutcome::Failed { reason: "PG down".into() },
            max_attempts: 3,
        };
        history = apply_all(&history, fail.clone());
        history = apply_all(&history, fail.clone());
        assert_eq!(
            PaymentIntent::replay(&history).map(|i| (i.status, i.refund_attempts)),
            Some((IntentStatus::RefundPending, 2))
        );
        history = apply_all(&history, fail.clone());
        assert!(matches!(history.last(), Some(PaymentEvent::RefundNeedsReview { attempts: 3, .. })));
        assert_eq!(PaymentIntent::replay(&history).map(|i| i.status), Some(IntentStatus::RefundNeedsReview));
        assert_eq!(given(&history, fail), Ok(vec![]), "review is terminal for the worker");
    }

    #[test]
    fn a_refund_in_review_is_retried_or_recorded_as_refunded_by_hand_and_nothing_else_is() {
        let mut history = pay(&[PaymentEvent::PaymentIntentCreated(created())], ok(20));
        history = apply_all(&history, PaymentCommand::BookingEnded { end: BookingEnd::Cancelled, now: t(21) });
        let review = |action| PaymentCommand::ReviewRefund { action, operator: "ops".into(), now: t(40) };
        assert_eq!(given(&history, review(RefundReview::Retry)), Err(PaymentRejection::NoRefundInReview));
        let fail = PaymentCommand::RecordRefund {
            outcome: RefundOutcome::Failed { reason: "PG down".into() },
            max_attempts: 1,
        };
        history = apply_all(&history, fail);

        let retried = apply_all(&history, review(RefundReview::Retry));
        assert_eq!(
            PaymentIntent::replay(&retried).map(|i| (i.status, i.refund_attempts)),
            Some((IntentStatus::RefundPending, 0))
        );
        let by_hand =
            apply_all(&history, review(RefundReview::RefundedByHand { note: "refunded in the PSP console".into() }));
        assert!(
            matches!(&by_hand[by_hand.len() - 2], PaymentEvent::RefundResolvedByHand { note, .. } if note.contains("console"))
        );
        assert!(matches!(by_hand.last(), Some(PaymentEvent::PaymentRefunded { amount: 30000, .. })));
        assert_eq!(PaymentIntent::replay(&by_hand).map(|i| i.status), Some(IntentStatus::Refunded));
        assert_eq!(given(&by_hand, review(RefundReview::Retry)), Err(PaymentRejection::NoRefundInReview));
    }

    #[test]
    fn one_attempt_at_a_time_and_a_second_execute_is_refused_at_once() {
        let requested = apply_all(&[PaymentEvent::PaymentIntentCreated(created())], check("user_123", 8));
        assert_eq!(given(&requested, check("user_123", 9)), Err(PaymentRejection::ChargeInProgress));
        let answered = apply_all(
            &requested,
            PaymentCommand::RecordOutcome { attempt: 1, outcome: declined(FailureConcept::ServerError) },
        );
        assert!(matches!(
            given(&answered, check("user_123", 10)).as_deref(),
            Ok([PaymentEvent::ChargeRequested { attempt: 2, .. }])
        ));
    }

    #[test]
    fn an_abandoned_attempt_frees_the_intent_and_a_stale_answer_records_nothing() {
        let requested = apply_all(&[PaymentEvent::PaymentIntentCreated(created())], check("user_123", 8));
        let abandon = PaymentCommand::AbandonCharge { attempt: 1, reason: "not admitted".into() };
        let abandoned = apply_all(&requested, abandon.clone());
        assert!(matches!(abandoned.last(), Some(PaymentEvent::ChargeAbandoned { attempt: 1, .. })));
        assert_eq!(PaymentIntent::replay(&abandoned).and_then(|i| i.pending_charge), None);
        assert_eq!(given(&abandoned, abandon), Ok(vec![]));
        assert_eq!(given(&abandoned, PaymentCommand::RecordOutcome { attempt: 1, outcome: ok(9) }), Ok(vec![]));
        assert_eq!(PaymentIntent::replay(&abandoned).map(|i| i.status), Some(IntentStatus::RequiresPayment));
    }

    #[test]
    fn an_answer_for_another_attempt_than_the_pending_one_records_nothing() {
        let requested = apply_all(&[PaymentEvent::PaymentIntentCreated(created())], check("user_123", 8));
        assert_eq!(given(&requested, PaymentCommand::RecordOutcome { attempt: 7, outcome: ok(9) }), Ok(vec![]));
    }
}
