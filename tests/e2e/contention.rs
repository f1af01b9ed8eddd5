//! Correctness under contention: no oversell, the per-user limit under
//! concurrency, and payments racing cancels.

use std::{collections::HashMap, time::Duration};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::System;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_overlapping_requests_never_oversell() {
    let sys = System::start().await;
    let admin = sys.admin_token();
    let perf = "perf_race";
    let created = sys
        .call(
            reqwest::Method::POST,
            "/performances",
            Some(&admin),
            Some(json!({"performanceId": perf, "title": "race", "rows": [{"row": "A", "seats": 30, "price": 1000}]})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    // 200 users, each wanting 1-3 seats out of 30, in arbitrary order.
    let requests: Vec<(String, Vec<String>)> = (0..200)
        .map(|n: usize| {
            let count = 1 + n % 3;
            let seats = (0..count).map(|k| format!("A{}", 1 + (n * 7 + k * 11) % 30)).collect::<Vec<_>>();
            let mut unique = seats.clone();
            unique.sort();
            unique.dedup();
            (format!("crowd_{n}"), unique)
        })
        .collect();
    let tasks = requests.iter().map(|(user, seats)| {
        let client = sys.client.clone();
        let url = format!("{}/bookings", sys.base);
        let token = sys.token(user);
        let body = json!({"performanceId": perf, "seatIds": seats, "userId": user});
        tokio::spawn(async move {
            let response = client.post(url).bearer_auth(token).json(&body).send().await.unwrap();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body)
        })
    });
    let replies: Vec<_> = futures::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    let mut holder: HashMap<String, String> = HashMap::new();
    let mut winners = 0;
    for ((user, seats), (status, body)) in requests.iter().zip(&replies) {
        assert!(status.is_success() || *status == StatusCode::BAD_REQUEST, "{status}: {body}");
        if *status == StatusCode::CREATED {
            winners += 1;
            for seat in seats {
                let previous = holder.insert(seat.clone(), user.clone());
                assert!(previous.is_none(), "seat {seat} sold to {previous:?} and {user}");
            }
        } else {
            let message = body["error"].as_str().unwrap();
            assert!(message.ends_with("is not available."), "{message}");
        }
    }
    assert!(winners >= 10, "at least a third of the 30 seats went to someone ({winners})");
    // The database agrees seat by seat.
    let map = sys.get(&format!("/performances/{perf}/seats"), "crowd_0").await;
    let locked = map.body["seats"].as_array().unwrap().iter().filter(|s| s["state"] == "locked").count();
    assert_eq!(locked, holder.len());
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_firing_concurrent_requests_never_exceeds_the_limit() {
    let sys = System::start().await;
    let user = "greedy";
    let tasks = (0..12).map(|n| {
        let client = sys.client.clone();
        let url = format!("{}/bookings", sys.base);
        let token = sys.token(user);
        let seats = vec![format!("I{}", 2 * n + 1), format!("I{}", 2 * n + 2)];
        let body = json!({"performanceId": "perf_001", "seatIds": seats, "userId": user});
        tokio::spawn(async move { client.post(url).bearer_auth(token).json(&body).send().await.unwrap().status() })
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    let won = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    assert_eq!(won, 5, "10 seats in pairs: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED || *s == StatusCode::BAD_REQUEST));
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_racing_payments_end_confirmed_cancelled_or_refunded_never_half_done() {
    let sys = System::start().await;
    // How long a payment takes here, so the cancels can be spread from
    // "at once" to "after the payment answered": both sides must win.
    // (The first payment of a run also opens connections: time the second.)
    let mut payment_takes = Duration::ZERO;
    for seat in ["J19", "J20"] {
        let (_, warm_up) = sys.book("racer_warm_up", "perf_001", &[seat]).await;
        let started = std::time::Instant::now();
        assert_eq!(sys.pay("racer_warm_up", &warm_up, "tok_visa").await.status, StatusCode::OK);
        payment_takes = started.elapsed();
    }
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    // Twelve rounds spread the cancel from at once to 1.5 payments later.
    // Under a loaded machine a payment can take longer than the one timed
    // above, so the delays keep growing, round after round, up to 24
    // rounds (3.1 payments), until both sides have won.
    let both_won = |outcomes: &HashMap<String, usize>| {
        outcomes.contains_key("confirmed") && (outcomes.contains_key("cancelled") || outcomes.contains_key("refunded"))
    };
    for n in 0..24_u32 {
        if n >= 12 && both_won(&outcomes) {
            break;
        }
        let user = format!("racer_{n}");
        // J19 and J20 went to the warm-up.
        let seat = if n < 18 { format!("J{}", n + 1) } else { format!("H{}", n - 17) };
        let (booking, intent) = sys.book(&user, "perf_001", &[&seat]).await;
        let delay = payment_takes * 3 * n / (2 * 11);
        let (paid, cancelled) = tokio::join!(sys.pay(&user, &intent, "tok_visa"), async {
            tokio::time::sleep(delay).await;
            sys.delete(&format!("/bookings/{booking}"), &user).await
        });
        // What the two answers promise: charged and kept, cancelled with no
        // charge, or (both acknowledged) charged and then refunded.
        let end = match (paid.status, cancelled.status) {
            (StatusCode::OK, StatusCode::OK) => "refunded",
            (StatusCode::OK, _) => "confirmed",
            (_, StatusCode::OK) => "cancelled",
            other => panic!("neither the payment nor the cancel won: {other:?} {} {}", paid.body, cancelled.body),
        };
        sys.wait_status(&user, &booking, end).await;
        // The occupiedSeats document is a projection: it follows within milliseconds.
        let doc = format!("perf_001_{seat}");
        match end {
            "confirmed" => sys.wait_seat(&user, &doc, Some("booked")).await,
            _ => sys.wait_seat(&user, &doc, None).await,
        };
        *outcomes.entry(end.to_owned()).or_default() += 1;
    }
    println!("cancel racing pay (a payment takes {payment_takes:?}): {outcomes:?}");
    assert!(both_won(&outcomes), "no race happened: {outcomes:?}");
    // The money matches every end state: one capture per confirmed booking,
    // none kept for a cancelled one, capture plus refund for a refunded one
    // (`check`, run by `stop`, compares the event stores and the ledger).
    sys.stop().await;
}

/// The true race: the gateway takes 4 s but an admission protects the hold
/// for 2 s, so the owner's cancel gets through while the charge is still
/// running, and someone else takes the seat. Returns (bookingId, intentId).
async fn pay_late_after_cancel(sys: &System, user: &str, seat: &str) -> (String, String) {
    let (booking, intent) = sys.book(user, "perf_002", &[seat]).await;
    // Let SeatLocked reach the payment-service so the charge starts at once.
    sys.wait_intent(user, &intent).await;
    let pay = {
        let client = sys.client.clone();
        let url = format!("{}/payments/execute", sys.base);
        let token = sys.token(user);
        let intent = intent.clone();
        tokio::spawn(async move {
            let body = json!({"paymentIntentId": intent, "paymentMethodToken": "tok_visa", "cvv": "123"});
            client.post(url).bearer_auth(token).json(&body).send().await.unwrap().status()
        })
    };
    // Cancel as soon as the charge has been admitted (deterministic under load).
    let booking_db = sys.booking_pool().await;
    let admitted = testkit::eventually(Duration::from_secs(10), || async {
        let n: i64 =
            sqlx::query_scalar("select count(*) from events where stream_id = $1 and event_type = 'PaymentAdmitted'")
                .bind(&booking)
                .fetch_one(&booking_db)
                .await
                .unwrap();
        (n > 0).then_some(())
    })
    .await;
    assert!(admitted.is_some(), "the charge was admitted");
    let first = sys.delete(&format!("/bookings/{booking}"), user).await;
    assert_eq!(
        (first.status, first.body["error"].as_str()),
        (StatusCode::CONFLICT, Some("A payment for this booking is in progress.")),
        "the admission protects the hold while the gateway works"
    );
    let cancelled = testkit::eventually(Duration::from_secs(10), || async {
        let reply = sys.delete(&format!("/bookings/{booking}"), user).await;
        (reply.status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(cancelled.is_some(), "the cancel got through after the admission lapsed");
    // The seat is free at once and someone else takes it.
    sys.book("next_buyer", "perf_002", &[seat]).await;
    assert_eq!(pay.await.unwrap(), StatusCode::OK, "the gateway did charge");
    (booking, intent)
}

async fn postings(sys: &System) -> Vec<(String, String, i64)> {
    sqlx::query_as("select transaction_id, direction, amount from ledger_entries order by transaction_id, direction")
        .fetch_all(&sys.payment_pool().await)
        .await
        .unwrap()
}

async fn intent_events(sys: &System, intent: &str) -> Vec<String> {
    sqlx::query_scalar("select event_type from events where stream_id = $1 order by stream_version")
        .bind(intent)
        .fetch_all(&sys.payment_pool().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_that_outlives_its_admission_after_a_cancel_is_refunded() {
    let sys = System::start_with(&["--payment-admission-secs=2", "--mock-pg-latency-ms=4000"]).await;
    let (booking, intent) = pay_late_after_cancel(&sys, "late_payer", "A3").await;
    sys.wait_status("late_payer", &booking, "refunded").await;
    let expected = [
        (format!("payment:{intent}:capture"), "credit".to_owned(), 50000),
        (format!("payment:{intent}:capture"), "debit".to_owned(), 50000),
        (format!("payment:{intent}:refund"), "credit".to_owned(), 50000),
        (format!("payment:{intent}:refund"), "debit".to_owned(), 50000),
    ];
    assert_eq!(postings(&sys).await, expected);
    let doc = sys.wait_seat("next_buyer", "perf_002_A3", Some("locked")).await;
    assert_eq!(doc.body["userId"], "next_buyer", "the late payment never took the seat back");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_that_fails_transiently_is_retried_with_the_same_key_until_it_succeeds() {
    let sys =
        System::start_with(&["--payment-admission-secs=2", "--mock-pg-latency-ms=4000", "--mock-pg-refund-failures=2"])
            .await;
    let (booking, intent) = pay_late_after_cancel(&sys, "unlucky", "A4").await;
    sys.wait_status("unlucky", &booking, "refunded").await;
    let events = intent_events(&sys, &intent).await;
    let failed = events.iter().filter(|e| *e == "RefundAttemptFailed").count();
    let refunded = events.iter().filter(|e| *e == "PaymentRefunded").count();
    assert_eq!((failed, refunded), (2, 1), "{events:?}");
    assert_eq!(postings(&sys).await.len(), 4, "one capture and one refund posting");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_that_keeps_failing_ends_in_a_visible_needs_review_state() {
    let sys = System::start_with(&[
        "--payment-admission-secs=2",
        "--mock-pg-latency-ms=4000",
        "--mock-pg-refund-failures=100",
        "--refund-max-attempts=3",
    ])
    .await;
    let (booking, intent) = pay_late_after_cancel(&sys, "stuck", "A5").await;
    let client = sys.payment_grpc().await;
    let review = testkit::eventually(Duration::from_secs(30), || {
        let mut client = client.clone();
        let request = sys.as_user(
            "stuck",
            proto::payment::GetPaymentIntentRequest { payment_intent_id: intent.clone(), ..Default::default() },
        );
        async move {
            let intent = client.get_payment_intent(request).await.ok()?.into_inner();
            (intent.status == "refund_needs_review").then_some(())
        }
    })
    .await;
    assert!(review.is_some(), "the intent shows refund_needs_review");
    let events = intent_events(&sys, &intent).await;
    assert_eq!(events.iter().filter(|e| *e == "RefundAttemptFailed").count(), 3, "{events:?}");
    // The booking stays cancelled and the checker names the stuck money.
    sys.wait_status("stuck", &booking, "cancelled").await;
    let violations = sys.settled_violations().await;
    assert!(
        violations.iter().any(|v| v.to_string().contains(&format!("cancelled booking {booking} kept a payment"))),
        "{violations:?}"
    );

    // An operator lists it, and records the refund they made by hand at the PSP.
    let refunds = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ticketing"))
            .arg("refunds")
            .args(args)
            .env("DATABASE_URL", testkit::server_url())
            .env("PAYMENT_DATABASE", &sys.payment_db)
            .output()
            .unwrap()
    };
    let list = refunds(&["list"]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success() && listed.contains(&intent) && listed.contains("1 refund(s) need review"),
        "{listed}"
    );
    let unknown = refunds(&["resolve", "no-such-intent", "--operator", "ops", "--note", "x"]);
    assert!(!unknown.status.success());
    let resolved = refunds(&["resolve", &intent, "--operator", "ops_alice", "--note", "refunded in the PSP console"]);
    assert!(resolved.status.success(), "{}", String::from_utf8_lossy(&resolved.stderr));
    assert!(String::from_utf8_lossy(&refunds(&["list"]).stdout).contains("0 refund(s) need review"));
    let again = refunds(&["retry", &intent, "--operator", "ops_alice"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("no refund waiting for review"));
    // The booking shows it, and the books balance again.
    sys.wait_status("stuck", &booking, "refunded").await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_times_the_pool_in_concurrent_executes_of_one_intent_get_one_200_and_409s_quickly() {
    // The harness gives each service 12 connections; 36 executes of one intent.
    let sys = System::start().await;
    let user = "pool_user";
    let (booking, intent) = sys.book(user, "perf_001", &["F7"]).await;
    sys.wait_intent(user, &intent).await;
    let tasks = (0..36).map(|_| {
        let client = sys.client.clone();
        let url = format!("{}/payments/execute", sys.base);
        let token = sys.token(user);
        let body = json!({"paymentIntentId": intent, "paymentMethodToken": "tok_visa", "cvv": "123"});
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let response = client.post(url).bearer_auth(token).json(&body).send().await.unwrap();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body, started.elapsed())
        })
    });
    let replies: Vec<_> = futures::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    let ok = replies.iter().filter(|(s, _, _)| *s == StatusCode::OK).count();
    assert_eq!(ok, 1, "exactly one charge: {replies:?}");
    for (status, body, took) in &replies {
        assert!(*status == StatusCode::OK || *status == StatusCode::CONFLICT, "only 200 or 409, got {status}: {body}");
        if *status == StatusCode::CONFLICT {
            let message = body["error"].as_str().unwrap();
            assert!(
                ["A payment for this intent is in progress.", "Payment already processed."].contains(&message),
                "{message}"
            );
        }
        assert!(*took < Duration::from_secs(5), "every answer within a few seconds: {took:?}");
    }
    let ready = sys.client.get(format!("{}/readyz", sys.base)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "readiness stays green");
    sys.wait_status(user, &booking, "confirmed").await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_payment_succeeded_for_another_intent_leaves_the_booking_pending() {
    use prost::Message as _;
    use rdkafka::producer::FutureRecord;
    let sys = System::start().await;
    let victim = "forgery_victim";
    let (booking, intent) = sys.book(victim, "perf_001", &["F9"]).await;
    let forged = proto::events::PaymentSucceeded {
        payment_intent_id: "pi_forged_elsewhere".into(),
        booking_id: booking.clone(),
        user_id: victim.into(),
        amount: Some(proto::events::Money { amount: 30000, currency: "KRW".into() }),
        payment_method_token: "tok_visa".into(),
        processed_at: Some(proto::time::timestamp(chrono::Utc::now())),
    };
    let ce_id = uuid::Uuid::now_v7();
    let headers = messaging::kafka::CloudEventHeaders {
        id: ce_id.to_string(),
        source: "/payment-service".into(),
        event_type: messaging::topics::payment_type("PaymentSucceeded"),
        time: messaging::kafka::CloudEventHeaders::format_time(chrono::Utc::now()),
        subject: booking.clone(),
        ..Default::default()
    };
    let producer = messaging::kafka::producer(&sys.brokers).unwrap();
    let value = forged.encode_to_vec();
    producer
        .send(
            FutureRecord::to(&sys.topics.payment).key(&booking).payload(&value).headers(headers.to_kafka()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    // The booking-service handled it (its inbox remembers the ce_id) ...
    let pool = sys.booking_pool().await;
    let handled = testkit::eventually(Duration::from_secs(30), || async {
        let seen: bool = sqlx::query_scalar("select exists (select 1 from inbox where event_id = $1)")
            .bind(ce_id)
            .fetch_one(&pool)
            .await
            .ok()?;
        seen.then_some(())
    })
    .await;
    assert!(handled.is_some(), "the forged event was consumed");
    // ... and changed nothing.
    let reply = sys.get(&format!("/bookings/{booking}"), victim).await;
    assert_eq!(reply.body["status"], "pending", "{}", reply.body);
    // The real payment still confirms it.
    let paid = sys.pay(victim, &intent, "tok_visa").await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    sys.wait_status(victim, &booking, "confirmed").await;
    sys.stop().await;
}
