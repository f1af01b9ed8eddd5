//! `ticketing check`: reads both services' stores and reports every broken
//! invariant. It trusts no projection: bookings and payment intents are
//! folded from their event stores by the domains' own `replay` (one
//! definition of each state machine), then compared with the seat holds,
//! the ledger and the PSP's records.

use std::collections::{BTreeMap, HashMap};

use booking_service::domain::booking::Booking;
use kernel::aggregate;
use payment_service::domain::intent::{PaymentEvent, PaymentIntent};
use sqlx::PgPool;

/// The invariant a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    /// No seat is sold to two confirmed bookings (oversell).
    SeatSoldOnce,
    /// Seat holds agree with the bookings' states.
    HoldsMatchBookings,
    /// A confirmed booking owns its seats.
    PaidBookingOwnsSeats,
    /// Captures and refunds agree with each booking's state.
    PaymentsMatchBookings,
    /// The ledger balances, one capture posting per successful payment.
    LedgerBalances,
    /// Every PSP charge is a recorded capture and every capture a charge.
    PspMatchesRecords,
    /// A paid booking ends confirmed or refunded.
    PaidBookingSettles,
    /// Every stream folds to a state.
    StreamsFold,
}

/// One broken invariant, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant.
    pub invariant: Invariant,
    /// What was found.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What `check` needs of a booking, from the domain's own fold.
struct BookingFacts {
    booking_id: String,
    performance_id: String,
    seat_ids: Vec<String>,
    payment_intent_id: String,
    status: &'static str,
}

/// What `check` needs of a payment intent.
struct IntentFacts {
    payment_intent_id: String,
    booking_id: String,
    successes: usize,
    refunds: usize,
    /// Recorded captures: (attempt, recorded at).
    captures: Vec<(i32, chrono::DateTime<chrono::Utc>)>,
}

/// Runs every check; an empty list means the stores are consistent.
pub async fn check(booking: &PgPool, payment: &PgPool) -> anyhow::Result<Vec<Violation>> {
    let mut report = Report::default();
    let bookings = load_bookings(booking, &mut report).await?;
    let intents = load_intents(payment, &mut report).await?;
    let by_id: HashMap<&str, &BookingFacts> = bookings.iter().map(|b| (b.booking_id.as_str(), b)).collect();
    check_seats(booking, &bookings, &by_id, &mut report).await?;
    check_payments(&bookings, &intents, &by_id, &mut report);
    check_ledger(payment, &intents, &mut report).await?;
    check_psp(payment, &intents, &mut report).await?;
    check_settled(&intents, &by_id, &mut report);
    Ok(report.0)
}

/// The violations found so far.
#[derive(Default)]
struct Report(Vec<Violation>);

impl Report {
    fn flag(&mut self, invariant: Invariant, message: String) {
        self.0.push(Violation { invariant, message });
    }
}

type ById<'a> = HashMap<&'a str, &'a BookingFacts>;

async fn load_bookings(booking: &PgPool, report: &mut Report) -> anyhow::Result<Vec<BookingFacts>> {
    // Booking states folded by the domain's own replay, never a projection.
    let mut bookings = Vec::new();
    for folded in aggregate::load_all::<Booking>(booking).await? {
        match folded.state {
            Some(b) => bookings.push(BookingFacts {
                booking_id: folded.id,
                performance_id: b.created.performance_id,
                seat_ids: b.created.seat_ids,
                payment_intent_id: b.created.payment_intent_id,
                status: b.status.as_str(),
            }),
            None => {
                report.flag(Invariant::StreamsFold, format!("booking stream {} does not fold to a booking", folded.id))
            }
        }
    }
    Ok(bookings)
}

async fn load_intents(payment: &PgPool, report: &mut Report) -> anyhow::Result<Vec<IntentFacts>> {
    // Payment intents likewise; captures and refunds are counted from their events.
    let mut intents = Vec::new();
    for folded in aggregate::load_all::<PaymentIntent>(payment).await? {
        let Some(intent) = folded.state else {
            report.flag(
                Invariant::StreamsFold,
                format!("payment intent stream {} does not fold to an intent", folded.id),
            );
            continue;
        };
        let mut facts = IntentFacts {
            payment_intent_id: folded.id,
            booking_id: intent.created.booking_id,
            successes: 0,
            refunds: 0,
            captures: Vec::new(),
        };
        for stored in &folded.events {
            match stored.decode::<PaymentEvent>()? {
                PaymentEvent::PaymentSucceeded { attempt, .. } => {
                    facts.successes += 1;
                    facts.captures.push((attempt, stored.recorded_at));
                }
                PaymentEvent::PaymentRefunded { .. } => facts.refunds += 1,
                _ => {}
            }
        }
        intents.push(facts);
    }

    Ok(intents)
}

