//! The on-sale waiting room over HTTP: set-up and its rules, the seeded
//! shuffle of the pre-queue, admission in position order paced by
//! `maxActive`, admissions that cannot be forged or shared, slots that come
//! back when a booking ends, sold out, closing, and the place stream.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{Reply, System};

async fn register(sys: &System, id: &str, seats: u32) {
    let body = json!({"performanceId": id, "title": "On sale", "rows": [{"row": "A", "seats": seats, "price": 10000}]});
    let reply = sys.call(Method::POST, "/performances", Some(&sys.admin_token()), Some(body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

async fn set_up(sys: &System, id: &str, opens_in_ms: i64, extra: Value) -> Reply {
    let opens_at = (chrono::Utc::now() + chrono::Duration::milliseconds(opens_in_ms))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut body = json!({"opensAt": opens_at});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    sys.call(Method::PUT, &format!("/performances/{id}/onsale"), Some(&sys.admin_token()), Some(body)).await
}

async fn join(sys: &System, id: &str, user: &str) -> Value {
    let reply = sys.call(Method::POST, &format!("/performances/{id}/queue"), Some(&sys.token(user)), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

async fn place(sys: &System, id: &str, user: &str) -> Value {
    sys.get(&format!("/performances/{id}/queue"), user).await.body
}

/// `users` join at once over one HTTP/2 connection, as through a load
/// balancer in front; each answer's status and body, in `users`' order.
async fn join_at_once(sys: &System, id: &str, users: &[String]) -> Vec<(StatusCode, Value)> {
    let balancer = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let joins = users.iter().map(|user| {
        let (client, url, token) = (balancer.clone(), format!("{}/performances/{id}/queue", sys.base), sys.token(user));
        async move {
            let response = client.post(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(response.version(), reqwest::Version::HTTP_2);
            (response.status(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    });
    futures::future::join_all(joins).await
}

/// Waits until `user`'s place is in `state`.
async fn wait_state(sys: &System, id: &str, user: &str, state: &str) -> Value {
    let seen = testkit::eventually(Duration::from_secs(10), || async {
        let body = place(sys, id, user).await;
        (body["state"] == state).then_some(body)
    })
    .await;
    match seen {
        Some(body) => body,
        None => panic!("{user} never became {state}: {}", place(sys, id, user).await),
    }
}

async fn book(sys: &System, id: &str, user: &str, seat: &str, admission: Option<&str>) -> (StatusCode, Value) {
    let mut request = sys
        .client
        .post(format!("{}/bookings", sys.base))
        .bearer_auth(sys.token(user))
        .json(&json!({"performanceId": id, "seatIds": [seat], "userId": user}));
    if let Some(admission) = admission {
        request = request.header("admission", admission);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_sale_is_set_up_by_an_admin_with_the_contracts_defaults_and_names_a_bad_field() {
    let sys = System::start().await;
    register(&sys, "perf_wr_setup", 5).await;
    let opens_at = json!({"opensAt": "2030-01-01T10:00:00Z"});
    let path = "/performances/perf_wr_setup/onsale";
    let user = sys.call(Method::PUT, path, Some(&sys.token("wr_user")), Some(opens_at.clone())).await;
    assert_eq!((user.status, user.body["error"].as_str()), (StatusCode::FORBIDDEN, Some("Admin role required.")));
    let unknown =
        sys.call(Method::PUT, "/performances/perf_nope/onsale", Some(&sys.admin_token()), Some(opens_at)).await;
    assert_eq!(
        (unknown.status, unknown.body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("Performance perf_nope not found."))
    );
    let missing = sys.call(Method::PUT, path, Some(&sys.admin_token()), Some(json!({}))).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    let bad = set_up(&sys, "perf_wr_setup", 60_000, json!({"maxActive": 0})).await;
    assert_eq!(
        (bad.status, bad.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("maxActive must be an integer from 1 to 100000."))
    );

    let stored = set_up(&sys, "perf_wr_setup", 60_000, json!({})).await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.body);
    for (field, default) in
        [("maxActive", 200), ("admitPerMinute", 1200), ("admissionSeconds", 600), ("placeKeepSeconds", 300)]
    {
        assert_eq!(stored.body[field], default, "{field}");
    }
    let read = sys.get(path, "wr_user").await;
    assert_eq!(
        (read.status, read.body["waiting"].as_u64(), read.body["soldOut"].as_bool()),
        (StatusCode::OK, Some(0), Some(false))
    );

    let none = sys.call(Method::POST, "/performances/perf_001/queue", Some(&sys.token("wr_user")), None).await;
    assert_eq!(
        (none.status, none.body["error"].as_str()),
        (StatusCode::CONFLICT, Some("This performance has no waiting room."))
    );
    let before = sys.get("/performances/perf_wr_setup/queue", "wr_user").await;
    assert_eq!(
        (before.status, before.body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("You are not in the queue for this performance."))
    );
    // Before the opening: queued, and no booking at all.
    let queued = join(&sys, "perf_wr_setup", "wr_user").await;
    assert_eq!((queued["state"].as_str(), &queued["position"]), (Some("queued"), &Value::Null));
    let (status, body) = book(&sys, "perf_wr_setup", "wr_user", "A1", None).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("This performance is not on sale yet.")));
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_queue_is_shuffled_by_a_kept_seed_and_admission_follows_positions_paced_by_max_active() {
    let sys = System::start().await;
    let id = "perf_wr_order";
    register(&sys, id, 20).await;
    assert_eq!(set_up(&sys, id, 1_500, json!({"maxActive": 2})).await.status, StatusCode::OK);
    let users: Vec<String> = (0..6).map(|n| format!("wr_fan{n}")).collect();
    for user in &users {
        assert_eq!(join(&sys, id, user).await["state"], "queued");
    }
    // At the opening: positions 1..6, in the order the kept seed gives.
    let positions: Vec<(String, i64)> = {
        let mut found = Vec::new();
        for user in &users {
            let body = testkit::eventually(Duration::from_secs(10), || async {
                let body = place(&sys, id, user).await;
                body["position"].as_i64().map(|p| (user.clone(), p))
            })
            .await
            .expect("a position after the opening");
            found.push(body);
        }
        found.sort_by_key(|(_, p)| *p);
        found
    };
    assert_eq!(positions.iter().map(|(_, p)| *p).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    let pool = sys.booking_pool().await;
    let seed: i64 = sqlx::query_scalar("select seed from onsales where performance_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    let expected = booking_service::domain::waiting_room::shuffled(seed as u64, users.iter().map(String::as_str));
    assert_eq!(positions.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(), expected, "auditable order");

    let (first, second, third) = (&positions[0].0, &positions[1].0, &positions[2].0);
    let admitted = wait_state(&sys, id, first, "admitted").await;
    wait_state(&sys, id, second, "admitted").await;
    let waiting = place(&sys, id, third).await;
    assert_eq!((waiting["state"].as_str(), waiting["ahead"].as_i64()), (Some("waiting"), Some(0)), "maxActive 2");
    assert!(waiting["estimatedWaitSeconds"].is_u64(), "{waiting}");
    let token = admitted["admission"].as_str().unwrap().to_owned();
    assert!(admitted["admissionExpiresAt"].is_string());

    // No admission, another user's, another performance's: refused.
    let (status, body) = book(&sys, id, third, "A3", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("Join the queue for this performance first."))
    );
    let (status, body) = book(&sys, id, third, "A3", Some(&token)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("Your admission is not valid for this booking."))
    );
    let (status, _) = book(&sys, "perf_001", first, "J20", Some(&token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an admission is for its performance only");
    let (status, _) = book(&sys, id, first, "A1", Some("forged.token.here")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The admitted one books; joining again keeps everyone's place.
    let (status, created) = book(&sys, id, first, "A1", Some(&token)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(join(&sys, id, third).await["position"], positions[2].1);
    // Their booking ends: the slot goes to the next position.
    let booking = created["bookingId"].as_str().unwrap();
    assert_eq!(sys.delete(&format!("/bookings/{booking}"), first).await.status, StatusCode::OK);
    wait_state(&sys, id, third, "admitted").await;
    assert_eq!(place(&sys, id, &positions[3].0).await["state"], "waiting", "strict order, maxActive 2");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_people_are_told_sold_out_only_when_nothing_is_free_or_held_and_closing_reopens_the_sale() {
    let sys = System::start().await;
    let id = "perf_wr_sold";
    register(&sys, id, 1).await;
    assert_eq!(set_up(&sys, id, 0, json!({"maxActive": 1})).await.status, StatusCode::OK);
    join(&sys, id, "wr_buyer").await;
    let admitted = wait_state(&sys, id, "wr_buyer", "admitted").await;
    join(&sys, id, "wr_late").await;
    let token = admitted["admission"].as_str().unwrap();
    let (status, created) = book(&sys, id, "wr_buyer", "A1", Some(token)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    // Held, not sold: nobody is told sold out.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(place(&sys, id, "wr_late").await["state"], "waiting");
    let intent = created["paymentIntentId"].as_str().unwrap();
    sys.wait_intent("wr_buyer", intent).await;
    assert_eq!(sys.pay("wr_buyer", intent, "tok_visa").await.status, StatusCode::OK);
    // Sold: the one waiting learns it within 2 s.
    let sold_at = std::time::Instant::now();
    wait_state(&sys, id, "wr_late", "sold_out").await;
    assert!(sold_at.elapsed() < Duration::from_secs(2), "told after {:?}", sold_at.elapsed());
    let onsale = sys.get(&format!("/performances/{id}/onsale"), "wr_late").await;
    assert_eq!(onsale.body["soldOut"], true);

    // Closed: everyone is told so, and bookings need no admission again.
    let closed = sys.call(Method::DELETE, &format!("/performances/{id}/onsale"), Some(&sys.admin_token()), None).await;
    assert_eq!(closed.status, StatusCode::OK);
    assert_eq!(place(&sys, id, "wr_late").await["state"], "closed");
    let (status, body) = book(&sys, id, "wr_late", "A1", None).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("Seat A1 is not available.")));
    sys.stop().await;
}

/// `user`'s place stream, opened (200).
async fn open_stream(sys: &System, id: &str, user: &str) -> reqwest::Response {
    let response = sys
        .client
        .get(format!("{}/performances/{id}/queue/stream", sys.base))
        .bearer_auth(sys.token(user))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_place_stream_sends_each_change_and_ends_with_the_admission() {
    let sys = System::start().await;
    let id = "perf_wr_stream";
    register(&sys, id, 5).await;
    assert_eq!(set_up(&sys, id, 1_500, json!({})).await.status, StatusCode::OK);
    join(&sys, id, "wr_streamer").await;
    let response = open_stream(&sys, id, "wr_streamer").await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = tokio::time::timeout(Duration::from_secs(10), response.text()).await.expect("the stream ended").unwrap();
    let states: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<Value>(d).unwrap()["state"].as_str().unwrap().to_owned())
        .collect();
    assert!(text.contains("event: place"), "{text}");
    assert_eq!(states.first().map(String::as_str), Some("queued"), "{states:?}");
    assert_eq!(states.last().map(String::as_str), Some("admitted"), "{states:?}");
    let stranger = sys.get(&format!("/performances/{id}/queue/stream"), "wr_nobody").await;
    assert_eq!(stranger.status, StatusCode::NOT_FOUND);
    sys.stop().await;
}

/// The sum of the series of counter `name` in the system's `/metrics` that
/// carry every one of `labels` (`key="value"`).
async fn counter(sys: &System, name: &str, labels: &[String]) -> u64 {
    let text = sys.client.get(format!("{}/metrics", sys.metrics)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|label| l.contains(label.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `waiting_room_looks_total` of a performance, by where looks were served from.
async fn looks(sys: &System, id: &str, from: &str) -> u64 {
    counter(sys, "waiting_room_looks_total", &[format!("performance=\"{id}\""), format!("served_from=\"{from}\"")])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_people_reading_their_place_cost_no_database_query_per_look() {
    let sys = System::start().await;
    let id = "perf_wr_cheap";
    register(&sys, id, 10).await;
    assert_eq!(set_up(&sys, id, 0, json!({"maxActive": 1, "admitPerMinute": 1})).await.status, StatusCode::OK);
    let users: Vec<String> = (0..40).map(|n| format!("wr_reader{n}")).collect();
    for user in &users {
        join(&sys, id, user).await;
    }
    // Once every place has a position and the copy has caught up…
    for user in &users {
        let seen = testkit::eventually(Duration::from_secs(10), || async {
            let body = place(&sys, id, user).await;
            body["position"].as_i64()
        })
        .await;
        assert!(seen.is_some(), "{user} got no position");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (database, memory) = (looks(&sys, id, "database").await, looks(&sys, id, "memory").await);
    // …200 looks by 40 people are all served from memory, each one right.
    for _ in 0..5 {
        for user in &users {
            let body = place(&sys, id, user).await;
            assert!(matches!(body["state"].as_str(), Some("waiting" | "admitted")), "{body}");
            if body["state"] == "waiting" {
                assert_eq!(body["ahead"].as_i64(), body["position"].as_i64().map(|p| p - 2), "{body}");
            }
        }
    }
    assert_eq!(looks(&sys, id, "database").await, database, "a look reached the database");
    assert_eq!(looks(&sys, id, "memory").await, memory + 200);
    sys.stop().await;
}

/// A one-seat performance sold through its queue: set up, join, admitted,
/// booked with the admission, paid (other tests use it to see the room work).
pub(crate) async fn sell_out_one_seat_through_the_queue(sys: &System, id: &str, user: &str) {
    register(sys, id, 1).await;
    assert_eq!(set_up(sys, id, 0, json!({"maxActive": 1})).await.status, StatusCode::OK);
    join(sys, id, user).await;
    let admitted = wait_state(sys, id, user, "admitted").await;
    let (status, created) = book(sys, id, user, "A1", admitted["admission"].as_str()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let intent = created["paymentIntentId"].as_str().unwrap();
    sys.wait_intent(user, intent).await;
    assert_eq!(sys.pay(user, intent, "tok_visa").await.status, StatusCode::OK);
    let sold_out = testkit::eventually(Duration::from_secs(10), || async {
        let onsale = sys.get(&format!("/performances/{id}/onsale"), user).await;
        (onsale.body["soldOut"] == true).then_some(())
    })
    .await;
    assert!(sold_out.is_some(), "{id} never sold out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_a_buyer_waits_their_turn_then_books_and_pays() {
    use crate::live::{open_browser, wait_for, ChromeDriver};
    let Some(driver) = ChromeDriver::start().await else { return };
    let sys = System::start_dev().await;
    let id = "perf_wr_page";
    register(&sys, id, 5).await;
    assert_eq!(set_up(&sys, id, 0, json!({"maxActive": 1})).await.status, StatusCode::OK);
    // Someone is admitted first and holds the only slot; two more wait.
    join(&sys, id, "wr_first").await;
    wait_state(&sys, id, "wr_first", "admitted").await;
    for user in ["wr_second", "wr_third"] {
        join(&sys, id, user).await;
        wait_state(&sys, id, user, "waiting").await;
    }

    let browser = open_browser(&driver).await;
    browser.goto(&format!("{}/", sys.base)).await.unwrap();
    let name = browser.find(fantoccini::Locator::Id("user")).await.unwrap();
    name.clear().await.unwrap();
    name.send_keys("web_queuer").await.unwrap();
    browser.find(fantoccini::Locator::Id("signin")).await.unwrap().click().await.unwrap();
    wait_for(&browser, "document.getElementById('who').textContent.includes('web_queuer')", "the signed-in user").await;
    browser.execute(&format!("document.getElementById('performance').value = '{id}';"), vec![]).await.unwrap();
    browser.find(fantoccini::Locator::Id("open")).await.unwrap().click().await.unwrap();
    wait_for(&browser, "!document.getElementById('queue').hidden", "the waiting room").await;
    wait_for(&browser, "document.getElementById('queue-position').textContent === 'Position 4'", "position 4").await;
    wait_for(&browser, "document.getElementById('queue-ahead').textContent.startsWith('2 ahead')", "2 ahead").await;
    wait_for(&browser, "document.getElementById('queue-state').textContent.includes('waiting')", "waiting").await;
    assert!(
        browser.execute("return document.querySelectorAll('button.seat').length;", vec![]).await.unwrap() == json!(0),
        "no seat map while waiting"
    );
    let png = browser.screenshot().await.unwrap();
    std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("waiting-room.png"), &png).unwrap();

    // The admin lets more in at once: the page's buyer is admitted and buys.
    assert_eq!(set_up(&sys, id, 0, json!({"maxActive": 10})).await.status, StatusCode::OK);
    wait_for(&browser, "document.getElementById('queue-state').textContent.includes('your turn')", "the admission")
        .await;
    let seat = "document.querySelector('button.seat[data-seat=\"A2\"]')";
    wait_for(&browser, &format!("{seat} && {seat}.dataset.state === 'available'"), "seat A2, free").await;
    browser.execute(&format!("{seat}.click();"), vec![]).await.unwrap();
    browser.find(fantoccini::Locator::Id("book")).await.unwrap().click().await.unwrap();
    wait_for(&browser, "!document.getElementById('payment').hidden", "the payment form").await;
    browser.find(fantoccini::Locator::Id("pay")).await.unwrap().click().await.unwrap();
    wait_for(&browser, &format!("{seat}.dataset.state === 'booked'"), "A2 sold").await;
    browser.close().await.unwrap();
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_admission_is_refused_and_held_seats_coming_back_resume_admission_in_order() {
    let sys = System::start().await;
    let id = "perf_wr_back";
    register(&sys, id, 2).await;
    assert_eq!(set_up(&sys, id, 0, json!({"maxActive": 2})).await.status, StatusCode::OK);
    for user in ["wr_a", "wr_b"] {
        join(&sys, id, user).await;
        wait_state(&sys, id, user, "admitted").await;
    }
    join(&sys, id, "wr_c").await;
    let a = place(&sys, id, "wr_a").await;
    let b = place(&sys, id, "wr_b").await;
    let (status, held_a) = book(&sys, id, "wr_a", "A1", a["admission"].as_str()).await;
    assert_eq!(status, StatusCode::CREATED, "{held_a}");
    let (status, _) = book(&sys, id, "wr_b", "A2", b["admission"].as_str()).await;
    assert_eq!(status, StatusCode::CREATED);
    // Every seat held, none sold: the one waiting is not told sold out.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(place(&sys, id, "wr_c").await["state"], "waiting");
    // A held seat comes back: admission resumes, in order.
    let booking = held_a["bookingId"].as_str().unwrap();
    assert_eq!(sys.delete(&format!("/bookings/{booking}"), "wr_a").await.status, StatusCode::OK);
    let c = wait_state(&sys, id, "wr_c", "admitted").await;

    // An admission that ran out is refused, whatever its token says.
    let pool = sys.booking_pool().await;
    sqlx::query("update queue_places set admission_expires_at = now() - interval '1 second' where user_id = 'wr_c'")
        .execute(&pool)
        .await
        .unwrap();
    let (status, body) = book(&sys, id, "wr_c", "A1", c["admission"].as_str()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("Your admission is not valid for this booking."))
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiners_racing_the_opening_each_get_one_place_and_nobody_gets_a_5xx() {
    let sys = System::start().await;
    let id = "perf_wr_race";
    register(&sys, id, 10).await;
    assert_eq!(set_up(&sys, id, 300, json!({"maxActive": 1})).await.status, StatusCode::OK);
    let users: Vec<String> = (0..60).map(|n| format!("wr_racer{n}")).collect();
    let joins = users.iter().enumerate().map(|(n, user)| {
        let (client, url, token) =
            (sys.client.clone(), format!("{}/performances/{id}/queue", sys.base), sys.token(user));
        async move {
            // Spread over the opening: some before, some after.
            tokio::time::sleep(Duration::from_millis(10 * n as u64)).await;
            let response = client.post(url).bearer_auth(token).send().await.unwrap();
            response.status()
        }
    });
    let statuses = futures::future::join_all(joins).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    let mut positions = Vec::new();
    for user in &users {
        let seen =
            testkit::eventually(Duration::from_secs(10), || async { place(&sys, id, user).await["position"].as_i64() })
                .await;
        positions.push(seen.unwrap_or_else(|| panic!("{user} has no position")));
    }
    positions.sort_unstable();
    assert_eq!(positions, (1..=60).collect::<Vec<i64>>(), "every joiner one place, no two the same");
    sys.stop().await;
}

/// `waiting_room_join_batch_size` of a performance: batches and people.
async fn join_batches(sys: &System, id: &str) -> (u64, u64) {
    let text = sys.client.get(format!("{}/metrics", sys.metrics)).send().await.unwrap().text().await.unwrap();
    let read = |suffix: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("waiting_room_join_batch_size_{suffix}{{")))
            .filter(|l| l.contains(&format!("performance=\"{id}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    (read("count"), read("sum"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_joining_at_once_over_one_http2_connection_are_written_in_batches_each_with_a_place_of_their_own() {
    let sys = System::start().await;
    let id = "perf_wr_batch";
    register(&sys, id, 10).await;
    assert_eq!(set_up(&sys, id, 0, json!({"maxActive": 1})).await.status, StatusCode::OK);
    // Once the sale is open, joiners take the back in order of arrival.
    join(&sys, id, "wr_batch_first").await;
    wait_state(&sys, id, "wr_batch_first", "admitted").await;
    // A load balancer in front carries everyone over one HTTP/2 connection.
    let users: Vec<String> = (0..200).map(|n| format!("wr_batch{n}")).collect();
    let replies = join_at_once(&sys, id, &users).await;
    let mut positions: Vec<i64> = replies
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::OK, "{body}");
            assert_eq!(body["state"], "waiting", "{body}");
            assert_eq!(body["ahead"].as_i64(), body["position"].as_i64().map(|p| p - 2), "{body}");
            body["position"].as_i64().unwrap()
        })
        .collect();
    positions.sort_unstable();
    assert_eq!(positions, (2..=201).collect::<Vec<i64>>(), "every joiner one place, no two the same");
    // Joining again is idempotent, in a batch or alone.
    let again = join(&sys, id, &users[7]).await;
    assert_eq!(again["position"], replies[7].1["position"], "{again}");
    let (batches, people) = join_batches(&sys, id).await;
    assert_eq!(people, 202, "every join written once");
    assert!(batches < 150, "200 joins at once took {batches} transactions");
    sys.stop().await;
}

/// Calls the booking-service answered, by gRPC method (the whole test
/// binary's systems share one metrics registry).
async fn grpc_calls(sys: &System, method: &str) -> u64 {
    let method = format!("method=\"/ticketing.booking.v1.BookingService/{method}\"");
    counter(sys, "grpc_requests_total", &[method, "code=\"0\"".to_owned()]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_place_streams_of_a_performance_ride_one_booking_service_call_and_each_hears_its_own_place() {
    let sys = System::start().await;
    let id = "perf_wr_many_streams";
    register(&sys, id, 30).await;
    assert_eq!(set_up(&sys, id, 1_500, json!({"maxActive": 100})).await.status, StatusCode::OK);
    let users: Vec<String> = (0..30).map(|n| format!("wr_many_{n}")).collect();
    for user in &users {
        join(&sys, id, user).await;
    }
    let per_person_before = grpc_calls(&sys, "StreamQueuePlace").await;
    let streams = users.iter().map(|user| async {
        let text = tokio::time::timeout(Duration::from_secs(20), open_stream(&sys, id, user).await.text())
            .await
            .expect("the stream ended")
            .unwrap();
        let places: Vec<Value> =
            text.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap()).collect();
        (user.clone(), places)
    });
    for (user, places) in futures::future::join_all(streams).await {
        let states: Vec<&str> = places.iter().map(|p| p["state"].as_str().unwrap()).collect();
        assert_eq!(states.first(), Some(&"queued"), "{user}: {states:?}");
        assert_eq!(states.last(), Some(&"admitted"), "{user}: {states:?}");
        // Each stream carries its own person's admission.
        let admission = places.last().unwrap()["admission"].as_str().unwrap().to_owned();
        let position = places.last().unwrap()["position"].as_i64().unwrap();
        assert_eq!(place(&sys, id, &user).await["position"].as_i64(), Some(position), "{user}");
        let (status, body) = book(&sys, id, &user, &format!("A{position}"), Some(&admission)).await;
        assert_eq!(status, StatusCode::CREATED, "{user}: {body}");
    }
    // No stream used a call of its own.
    assert_eq!(grpc_calls(&sys, "StreamQueuePlace").await, per_person_before);
    assert!(grpc_calls(&sys, "WatchQueuePlaces").await >= 1);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_place_stream_hears_the_opening_at_once_rather_than_at_its_slow_pace() {
    let sys = System::start().await;
    let id = "perf_wr_opening";
    register(&sys, id, 5).await;
    assert_eq!(set_up(&sys, id, 600, json!({})).await.status, StatusCode::OK);
    join(&sys, id, "wr_opening").await;
    let response = open_stream(&sys, id, "wr_opening").await;
    let opened = std::time::Instant::now();
    let mut body = response.bytes_stream();
    let mut text = String::new();
    // A queued place is looked at every 3 s; the opening wakes it.
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("\"state\":\"waiting\"") || text.contains("\"state\":\"admitted\"") {
                return opened.elapsed();
            }
        }
        panic!("the stream ended queued: {text}");
    })
    .await
    .expect("the opening never reached the stream");
    assert!(heard < Duration::from_millis(2_500), "the opening reached the stream after {heard:?}");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_grew_from_nothing_has_its_planner_statistics_taken_again() {
    let sys = System::start().await;
    let id = "perf_wr_statistics";
    register(&sys, id, 10).await;
    assert_eq!(set_up(&sys, id, 0, json!({"maxActive": 1})).await.status, StatusCode::OK);
    let pool = sys.booking_pool().await;
    let analyzed = || async {
        let at: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "select greatest(last_analyze, last_autoanalyze) from pg_stat_user_tables \
              where relid = 'queue_places'::regclass",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        at
    };
    let before = analyzed().await;
    // 1,200 people join at once over one HTTP/2 connection, as through a
    // load balancer: more places than the planner has ever seen here.
    let users: Vec<String> = (0..1_200).map(|n| format!("wr_stat{n}")).collect();
    let statuses: Vec<StatusCode> = join_at_once(&sys, id, &users).await.into_iter().map(|(s, _)| s).collect();
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    let retaken =
        testkit::eventually(Duration::from_secs(15), || async { analyzed().await.filter(|at| Some(*at) > before) })
            .await;
    assert!(retaken.is_some(), "the planner's statistics of 1,200 new places were never taken");
    // Taken in the middle of the rush, they are taken again once it is over.
    let estimate = || async {
        let places: f32 = sqlx::query_scalar("select reltuples from pg_class where oid = 'queue_places'::regclass")
            .fetch_one(&pool)
            .await
            .unwrap();
        places
    };
    let counted = testkit::eventually(Duration::from_secs(15), || async {
        let places = estimate().await;
        (places >= 1_000.0).then_some(places)
    })
    .await;
    assert!(counted.is_some(), "the planner estimates {} places", estimate().await);
    sys.stop().await;
}

/// A gauge of the booking-service's metrics for one performance.
async fn gauge(sys: &System, name: &str, id: &str) -> Option<f64> {
    let text = sys.client.get(format!("{}/metrics", sys.metrics)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("performance=\"{id}\"")))
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_how_many_wait_how_many_shop_and_how_many_watch_their_place() {
    let sys = System::start().await;
    let id = "perf_wr_gauges";
    register(&sys, id, 10).await;
    assert_eq!(set_up(&sys, id, 0, json!({"maxActive": 1})).await.status, StatusCode::OK);
    for n in 0..5 {
        join(&sys, id, &format!("wr_gauge{n}")).await;
    }
    let seen = testkit::eventually(Duration::from_secs(10), || async {
        let figures = (gauge(&sys, "waiting_room_waiting", id).await?, gauge(&sys, "waiting_room_active", id).await?);
        (figures == (4.0, 1.0)).then_some(figures)
    })
    .await;
    assert!(
        seen.is_some(),
        "waiting and active were {:?} and {:?}, not 4 and 1",
        gauge(&sys, "waiting_room_waiting", id).await,
        gauge(&sys, "waiting_room_active", id).await
    );
    // The gateway counts the place streams it carries, and its calls.
    let mut streams = Vec::new();
    for n in 0..5 {
        streams.push(open_stream(&sys, id, &format!("wr_gauge{n}")).await);
    }
    let text = sys.client.get(format!("{}/metrics", sys.metrics)).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))?.parse::<f64>().ok()).unwrap_or_default()
    };
    // Four of them wait (other tests' streams may be open too).
    assert!(value("queue_streams_open") >= 4.0, "{text}");
    assert!(value("queue_stream_calls") >= 1.0, "{text}");
    drop(streams);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_before_the_opening_writes_its_place_once_and_joining_again_finds_it() {
    let sys = System::start().await;
    let id = "perf_wr_once";
    register(&sys, id, 10).await;
    assert_eq!(set_up(&sys, id, 3_600_000, json!({})).await.status, StatusCode::OK);
    let users: Vec<String> = (0..300).map(|n| format!("wr_once{n}")).collect();
    for (status, body) in join_at_once(&sys, id, &users).await {
        assert_eq!((status, body["state"].as_str()), (StatusCode::OK, Some("queued")), "{body}");
    }
    // Each place was inserted and not written again (an update per new
    // place doubled the writes of an opening rush).
    let pool = sys.booking_pool().await;
    let written = testkit::eventually(Duration::from_secs(15), || async {
        let (inserted, updated): (i64, i64) = sqlx::query_as(
            "select n_tup_ins, n_tup_upd from pg_stat_user_tables where relid = 'queue_places'::regclass",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (inserted >= 300).then_some(updated)
    })
    .await;
    assert_eq!(written, Some(0), "rows updated by joining");
    // Joining again from another device finds the same place.
    assert_eq!(join(&sys, id, "wr_once7").await["state"], "queued");
    assert_eq!(place(&sys, id, "wr_once7").await["state"], "queued");
    sys.stop().await;
}
