//! Idempotency-Key on `POST /bookings` and `POST /payments/execute` (docs/API.md).

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::System;

impl System {
    async fn post_keyed(&self, path: &str, user: &str, key: &str, body: &Value) -> (StatusCode, Value, Option<String>) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.token(user))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let replayed = response.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_owned());
        (status, response.json().await.unwrap(), replayed)
    }
}

fn booking(user: &str, seat: &str) -> Value {
    json!({"performanceId": "perf_001", "seatIds": [seat], "userId": user})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_and_body_replays_the_first_booking_and_books_once() {
    let sys = System::start().await;
    let first = sys.post_keyed("/bookings", "idem_a", "key-1", &booking("idem_a", "H1")).await;
    assert_eq!((first.0, first.2.as_deref()), (StatusCode::CREATED, None));
    let again = sys.post_keyed("/bookings", "idem_a", "key-1", &booking("idem_a", "H1")).await;
    assert_eq!(again.0, StatusCode::CREATED);
    assert_eq!(again.1, first.1, "byte-identical body");
    assert_eq!(again.2.as_deref(), Some("true"));
    let booking_id = first.1["bookingId"].as_str().unwrap();
    sys.wait_listed("idem_a", booking_id, "pending").await;
    assert_eq!(sys.get("/bookings/my", "idem_a").await.body.as_array().unwrap().len(), 1);

    let other_body = sys.post_keyed("/bookings", "idem_a", "key-1", &booking("idem_a", "H2")).await;
    assert_eq!(other_body.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other_body.1["error"], "Idempotency key reused with a different request.");

    // Keys are scoped per caller: another user's key-1 is a new request.
    let other_user = sys.post_keyed("/bookings", "idem_b", "key-1", &booking("idem_b", "H3")).await;
    assert_eq!((other_user.0, other_user.2), (StatusCode::CREATED, None));

    let bad_key = sys.post_keyed("/bookings", "idem_a", "has space", &booking("idem_a", "H4")).await;
    assert_eq!(bad_key.0, StatusCode::BAD_REQUEST);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_is_replayed_as_refused() {
    let sys = System::start().await;
    sys.book("idem_c", "perf_001", &["H5"]).await;
    let taken = sys.post_keyed("/bookings", "idem_d", "k", &booking("idem_d", "H5")).await;
    assert_eq!((taken.0, taken.1["error"].as_str()), (StatusCode::BAD_REQUEST, Some("Seat H5 is not available.")));
    let replay = sys.post_keyed("/bookings", "idem_d", "k", &booking("idem_d", "H5")).await;
    assert_eq!((replay.0, &replay.1, replay.2.as_deref()), (StatusCode::BAD_REQUEST, &taken.1, Some("true")));
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_execute_once() {
    let sys = System::start().await;
    let body = booking("idem_e", "H6");
    let (a, b) = tokio::join!(
        sys.post_keyed("/bookings", "idem_e", "same", &body),
        sys.post_keyed("/bookings", "idem_e", "same", &body)
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert!(
        statuses == [StatusCode::CREATED, StatusCode::CREATED]
            || statuses == [StatusCode::CREATED, StatusCode::CONFLICT],
        "{statuses:?}"
    );
    for reply in [&a, &b] {
        if reply.0 == StatusCode::CONFLICT {
            assert_eq!(reply.1["error"], "A request with this idempotency key is in progress.");
        }
    }
    if a.0 == b.0 {
        assert_eq!(a.1, b.1, "the second is a replay of the first");
    }
    let created = if a.0 == StatusCode::CREATED { &a.1 } else { &b.1 };
    sys.wait_listed("idem_e", created["bookingId"].as_str().unwrap(), "pending").await;
    assert_eq!(sys.get("/bookings/my", "idem_e").await.body.as_array().unwrap().len(), 1);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_payment_charges_once() {
    let sys = System::start().await;
    let (booking_id, intent) = sys.book("idem_f", "perf_002", &["A2"]).await;
    let declined = json!({"paymentIntentId": intent, "paymentMethodToken": "tok_chargeDeclined", "cvv": "123"});
    let first = sys.post_keyed("/payments/execute", "idem_f", "pay-1", &declined).await;
    assert_eq!(first.0, StatusCode::BAD_REQUEST);
    let replay = sys.post_keyed("/payments/execute", "idem_f", "pay-1", &declined).await;
    assert_eq!((replay.0, &replay.1, replay.2.as_deref()), (StatusCode::BAD_REQUEST, &first.1, Some("true")));

    let pay = json!({"paymentIntentId": intent, "paymentMethodToken": "tok_visa", "cvv": "123"});
    let paid = sys.post_keyed("/payments/execute", "idem_f", "pay-2", &pay).await;
    assert_eq!(paid.0, StatusCode::OK, "{}", paid.1);
    let again = sys.post_keyed("/payments/execute", "idem_f", "pay-2", &pay).await;
    assert_eq!((again.0, &again.1, again.2.as_deref()), (StatusCode::OK, &paid.1, Some("true")));
    sys.wait_status("idem_f", &booking_id, "confirmed").await;
    // One capture in the ledger, one decline counted.
    let pool = runtime::db::connect_service_db(
        &testkit::server_url(),
        &sys.payment_db,
        2,
        &payment_service::store::MIGRATIONS,
    )
    .await
    .unwrap();
    let captures: i64 = sqlx::query_scalar("select count(*) from ledger_entries where transaction_id like '%:capture'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(captures, 2, "one debit and one credit");
    let attempts: i64 =
        sqlx::query_scalar("select count(*) from events where event_type in ('PaymentSucceeded', 'PaymentFailed')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(attempts, 2);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_lease_of_an_unsettled_charge_keeps_its_key_and_gets_the_reconcilers_outcome() {
    use payment_service::{
        domain::intent::{attempt_key, PaymentCommand},
        psp::{Charge, Cvv, Psp, SimulatedPsp},
        store::effects::IntentEffects,
        use_cases::{execute_fingerprint, EXECUTE_OPERATION},
    };
    use runtime::idempotency;
    use runtime::idempotency::Begin;
    use std::time::Duration;

    let sys = System::start_with(&["--payment-reconcile-after-secs=3"]).await;
    let user = "lease_payer";
    let (booking, intent) = sys.book(user, "perf_001", &["H8"]).await;
    sys.wait_intent(user, &intent).await;
    let pool = sys.payment_pool().await;
    // A payment that claimed its key, recorded its attempt and was charged by
    // the PSP, then died before recording the answer.
    let key = "pay-after-the-lease";
    let fingerprint = execute_fingerprint(&intent, "tok_visa");
    let lease = Duration::from_millis(500);
    let begun = idempotency::begin(&pool, user, EXECUTE_OPERATION, key, &fingerprint, lease).await.unwrap();
    assert!(matches!(begun, Begin::Proceed(_)));
    let mut tx = pool.begin().await.unwrap();
    let request = PaymentCommand::RequestCharge {
        user_id: user.to_owned(),
        now: chrono::Utc::now(),
        safety_margin: chrono::Duration::seconds(5),
        max_attempts: 3,
        payment_method_token: "tok_visa".to_owned(),
        idempotency_key: Some(key.to_owned()),
    };
    let metadata = kernel::event_store::EventMetadata::default();
    kernel::aggregate::execute_in(&mut tx, &intent, &metadata, &IntentEffects, kernel::aggregate::just(request))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let psp = SimulatedPsp::new(pool.clone(), Duration::from_secs(3), Duration::ZERO, 0);
    let charge = Charge {
        idempotency_key: attempt_key(&intent, 1),
        payment_intent_id: intent.clone(),
        amount: 30000,
        currency: "KRW".to_owned(),
        token: "tok_visa".to_owned(),
        cvv: Cvv::parse("123").unwrap(),
    };
    psp.charge(&charge).await.unwrap();
    tokio::time::sleep(lease + Duration::from_millis(200)).await;

    // The client retries with its key after the lease: the charge is being
    // confirmed, and the key stays claimed for the reconciler's answer.
    let body = json!({"paymentIntentId": intent, "paymentMethodToken": "tok_visa", "cvv": "123"});
    let retry = sys.post_keyed("/payments/execute", user, key, &body).await;
    assert_eq!(retry.0, StatusCode::SERVICE_UNAVAILABLE, "{}", retry.1);
    let state: String = sqlx::query_scalar("select state from idempotency_keys where idempotency_key = $1")
        .bind(key)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "in_flight", "the key was not given up");

    // The reconciler records the PSP's answer under the key (until then a
    // retry hears "in progress"): the retry gets it, never "already processed".
    let replayed = testkit::eventually(Duration::from_secs(30), || async {
        let reply = sys.post_keyed("/payments/execute", user, key, &body).await;
        let waiting = reply.0 == StatusCode::SERVICE_UNAVAILABLE
            || reply.1["error"] == "A request with this idempotency key is in progress.";
        (!waiting).then_some(reply)
    })
    .await
    .unwrap();
    assert_eq!((replayed.0, replayed.2.as_deref()), (StatusCode::OK, Some("true")), "{}", replayed.1);
    assert_eq!(replayed.1["status"], "SUCCESS");
    sys.wait_status(user, &booking, "confirmed").await;
    let charges: i64 = sqlx::query_scalar("select count(*) from psp.charges where payment_intent_id = $1")
        .bind(&intent)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(charges, 1, "one charge");
    sys.stop().await;
}
