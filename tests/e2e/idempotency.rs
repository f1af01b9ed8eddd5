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
    let pool = shared::db::connect_service_db(
        &shared::testkit::server_url(),
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
