//! The edge sheds abuse before it reaches the services: load shedding and
//! request timeouts, header and body read timeouts (a trickling client holds
//! no slot), per-user rate limits on the writes, current seat maps whose
//! loads concurrent readers share, bounded metric labels, and a wait for a
//! not-yet-created payment intent that does not poll per request.

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::System;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_in_flight_limit_requests_wait_in_line_then_are_shed_with_503_and_retry_after() {
    let sys =
        System::start_with(&["--gateway-max-in-flight=1", "--gateway-queue-wait-ms=3000", "--mock-pg-timeout-ms=5000"])
            .await;
    let user = "edge_shed";
    let (_booking, intent) = sys.book(user, "perf_001", &["G3"]).await;
    sys.wait_intent(user, &intent).await;
    // A slow charge holds the only slot for 5 s ...
    let started = std::time::Instant::now();
    let slow = tokio::spawn({
        let (client, url, token) = (sys.client.clone(), format!("{}/payments/execute", sys.base), sys.token(user));
        let body = json!({"paymentIntentId": intent, "paymentMethodToken": "tok_pgTimeout", "cvv": "123"});
        async move { client.post(url).bearer_auth(token).json(&body).send().await.unwrap().status() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // ... a request that comes 3.5 s later waits in line and is served once
    // the slot frees (at ~5 s, well inside its 3 s wait on a busy machine) ...
    let served_in_turn = tokio::spawn({
        let (client, url, token) = (sys.client.clone(), format!("{}/bookings/my", sys.base), sys.token(user));
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
            client.get(url).bearer_auth(token).send().await.unwrap().status()
        }
    });
    // ... while this one waits its 3 s in line and is then shed, and probes
    // answer all along.
    let waited = std::time::Instant::now();
    let shed = sys.get("/bookings/my", user).await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE, "{}", shed.body);
    assert!(waited.elapsed() >= std::time::Duration::from_millis(2900), "shed only after its wait in line");
    assert!(started.elapsed() < std::time::Duration::from_millis(5000), "shed before the slot freed");
    assert_eq!(shed.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert!(shed.body["error"].as_str().is_some_and(|e| e.contains("busy")), "{}", shed.body);
    let health = sys.client.get(format!("{}/healthz", sys.base)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // The slow charge itself is answered: tok_pgTimeout is a decline (400).
    assert_eq!(slow.await.unwrap(), StatusCode::BAD_REQUEST);
    assert_eq!(served_in_turn.await.unwrap(), StatusCode::OK, "served in turn once the slot freed");
    assert_eq!(sys.get("/bookings/my", user).await.status, StatusCode::OK, "served again once the slot is free");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_outlives_the_timeout_is_a_504_json_error() {
    let sys = System::start_with(&["--gateway-request-timeout-ms=1500", "--mock-pg-timeout-ms=4000"]).await;
    let user = "edge_timeout";
    let (_booking, intent) = sys.book(user, "perf_001", &["G4"]).await;
    sys.wait_intent(user, &intent).await;
    let started = std::time::Instant::now();
    let reply = sys.pay(user, &intent, "tok_pgTimeout").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.body);
    assert_eq!(reply.body["error"], "The request timed out.");
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "answered at the timeout");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_headers_is_cut_off_at_the_header_read_timeout() {
    let sys = System::start_with(&["--gateway-header-read-timeout-ms=1000"]).await;
    let addr = sys.base.trim_start_matches("http://").to_owned();
    let trickle = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let started = Instant::now();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
        // One more header line every 200 ms, never the blank line that ends them.
        let mut buf = [0u8; 512];
        while started.elapsed() < Duration::from_secs(15) {
            if stream.write_all(b"X-Slow: 1\r\n").is_err() {
                return started.elapsed();
            }
            match stream.read(&mut buf) {
                Ok(0) => return started.elapsed(),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return started.elapsed(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        started.elapsed()
    });
    let held = trickle.await.unwrap();
    assert!(held < Duration::from_secs(5), "the connection was held {held:?}");
    // Honest clients are served as before.
    let health = sys.client.get(format!("{}/healthz", sys.base)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_trickling_their_bodies_hold_no_slot_and_are_cut_off_at_the_body_read_timeout() {
    let sys = System::start_with(&[
        "--gateway-max-in-flight=2",
        "--gateway-queue-wait-ms=0",
        "--gateway-body-read-timeout-ms=1000",
    ])
    .await;
    let addr = sys.base.trim_start_matches("http://").to_owned();
    let token = sys.token("trickler");
    // Twenty connections send their headers, then a body byte now and then.
    let tricklers: Vec<_> = (0..20)
        .map(|_| {
            let (addr, token) = (addr.clone(), token.clone());
            tokio::task::spawn_blocking(move || {
                let mut stream = std::net::TcpStream::connect(addr).unwrap();
                stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                let head = format!(
                    "POST /bookings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                     Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).unwrap();
                let started = Instant::now();
                let mut answer = Vec::new();
                while started.elapsed() < Duration::from_secs(15) {
                    let _ = stream.write_all(b" ");
                    let mut buf = [0u8; 512];
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            answer.extend_from_slice(&buf[..n]);
                            break;
                        }
                        Err(_) => {}
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                (started.elapsed(), String::from_utf8_lossy(&answer).into_owned())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile the two slots serve everyone else.
    for _ in 0..5 {
        let reply = sys.get("/bookings/my", "honest").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    for trickler in tricklers {
        let (took, answer) = trickler.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("The request body was not received in time."), "{answer}");
        assert!(took < Duration::from_secs(5), "cut off after {took:?}");
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_beyond_the_rate_limit_gets_429_with_retry_after_and_others_go_on() {
    let sys = System::start_with(&["--gateway-user-rate-per-sec=1", "--gateway-user-burst=3"]).await;
    let mut statuses = Vec::new();
    for n in 0..5 {
        statuses.push(sys.try_book("flooder", "perf_002", &[&format!("A{}", n + 1)]).await);
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(&codes[..3], &[201, 201, 201], "the burst passes: {codes:?}");
    let limited = &statuses[3];
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "{codes:?}");
    assert_eq!(limited.body["error"], "Too many requests; please slow down.");
    let wait: u64 = limited.headers.get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // Payments have their own bucket, and other users are not slowed down.
    assert_eq!(sys.try_book("neighbour", "perf_002", &["B1"]).await.status, StatusCode::CREATED);
    let paid = sys.pay("flooder", "pi_unknown", "tok_visa").await;
    assert_ne!(paid.status, StatusCode::TOO_MANY_REQUESTS);
    // After the wait, the user is served again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(sys.try_book("flooder", "perf_002", &["A4"]).await.status, StatusCode::CREATED);
    let metrics = sys.client.get(format!("{}/metrics", sys.metrics)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("http_requests_rate_limited_total"), "counted");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seat_map_is_current_for_every_reader_shared_between_concurrent_ones_and_serves_the_largest_hall() {
    let sys = System::start().await;
    let state = |map: &serde_json::Value, seat: &str| {
        map["seats"].as_array().unwrap().iter().find(|s| s["seatId"] == seat).unwrap()["state"].clone()
    };
    let first = sys.get("/performances/perf_002/seats", "viewer").await;
    assert_eq!(state(&first.body, "A1"), "available");
    // A booking made behind this gateway's back (straight over gRPC) shows
    // in the very next read: nothing older than the request is served.
    let mut grpc = sys.booking_grpc().await;
    let create = proto::booking::CreateBookingRequest {
        performance_id: "perf_002".into(),
        seat_ids: vec!["A1".into()],
        user_id: "other_channel".into(),
        ..Default::default()
    };
    grpc.create_booking(sys.as_user("other_channel", create)).await.unwrap();
    assert_eq!(state(&sys.get("/performances/perf_002/seats", "viewer").await.body, "A1"), "locked");
    // Many readers at once share loads: far fewer booking-service reads than requests.
    let reads_before = seat_map_calls(&sys).await;
    let readers = (0..100).map(|n| {
        let (client, base, token) = (sys.client.clone(), sys.base.clone(), sys.token(&format!("reader_{n}")));
        tokio::spawn(async move {
            let r = client.get(format!("{base}/performances/perf_002/seats")).bearer_auth(token).send().await.unwrap();
            r.status()
        })
    });
    for status in futures::future::join_all(readers).await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let reads = seat_map_calls(&sys).await - reads_before;
    assert!(reads < 50.0, "100 concurrent readers cost {reads} booking-service reads");

    // The largest hall the catalog allows (100,000 seats) is served whole.
    let rows: Vec<_> = (0..200)
        .map(|n| json!({"row": format!("{}{}", (b'A' + (n / 26) as u8) as char, (b'A' + (n % 26) as u8) as char), "seats": 500, "price": 1000}))
        .collect();
    let admin = sys.admin_token();
    let body = json!({"performanceId": "perf_stadium", "title": "Stadium", "rows": rows});
    let created = sys.call(Method::POST, "/performances", Some(&admin), Some(body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let started = Instant::now();
    let map = sys.get("/performances/perf_stadium/seats", "viewer").await;
    assert_eq!(map.status, StatusCode::OK, "{}", map.body);
    assert_eq!(map.body["seats"].as_array().unwrap().len(), 100_000);
    println!("a 100,000-seat map took {:?}", started.elapsed());
    sys.stop().await;
}

/// How many GetSeatMap calls the booking-service has answered.
async fn seat_map_calls(sys: &System) -> f64 {
    let text = sys.client.get(format!("{}/metrics", sys.metrics)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("grpc_requests_total{") && l.contains("BookingService/GetSeatMap"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_labels_and_span_names_use_route_templates_never_raw_paths() {
    let sys = System::start().await;
    let (booking, _) = sys.book("labels", "perf_001", &["G7"]).await;
    assert_eq!(sys.get(&format!("/bookings/{booking}"), "labels").await.status, StatusCode::OK);
    let weird =
        sys.client.request(Method::from_bytes(b"BREW").unwrap(), format!("{}/bookings/x", sys.base)).send().await;
    assert!(weird.is_ok());
    let metrics = sys.client.get(format!("{}/metrics", sys.metrics)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"route="/bookings/{id}""#), "templated route label");
    assert!(!metrics.contains(&booking), "no raw id in any label");
    assert!(!metrics.contains("BREW"), "unknown methods are one label");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_payment_intents_that_do_not_exist_does_not_poll_the_database_per_request() {
    let sys = System::start_with(&["--intent-wait-ms=3000"]).await;
    let pool = sys.payment_pool().await;
    let commits = || async {
        let _ = sqlx::query("select pg_stat_clear_snapshot()").execute(&pool).await;
        sqlx::query_scalar::<_, i64>("select xact_commit from pg_stat_database where datname = current_database()")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = commits().await;
    let started = Instant::now();
    let waiters = (0..30).map(|n| {
        let (client, url, token) =
            (sys.client.clone(), format!("{}/payments/execute", sys.base), sys.token(&format!("w{n}")));
        let body = json!({"paymentIntentId": format!("pi_never_{n}"), "paymentMethodToken": "tok_visa", "cvv": "123"});
        async move { client.post(url).bearer_auth(token).json(&body).send().await.unwrap().status() }
    });
    let statuses = futures::future::join_all(waiters).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::NOT_FOUND), "{statuses:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(3), "each waited the bound: {waited:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spent = commits().await - before;
    // Polling every 25 ms per request would be 30 x 120 = 3,600 queries; the
    // shared watcher asks once per 50 ms for all of them (plus background work).
    println!("30 requests waiting 3 s cost {spent} transactions in the payment database");
    assert!(spent < 600, "{spent} transactions");
    // And an intent that does arrive wakes its waiter at once.
    let (booking, intent) = sys.book("w_real", "perf_001", &["G8"]).await;
    let paid = sys.pay("w_real", &intent, "tok_visa").await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    sys.wait_status("w_real", &booking, "confirmed").await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_opening_waits_in_line_like_any_request_but_an_open_stream_holds_no_slot() {
    let sys =
        System::start_with(&["--gateway-max-in-flight=1", "--gateway-queue-wait-ms=1000", "--mock-pg-timeout-ms=4000"])
            .await;
    let seat_stream = |user: &str| {
        sys.client
            .get(format!("{}/performances/perf_002/seats/stream", sys.base))
            .bearer_auth(sys.token(user))
            .timeout(Duration::from_secs(60))
            .send()
    };
    // An open stream holds no slot: the one slot serves requests beside it.
    let open = seat_stream("edge_viewer").await.unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(sys.get("/bookings/my", "edge_viewer").await.status, StatusCode::OK);
    }
    // A slow charge holds the only slot for 4 s ...
    let user = "edge_stream_line";
    let (_booking, intent) = sys.book(user, "perf_001", &["G6"]).await;
    sys.wait_intent(user, &intent).await;
    let slow = tokio::spawn({
        let (client, url, token) = (sys.client.clone(), format!("{}/payments/execute", sys.base), sys.token(user));
        let body = json!({"paymentIntentId": intent, "paymentMethodToken": "tok_pgTimeout", "cvv": "123"});
        async move { client.post(url).bearer_auth(token).json(&body).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ... so a stream's opening waits its 1 s in line and is shed like any
    // request (before, it opened at once past everyone waiting).
    let waited = Instant::now();
    let shed = seat_stream("edge_latecomer").await.unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(waited.elapsed() >= Duration::from_millis(900), "shed only after its wait in line");
    assert_eq!(shed.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(slow.await.unwrap(), StatusCode::BAD_REQUEST);
    // The slot is free again: the stream opens, and the first one is still open.
    assert_eq!(seat_stream("edge_latecomer").await.unwrap().status(), StatusCode::OK);
    drop(open);
    sys.stop().await;
}
