//! The seed's scenarios and the lifecycles of docs/API.md.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::System;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_then_paying_confirms_and_books_the_seat() {
    let sys = System::start().await;
    let reply = sys
        .post(
            "/bookings",
            "user_123",
            json!({"performanceId": "perf_001", "seatIds": ["A2"], "paymentMethod": "CREDIT_CARD", "userId": "user_123"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.body["message"], "Booking initiated. Please proceed to payment.");
    assert_eq!(reply.body["totalAmount"], 30000);
    let booking = reply.body["bookingId"].as_str().unwrap().to_owned();
    let intent = reply.body["paymentIntentId"].as_str().unwrap().to_owned();

    let locked = sys.wait_seat("user_123", "perf_001_A2", Some("locked")).await;
    assert_eq!(locked.body["bookingId"], booking.as_str());
    assert_eq!(locked.body["userId"], "user_123");
    assert!(locked.body["lockedUntil"]["seconds"].as_i64().unwrap() > chrono::Utc::now().timestamp());
    assert!(locked.body["lockedUntil"]["nanoseconds"].is_i64());

    let paid = sys.pay("user_123", &intent, "tok_visa_creditCard").await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    assert_eq!(paid.body["message"], "Payment SUCCESS");
    assert_eq!(paid.body["status"], "SUCCESS");
    assert_eq!(paid.body["paymentIntentId"], intent.as_str());
    assert_eq!(paid.body["pgMockData"]["isSuccess"], true);
    assert!(chrono::DateTime::parse_from_rfc3339(paid.body["pgMockData"]["processedAt"].as_str().unwrap()).is_ok());

    let listed = sys.wait_listed("user_123", &booking, "confirmed").await;
    let keys: Vec<&str> = listed.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = ["bookingId", "performanceId", "seatIds", "total_amount", "status", "userId", "createdAt"];
    expected.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(listed["total_amount"], 30000);
    assert_eq!(listed["seatIds"], json!(["A2"]));
    let created_at = listed["createdAt"].as_str().unwrap();
    assert!(created_at.ends_with('Z') && created_at.len() == 20, "seconds precision UTC: {created_at}");

    let booked = sys.wait_seat("user_123", "perf_001_A2", Some("booked")).await;
    assert_eq!(booked.body["lockedUntil"], serde_json::Value::Null);

    let again = sys.pay("user_123", &intent, "tok_visa_creditCard").await;
    assert_eq!(
        (again.status, again.body["error"].as_str()),
        (StatusCode::CONFLICT, Some("Payment already processed."))
    );
    let cancel = sys.delete(&format!("/bookings/{booking}"), "user_123").await;
    assert_eq!(cancel.status, StatusCode::CONFLICT);
    assert_eq!(cancel.body["error"], "Only pending bookings can be cancelled.");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_pending_booking_frees_its_seats_and_refuses_payment() {
    let sys = System::start().await;
    let (booking, intent) = sys.book("user_a", "perf_001", &["B1", "B2"]).await;
    sys.wait_seat("user_a", "perf_001_B1", Some("locked")).await;

    let stranger = sys.delete(&format!("/bookings/{booking}"), "user_b").await;
    assert_eq!(stranger.status, StatusCode::FORBIDDEN);
    assert_eq!(stranger.body["error"], "Unauthorized to cancel this booking.");

    let cancel = sys.delete(&format!("/bookings/{booking}"), "user_a").await;
    assert_eq!(cancel.status, StatusCode::OK);
    assert_eq!(cancel.body["message"], "Booking cancelled successfully.");
    // Freed at once: someone else can take the seats right away.
    sys.book("user_b", "perf_001", &["B2", "B1"]).await;

    // Paying right after a cancel answered 200 is refused, deterministically.
    let pay = sys.pay("user_a", &intent, "tok_visa").await;
    assert_eq!(pay.status, StatusCode::CONFLICT, "{}", pay.body);
    assert_eq!(pay.body["error"], "Payment intent is no longer payable.");

    // A retried DELETE is not an error: the same 200, and nothing changes.
    let twice = sys.delete(&format!("/bookings/{booking}"), "user_a").await;
    assert_eq!((twice.status, &twice.body), (cancel.status, &cancel.body));
    let by_stranger = sys.delete(&format!("/bookings/{booking}"), "user_b").await;
    assert_eq!(by_stranger.status, StatusCode::FORBIDDEN);
    let unknown = sys.delete("/bookings/no-such-booking", "user_a").await;
    assert_eq!((unknown.status, unknown.body["error"].as_str()), (StatusCode::NOT_FOUND, Some("Booking not found.")));
    sys.wait_listed("user_a", &booking, "cancelled").await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_right_after_a_declined_payments_answer_succeeds_at_once() {
    let sys = System::start().await;
    for round in 0..5 {
        let seat = format!("C{}", round + 10);
        let (booking, intent) = sys.book("user_decline", "perf_001", &[&seat]).await;
        let declined = sys.pay("user_decline", &intent, "tok_insufficientFunds").await;
        assert_eq!(declined.status, StatusCode::BAD_REQUEST, "{}", declined.body);
        let cancel = sys.delete(&format!("/bookings/{booking}"), "user_decline").await;
        assert_eq!(cancel.status, StatusCode::OK, "round {round}: {}", cancel.body);
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occupied_seats_name_the_holder_only_to_the_holder_and_admins() {
    let sys = System::start().await;
    let (booking, _) = sys.book("user_holder", "perf_001", &["D7"]).await;
    let own = sys.get("/occupiedSeats/perf_001_D7", "user_holder").await;
    assert_eq!((own.body["bookingId"].as_str(), own.body["userId"].as_str()), (Some(&*booking), Some("user_holder")));
    let admin = sys.call(reqwest::Method::GET, "/occupiedSeats/perf_001_D7", Some(&sys.admin_token()), None).await;
    assert_eq!(admin.body["userId"], "user_holder");
    let other = sys.get("/occupiedSeats/perf_001_D7", "user_curious").await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.body["bookingId"], serde_json::Value::Null);
    assert_eq!(other.body["userId"], serde_json::Value::Null);
    assert_eq!(other.body["status"], "locked");
    assert_eq!(other.body["lockedUntil"], own.body["lockedUntil"]);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_can_be_retried_until_it_succeeds() {
    let sys = System::start().await;
    let (booking, intent) = sys.book("user_c", "perf_002", &["A1"]).await;
    let declined = sys.pay("user_c", &intent, "tok_insufficientFunds").await;
    assert_eq!(declined.status, StatusCode::BAD_REQUEST);
    assert_eq!(declined.body["message"], "Payment FAILURE");
    assert_eq!(declined.body["status"], "FAILURE");
    assert_eq!(declined.body["error"]["failureCode"], "INSUFFICIENT_FUNDS");
    assert_eq!(declined.body["error"]["failureConcept"], "CLIENT_ERROR");
    let paid = sys.pay("user_c", &intent, "tok_mastercard").await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    sys.wait_status("user_c", &booking, "confirmed").await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_client_declines_fail_the_booking_and_release_its_seats() {
    let sys = System::start_with(&["--mock-pg-timeout-ms=50"]).await;
    let (booking, intent) = sys.book("user_d", "perf_002", &["B3"]).await;
    // Gateway trouble does not use up the buyer's attempts.
    let trouble = sys.pay("user_d", &intent, "tok_processingError").await;
    assert_eq!(trouble.body["error"]["failureConcept"], "SERVER_ERROR");
    let timeout = sys.pay("user_d", &intent, "tok_pgTimeout").await;
    assert_eq!(timeout.body["error"]["failureCode"], "PG_TIMEOUT");
    for token in ["tok_chargeDeclined", "tok_expiredCard", "tok_incorrectCvc"] {
        let reply = sys.pay("user_d", &intent, token).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{token}: {}", reply.body);
        assert_eq!(reply.body["status"], "FAILURE");
    }
    sys.wait_status("user_d", &booking, "failed").await;
    sys.wait_seat("user_d", "perf_002_B3", None).await;
    let after = sys.pay("user_d", &intent, "tok_visa").await;
    assert_eq!(
        (after.status, after.body["error"].as_str()),
        (StatusCode::CONFLICT, Some("Payment intent is no longer payable."))
    );
    sys.book("user_e", "perf_002", &["B3"]).await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_is_free_at_once_and_the_booking_expires() {
    let sys = System::start_with(&["--seat-hold-secs=2", "--payment-safety-margin-secs=1"]).await;
    let (booking, intent) = sys.book("user_f", "perf_001", &["C5"]).await;
    let taken = sys.try_book("user_g", "perf_001", &["C5"]).await;
    assert_eq!(
        (taken.status, taken.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("Seat C5 is not available."))
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // now >= lockedUntil: free, whether or not the sweeper has run.
    let doc = sys.get("/occupiedSeats/perf_001_C5", "user_g").await;
    assert_eq!(doc.status, StatusCode::NOT_FOUND);
    sys.book("user_g", "perf_001", &["C5"]).await;
    sys.wait_status("user_f", &booking, "expired").await;
    let late = sys.pay("user_f", &intent, "tok_visa").await;
    assert_eq!(late.status, StatusCode::CONFLICT, "{}", late.body);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_for_one_seat_have_one_winner() {
    let sys = System::start().await;
    let requests = (0..24).map(|n| {
        let client = sys.client.clone();
        let base = sys.base.clone();
        let user = format!("racer_{n}");
        let token = sys.token(&user);
        tokio::spawn(async move {
            client
                .post(format!("{base}/bookings"))
                .bearer_auth(token)
                .json(&json!({"performanceId": "perf_001", "seatIds": ["J20"], "userId": user}))
                .send()
                .await
                .unwrap()
                .status()
        })
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(requests).await.into_iter().map(Result::unwrap).collect();
    let winners = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    let losers = statuses.iter().filter(|s| **s == StatusCode::BAD_REQUEST).count();
    assert_eq!((winners, losers), (1, 23), "{statuses:?}");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_seat_request_is_all_or_nothing_and_names_the_first_taken_seat() {
    let sys = System::start().await;
    sys.book("user_h", "perf_001", &["D3"]).await;
    let reply = sys.try_book("user_i", "perf_001", &["D1", "D3", "D2"]).await;
    assert_eq!(
        (reply.status, reply.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("Seat D3 is not available."))
    );
    // Nothing else stayed held.
    sys.book("user_j", "perf_001", &["D1", "D2"]).await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilding_the_projections_reproduces_the_live_views() {
    let sys = System::start().await;
    let (b1, i1) = sys.book("user_k", "perf_001", &["E1"]).await;
    let (b2, _) = sys.book("user_k", "perf_001", &["E2", "E3"]).await;
    let (b3, _) = sys.book("user_l", "perf_002", &["A5"]).await;
    sys.pay("user_k", &i1, "tok_visa").await;
    sys.delete(&format!("/bookings/{b2}"), "user_k").await;
    sys.wait_listed("user_k", &b1, "confirmed").await;
    sys.wait_listed("user_k", &b2, "cancelled").await;
    sys.wait_listed("user_l", &b3, "pending").await;
    let pool = sys.booking_pool().await;
    let snapshot = |pool: sqlx::PgPool| async move {
        let bookings: Vec<(String, String, String, i64)> =
            sqlx::query_as("select booking_id, user_id, status, total_amount from booking_view order by booking_id")
                .fetch_all(&pool)
                .await
                .unwrap();
        bookings
    };
    let live = snapshot(pool.clone()).await;
    assert_eq!(live.len(), 3);
    kernel::projection::rebuild(&pool, &booking_service::store::views::BookingViews).await.unwrap();
    assert_eq!(snapshot(pool.clone()).await, live);
    // The swapped-in view is written by new commands at once.
    let (b4, _) = sys.book("user_l", "perf_002", &["A4"]).await;
    let listed = sys.get("/bookings/my", "user_l").await;
    assert!(listed.body.as_array().unwrap().iter().any(|b| b["bookingId"] == b4.as_str()), "{}", listed.body);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invariant_checker_reports_an_unbalanced_ledger_and_a_leaked_hold() {
    let sys = System::start().await;
    let (booking, intent) = sys.book("user_m", "perf_001", &["E9"]).await;
    sys.pay("user_m", &intent, "tok_visa").await;
    sys.wait_status("user_m", &booking, "confirmed").await;
    assert!(sys.settled_violations().await.is_empty());

    let payment = sys.payment_pool().await;
    sqlx::query("insert into ledger_entries (transaction_id, account, direction, amount, currency) values ('manual:1', 'MERCHANT_BALANCE', 'credit', 5, 'KRW')")
        .execute(&payment)
        .await
        .unwrap();
    let booking_db = sys.booking_pool().await;
    sqlx::query("delete from seat_holds where booking_id = $1").bind(&booking).execute(&booking_db).await.unwrap();
    let found = ticketing::audit::check(&booking_db, &payment).await.unwrap();
    let text: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert!(text.iter().any(|v| v.contains("manual:1 is unbalanced")), "{text:?}");
    assert!(text.iter().any(|v| v.contains(&format!("confirmed booking {booking} does not own seat"))), "{text:?}");
    // Repair so the harness's final check passes.
    sqlx::query("insert into ledger_entries (transaction_id, account, direction, amount, currency) values ('manual:1', 'CUSTOMER_PAYABLE', 'debit', 5, 'KRW')")
        .execute(&payment)
        .await
        .unwrap();
    sqlx::query("insert into seat_holds (performance_id, seat_id, booking_id, user_id, status) values ('perf_001', 'E9', $1, 'user_m', 'booked')")
        .bind(&booking)
        .execute(&booking_db)
        .await
        .unwrap();
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invariant_checker_finds_an_oversold_seat_in_the_event_store_whatever_the_projections_say() {
    use booking_service::domain::booking::{Booking, BookingEvent, BookingRef, PaymentMethod, SeatLocked};
    let sys = System::start().await;
    let (booking, intent) = sys.book("user_o", "perf_001", &["E11"]).await;
    sys.pay("user_o", &intent, "tok_visa").await;
    sys.wait_status("user_o", &booking, "confirmed").await;
    assert!(sys.settled_violations().await.is_empty());
    // A second confirmed booking of the same seat, written straight into the
    // event store: no seat hold, no projection row knows about it.
    let now = chrono::Utc::now();
    let locked = SeatLocked {
        booking_id: "forged_booking".into(),
        payment_intent_id: "forged_intent".into(),
        user_id: "user_x".into(),
        performance_id: "perf_001".into(),
        seat_ids: vec!["E11".into()],
        total_amount: 1,
        currency: "KRW".into(),
        payment_method: PaymentMethod::CreditCard,
        locked_until: now,
        created_at: now,
    };
    let of = BookingRef { user_id: "user_x".into(), performance_id: "perf_001".into(), seat_ids: vec!["E11".into()] };
    let events = [
        BookingEvent::SeatLocked(locked),
        BookingEvent::BookingConfirmed { of, payment_intent_id: "forged_intent".into(), confirmed_at: now },
    ];
    let booking_db = sys.booking_pool().await;
    let mut conn = booking_db.acquire().await.unwrap();
    kernel::event_store::append_typed(
        &mut conn,
        <Booking as kernel::aggregate::Aggregate>::STREAM_TYPE,
        "forged_booking",
        0,
        &events,
        &Default::default(),
    )
    .await
    .unwrap();
    let found = ticketing::audit::check(&booking_db, &sys.payment_pool().await).await.unwrap();
    let oversold: Vec<_> = found.iter().filter(|v| v.invariant == ticketing::audit::Invariant::SeatSoldOnce).collect();
    assert_eq!(oversold.len(), 1, "{found:?}");
    assert!(oversold[0].message.contains("perf_001/E11 is sold to 2 bookings"), "{}", oversold[0]);
    sys.stop_without_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invariant_checker_compares_the_psp_with_the_recorded_captures() {
    let sys = System::start().await;
    let (booking, intent) = sys.book("user_psp", "perf_001", &["E10"]).await;
    sys.pay("user_psp", &intent, "tok_visa").await;
    sys.wait_status("user_psp", &booking, "confirmed").await;
    assert!(sys.settled_violations().await.is_empty());
    let payment = sys.payment_pool().await;
    let booking_db = sys.booking_pool().await;
    // Money the PSP took that nobody recorded, and a capture the PSP never made.
    sqlx::query(
        "insert into psp.charges (idempotency_key, payment_intent_id, amount, currency, status) \
         values ($1, $2, 30000, 'KRW', 'succeeded')",
    )
    .bind(format!("{intent}:7"))
    .bind(&intent)
    .execute(&payment)
    .await
    .unwrap();
    sqlx::query("update psp.charges set idempotency_key = idempotency_key || ':lost' where idempotency_key = $1")
        .bind(format!("{intent}:1"))
        .execute(&payment)
        .await
        .unwrap();
    let found = ticketing::audit::check(&booking_db, &payment).await.unwrap();
    let text: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert!(text.iter().any(|v| v.contains(&format!("the PSP charged {intent}:7"))), "{text:?}");
    assert!(
        text.iter().any(|v| v.contains(&format!("records a capture ({intent}:1) the PSP never charged"))),
        "{text:?}"
    );
    // Repair so the harness's final check passes.
    sqlx::query("delete from psp.charges where payment_intent_id = $1 and idempotency_key <> $2")
        .bind(&intent)
        .bind(format!("{intent}:1:lost"))
        .execute(&payment)
        .await
        .unwrap();
    sqlx::query("update psp.charges set idempotency_key = $2 where idempotency_key = $1")
        .bind(format!("{intent}:1:lost"))
        .bind(format!("{intent}:1"))
        .execute(&payment)
        .await
        .unwrap();
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_read_after_a_payment_or_a_cancel_shows_it_a_hundred_times_over() {
    let sys = System::start().await;
    let listed_status = |body: &serde_json::Value, booking: &str| {
        body.as_array().unwrap().iter().find(|b| b["bookingId"] == booking).map(|b| b["status"].clone())
    };
    let seat_state = |map: &serde_json::Value, seat: &str| {
        map["seats"].as_array().unwrap().iter().find(|s| s["seatId"] == seat).map(|s| s["state"].clone())
    };
    let mut stale = Vec::new();
    for n in 0..100 {
        let user = format!("ryw_{n}");
        let seat = format!("{}{}", ["A", "B", "C", "D", "E"][n % 5], 1 + n / 5);
        let doc = format!("/occupiedSeats/perf_001_{seat}");
        let (booking, intent) = sys.book(&user, "perf_001", &[&seat]).await;
        // The reads follow each answer at once: after the 201 ...
        let held = sys.get(&doc, &user).await;
        if held.status != StatusCode::OK || held.body["status"] != "locked" {
            stale.push(format!("round {n}: booked but occupiedSeats said {} {}", held.status, held.body));
        }
        let map = sys.get("/performances/perf_001/seats", &user).await;
        if seat_state(&map.body, &seat) != Some("locked".into()) {
            stale.push(format!("round {n}: booked but the seat map showed {:?}", seat_state(&map.body, &seat)));
        }
        // ... then, even rounds pay, odd rounds cancel.
        let (expected, seat_now, doc_now) = if n % 2 == 0 {
            let paid = sys.pay(&user, &intent, "tok_visa").await;
            assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
            ("confirmed", "booked", Some("booked"))
        } else {
            let cancelled = sys.delete(&format!("/bookings/{booking}"), &user).await;
            assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
            ("cancelled", "available", None)
        };
        let listed = sys.get("/bookings/my", &user).await;
        let seen = listed_status(&listed.body, &booking);
        if seen != Some(serde_json::Value::from(expected)) {
            stale.push(format!("round {n}: {expected} but the list showed {seen:?}"));
        }
        let one = sys.get(&format!("/bookings/{booking}"), &user).await;
        if one.body["status"] != expected {
            stale.push(format!("round {n}: {expected} but the booking showed {}", one.body["status"]));
        }
        let document = sys.get(&doc, &user).await;
        let document_status = (document.status == StatusCode::OK).then(|| document.body["status"].clone());
        if document_status != doc_now.map(serde_json::Value::from) {
            stale.push(format!("round {n}: {expected} but occupiedSeats said {} {}", document.status, document.body));
        }
        let map = sys.get("/performances/perf_001/seats", &user).await;
        if seat_state(&map.body, &seat) != Some(seat_now.into()) {
            stale.push(format!("round {n}: {expected} but the seat map showed {:?}", seat_state(&map.body, &seat)));
        }
    }
    assert!(stale.is_empty(), "{} stale reads: {stale:#?}", stale.len());
    sys.stop().await;
}