async fn check_seats(
    booking: &PgPool,
    bookings: &[BookingFacts],
    by_id: &ById<'_>,
    report: &mut Report,
) -> anyhow::Result<()> {
    // 1. No seat owned by two confirmed bookings.
    let mut owners: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for b in bookings.iter().filter(|b| b.status == "confirmed") {
        for seat in &b.seat_ids {
            owners.entry((b.performance_id.clone(), seat.clone())).or_default().push(b.booking_id.clone());
        }
    }
    for ((performance, seat), ids) in &owners {
        if ids.len() > 1 {
            report.flag(
                Invariant::SeatSoldOnce,
                format!("seat {performance}/{seat} is sold to {} bookings: {}", ids.len(), ids.join(", ")),
            );
        }
    }

    // 2. Seat holds agree with the bookings' states.
    let holds: Vec<(String, String, String, String)> =
        sqlx::query_as("select performance_id, seat_id, booking_id, status from seat_holds").fetch_all(booking).await?;
    let mut held: HashMap<(&str, &str), (&str, &str)> = HashMap::new();
    for (performance, seat, booking_id, status) in &holds {
        held.insert((performance, seat), (booking_id, status));
        match by_id.get(booking_id.as_str()).map(|b| b.status) {
            Some("pending") | Some("confirmed") => {}
            Some(other) => report.flag(
                Invariant::HoldsMatchBookings,
                format!("seat {performance}/{seat} is still held by {other} booking {booking_id}"),
            ),
            None => report.flag(
                Invariant::HoldsMatchBookings,
                format!("seat {performance}/{seat} is held by unknown booking {booking_id}"),
            ),
        }
    }
    // 3. A paid booking's seats are booked by it.
    for b in bookings.iter().filter(|b| b.status == "confirmed") {
        for seat in &b.seat_ids {
            match held.get(&(b.performance_id.as_str(), seat.as_str())) {
                Some((owner, "booked")) if *owner == b.booking_id => {}
                other => report.flag(
                    Invariant::PaidBookingOwnsSeats,
                    format!(
                        "confirmed booking {} does not own seat {}/{seat} (found {other:?})",
                        b.booking_id, b.performance_id
                    ),
                ),
            }
        }
    }

    Ok(())
}

fn check_payments(bookings: &[BookingFacts], intents: &[IntentFacts], by_id: &ById<'_>, report: &mut Report) {
    let intent_by_id: HashMap<&str, &IntentFacts> = intents.iter().map(|i| (i.payment_intent_id.as_str(), i)).collect();
    for intent in intents {
        if intent.successes > 1 || intent.refunds > 1 || intent.refunds > intent.successes {
            report.flag(
                Invariant::PaymentsMatchBookings,
                format!(
                    "intent {} has {} captures and {} refunds",
                    intent.payment_intent_id, intent.successes, intent.refunds
                ),
            );
        }
    }
    for b in bookings {
        let intent = intent_by_id.get(b.payment_intent_id.as_str());
        let (successes, refunds) = intent.map_or((0, 0), |i| (i.successes, i.refunds));
        let problem = match b.status {
            // 4. Confirmed: exactly one payment, not refunded.
            "confirmed" if (successes, refunds) != (1, 0) => {
                Some(format!("confirmed booking {} has {successes} captures and {refunds} refunds", b.booking_id))
            }
            // 5. Refunded: captured once and refunded once.
            "refunded" if (successes, refunds) != (1, 1) => {
                Some(format!("refunded booking {} has {successes} captures and {refunds} refunds", b.booking_id))
            }
            // 6. Ended without a sale: no money kept.
            "cancelled" | "expired" | "failed" if successes != refunds => Some(format!(
                "{} booking {} kept a payment ({successes} captures, {refunds} refunds)",
                b.status, b.booking_id
            )),
            _ => None,
        };
        if let Some(problem) = problem {
            report.flag(Invariant::PaymentsMatchBookings, problem);
        }
    }
    for intent in intents {
        if !by_id.contains_key(intent.booking_id.as_str()) {
            report.flag(
                Invariant::PaymentsMatchBookings,
                format!("intent {} pays unknown booking {}", intent.payment_intent_id, intent.booking_id),
            );
        }
    }
}

