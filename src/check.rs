//! `ticketing check`: reads both services' stores and reports every broken
//! invariant. It trusts no projection: booking states are folded from the
//! event store, payments from the payment event store and the ledger.

use std::collections::{BTreeMap, HashMap};

use sqlx::PgPool;

/// One broken invariant, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, sqlx::FromRow)]
struct BookingFacts {
    booking_id: String,
    performance_id: String,
    seat_ids: Vec<String>,
    payment_intent_id: String,
    status: String,
}

#[derive(Debug, Default, sqlx::FromRow)]
struct IntentFacts {
    payment_intent_id: String,
    booking_id: String,
    successes: i64,
    refunds: i64,
}

/// Runs every check; an empty list means the stores are consistent.
pub async fn check(booking: &PgPool, payment: &PgPool) -> Result<Vec<Violation>, sqlx::Error> {
    let mut violations = Vec::new();
    let mut flag = |message: String| violations.push(Violation(message));

    // Booking states folded from the event store.
    let bookings: Vec<BookingFacts> = sqlx::query_as(
        "select e.stream_id as booking_id, \
                first.payload->>'performance_id' as performance_id, \
                array(select jsonb_array_elements_text(first.payload->'seat_ids')) as seat_ids, \
                first.payload->>'payment_intent_id' as payment_intent_id, \
                case (array_agg(e.event_type order by e.stream_version desc) filter (where e.event_type in \
                      ('SeatLocked','BookingConfirmed','BookingCancelled','BookingExpired','BookingFailed','BookingRefunded')))[1] \
                  when 'SeatLocked' then 'pending' when 'BookingConfirmed' then 'confirmed' \
                  when 'BookingCancelled' then 'cancelled' when 'BookingExpired' then 'expired' \
                  when 'BookingFailed' then 'failed' else 'refunded' end as status \
         from events e join events first on first.stream_type = 'booking' and first.stream_id = e.stream_id \
              and first.stream_version = 1 \
         where e.stream_type = 'booking' \
         group by e.stream_id, first.payload",
    )
    .fetch_all(booking)
    .await?;

    // 1. No seat owned by two confirmed bookings.
    let mut owners: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for b in bookings.iter().filter(|b| b.status == "confirmed") {
        for seat in &b.seat_ids {
            owners.entry((b.performance_id.clone(), seat.clone())).or_default().push(b.booking_id.clone());
        }
    }
    for ((performance, seat), ids) in &owners {
        if ids.len() > 1 {
            flag(format!("seat {performance}/{seat} is sold to {} bookings: {}", ids.len(), ids.join(", ")));
        }
    }

    // 2. Seat holds agree with the bookings' states.
    let holds: Vec<(String, String, String, String)> =
        sqlx::query_as("select performance_id, seat_id, booking_id, status from seat_holds").fetch_all(booking).await?;
    let by_id: HashMap<&str, &BookingFacts> = bookings.iter().map(|b| (b.booking_id.as_str(), b)).collect();
    let mut held: HashMap<(&str, &str), (&str, &str)> = HashMap::new();
    for (performance, seat, booking_id, status) in &holds {
        held.insert((performance, seat), (booking_id, status));
        match by_id.get(booking_id.as_str()).map(|b| b.status.as_str()) {
            Some("pending") | Some("confirmed") => {}
            Some(other) => flag(format!("seat {performance}/{seat} is still held by {other} booking {booking_id}")),
            None => flag(format!("seat {performance}/{seat} is held by unknown booking {booking_id}")),
        }
    }
    // 3. A paid booking's seats are booked by it.
    for b in bookings.iter().filter(|b| b.status == "confirmed") {
        for seat in &b.seat_ids {
            match held.get(&(b.performance_id.as_str(), seat.as_str())) {
                Some((owner, "booked")) if *owner == b.booking_id => {}
                other => flag(format!(
                    "confirmed booking {} does not own seat {}/{seat} (found {other:?})",
                    b.booking_id, b.performance_id
                )),
            }
        }
    }

    // Payments: successes and refunds per intent.
    let intents: Vec<IntentFacts> = sqlx::query_as(
        "select stream_id as payment_intent_id, \
                max(payload->>'booking_id') filter (where stream_version = 1) as booking_id, \
                count(*) filter (where event_type = 'PaymentSucceeded') as successes, \
                count(*) filter (where event_type = 'PaymentRefunded') as refunds \
         from events where stream_type = 'payment_intent' group by stream_id",
    )
    .fetch_all(payment)
    .await?;
    let intent_by_id: HashMap<&str, &IntentFacts> = intents.iter().map(|i| (i.payment_intent_id.as_str(), i)).collect();
    for intent in &intents {
        if intent.successes > 1 || intent.refunds > 1 || intent.refunds > intent.successes {
            flag(format!(
                "intent {} has {} captures and {} refunds",
                intent.payment_intent_id, intent.successes, intent.refunds
            ));
        }
    }
    for b in &bookings {
        let intent = intent_by_id.get(b.payment_intent_id.as_str());
        let (successes, refunds) = intent.map_or((0, 0), |i| (i.successes, i.refunds));
        match b.status.as_str() {
            // 4. Confirmed: exactly one payment, not refunded.
            "confirmed" if (successes, refunds) != (1, 0) => {
                flag(format!("confirmed booking {} has {successes} captures and {refunds} refunds", b.booking_id))
            }
            // 5. Refunded: captured once and refunded once.
            "refunded" if (successes, refunds) != (1, 1) => {
                flag(format!("refunded booking {} has {successes} captures and {refunds} refunds", b.booking_id))
            }
            // 6. Ended without a sale: no money kept.
            "cancelled" | "expired" | "failed" if successes != refunds => flag(format!(
                "{} booking {} kept a payment ({successes} captures, {refunds} refunds)",
                b.status, b.booking_id
            )),
            _ => {}
        }
    }
    for intent in &intents {
        if !by_id.contains_key(intent.booking_id.as_str()) {
            flag(format!("intent {} pays unknown booking {}", intent.payment_intent_id, intent.booking_id));
        }
    }

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
        flag(format!("ledger transaction {transaction} is unbalanced: debits {debits}, credits {credits}"));
    }
    let captures: Vec<(String,)> = sqlx::query_as(
        "select transaction_id from ledger_entries where transaction_id like 'payment:%:capture' group by transaction_id",
    )
    .fetch_all(payment)
    .await?;
    let captured: usize = intents.iter().filter(|i| i.successes > 0).count();
    if captures.len() != captured {
        flag(format!("{} capture postings for {captured} successful payments", captures.len()));
    }

    // 8. Money and records agree: every PSP charge is a recorded capture and
    //    every capture a PSP charge (attempt keys `{intent}:{attempt}`).
    let recorded: Vec<(String, i32, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "select stream_id, coalesce((payload->>'attempt')::int, 0), recorded_at from events \
         where stream_type = 'payment_intent' and event_type = 'PaymentSucceeded'",
    )
    .fetch_all(payment)
    .await?;
    let charged: Vec<(String, String)> =
        sqlx::query_as("select idempotency_key, payment_intent_id from psp.charges where status = 'succeeded'")
            .fetch_all(payment)
            .await?;
    let recorded_keys: HashMap<String, &str> = recorded
        .iter()
        .filter(|(_, attempt, _)| *attempt > 0)
        .map(|(intent, attempt, _)| (format!("{intent}:{attempt}"), intent.as_str()))
        .collect();
    let charged_keys: HashMap<&str, &str> = charged.iter().map(|(k, i)| (k.as_str(), i.as_str())).collect();
    for (key, intent) in &charged {
        if !recorded_keys.contains_key(key) {
            flag(format!("the PSP charged {key} (intent {intent}) but no capture is recorded"));
        }
    }
    for (key, intent) in &recorded_keys {
        if !charged_keys.contains_key(key.as_str()) {
            flag(format!("intent {intent} records a capture ({key}) the PSP never charged"));
        }
    }

    // 9. A paid booking ends confirmed or refunded (after a grace for the
    //    events still on their way).
    let settled_before = chrono::Utc::now() - PAID_GRACE;
    for (intent, _, at) in recorded.iter().filter(|(_, _, at)| *at < settled_before) {
        let Some(facts) = intent_by_id.get(intent.as_str()) else { continue };
        let status = by_id.get(facts.booking_id.as_str()).map(|b| b.status.as_str());
        if !matches!(status, Some("confirmed" | "refunded")) {
            flag(format!(
                "booking {} was paid at {at} (intent {intent}) but is {} rather than confirmed or refunded",
                facts.booking_id,
                status.unwrap_or("unknown")
            ));
        }
    }
    Ok(violations)
}

/// How long a payment may take to confirm or refund its booking before
/// `check` calls it stuck.
const PAID_GRACE: chrono::Duration = chrono::Duration::seconds(30);