async fn check_ledger(payment: &PgPool, intents: &[IntentFacts], report: &mut Report) -> anyhow::Result<()> {
    // 7. The ledger balances per transaction and in total, with one capture per intent.
    let unbalanced: Vec<(String, i64, i64)> = sqlx::query_as(
        "select transaction_id, \
                coalesce(sum(amount) filter (where direction = 'debit'), 0)::bigint, \
                coalesce(sum(amount) filter (where direction = 'credit'), 0)::bigint \
         from ledger_entries group by transaction_id \
         having coalesce(sum(amount) filter (where direction = 'debit'), 0) \
             <> coalesce(sum(amount) filter (where direction = 'credit'), 0)",
    )
    .fetch_all(payment)
    .await?;
    for (transaction, debits, credits) in unbalanced {
        report.flag(
            Invariant::LedgerBalances,
            format!("ledger transaction {transaction} is unbalanced: debits {debits}, credits {credits}"),
        );
    }
    let captures: Vec<(String,)> = sqlx::query_as(
        "select transaction_id from ledger_entries where transaction_id like 'payment:%:capture' group by transaction_id",
    )
    .fetch_all(payment)
    .await?;
    let captured = intents.iter().filter(|i| i.successes > 0).count();
    if captures.len() != captured {
        report.flag(
            Invariant::LedgerBalances,
            format!("{} capture postings for {captured} successful payments", captures.len()),
        );
    }

    Ok(())
}

async fn check_psp(payment: &PgPool, intents: &[IntentFacts], report: &mut Report) -> anyhow::Result<()> {
    // 8. Money and records agree: every PSP charge is a recorded capture and
    //    every capture a PSP charge (attempt keys `{intent}:{attempt}`).
    let charged: Vec<(String, String)> =
        sqlx::query_as("select idempotency_key, payment_intent_id from psp.charges where status = 'succeeded'")
            .fetch_all(payment)
            .await?;
    let recorded_keys: HashMap<String, &str> = intents
        .iter()
        .flat_map(|i| i.captures.iter().map(move |(attempt, _)| (i, *attempt)))
        .filter(|(_, attempt)| *attempt > 0)
        .map(|(i, attempt)| (format!("{}:{attempt}", i.payment_intent_id), i.payment_intent_id.as_str()))
        .collect();
    let charged_keys: HashMap<&str, &str> = charged.iter().map(|(k, i)| (k.as_str(), i.as_str())).collect();
    for (key, intent) in &charged {
        if !recorded_keys.contains_key(key) {
            report.flag(
                Invariant::PspMatchesRecords,
                format!("the PSP charged {key} (intent {intent}) but no capture is recorded"),
            );
        }
    }
    for (key, intent) in &recorded_keys {
        if !charged_keys.contains_key(key.as_str()) {
            report.flag(
                Invariant::PspMatchesRecords,
                format!("intent {intent} records a capture ({key}) the PSP never charged"),
            );
        }
    }

    Ok(())
}

fn check_settled(intents: &[IntentFacts], by_id: &ById<'_>, report: &mut Report) {
    // 9. A paid booking ends confirmed or refunded (after a grace for the
    //    events still on their way).
    let settled_before = chrono::Utc::now() - PAID_GRACE;
    for intent in intents {
        for (_, at) in intent.captures.iter().filter(|(_, at)| *at < settled_before) {
            let status = by_id.get(intent.booking_id.as_str()).map(|b| b.status);
            if !matches!(status, Some("confirmed" | "refunded")) {
                report.flag(
                    Invariant::PaidBookingSettles,
                    format!(
                        "booking {} was paid at {at} (intent {}) but is {} rather than confirmed or refunded",
                        intent.booking_id,
                        intent.payment_intent_id,
                        status.unwrap_or("unknown")
                    ),
                );
            }
        }
    }
}

/// How long a payment may take to confirm or refund its booking before
/// `check` calls it stuck.
const PAID_GRACE: chrono::Duration = chrono::Duration::seconds(30);
