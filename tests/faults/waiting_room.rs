//! The waiting room survives what production does to it: SIGKILL of the
//! booking-service and of a gateway mid-queue keeps every place, and two
//! gateways show the same place to a joiner on one and a poller on the
//! other. After the faults, the admitted person still books. A hung
//! booking-service (SIGSTOP) holds the joins sent to it, not the gateway's
//! join sender: once it runs again, they and new joins are answered. Place
//! streams, carried on one call per performance, are opened again by their
//! pages after the booking-service hangs or is killed, and every viewer
//! hears their admission.

use super::*;

async fn send(
    d: &Deployment,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = d.client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap_or(Value::Null))
}

/// Registers `id` with 10 seats and sets up its on-sale with `setup`, as an admin.
async fn on_sale(d: &Deployment, gateway: &str, id: &str, setup: Value) {
    let admin = edge::auth::issue_token(&d.env("JWT_SECRET"), "ops", true, 3600).unwrap();
    let performance =
        json!({"performanceId": id, "title": "On sale", "rows": [{"row": "A", "seats": 10, "price": 1000}]});
    let (status, _) =
        send(d, reqwest::Method::POST, format!("{gateway}/performances"), &admin, Some(performance)).await;
    assert_eq!(status, StatusCode::CREATED);
    let url = format!("{gateway}/performances/{id}/onsale");
    let (status, _) = send(d, reqwest::Method::PUT, url, &admin, Some(setup)).await;
    assert_eq!(status, StatusCode::OK);
}

/// Every user's position as `gateway` shows it (waiting until each has one).
async fn positions(d: &Deployment, gateway: &str, users: &[String]) -> Vec<i64> {
    let mut found = Vec::new();
    for user in users {
        let url = format!("{gateway}/performances/perf_q/queue");
        let position = eventually(Duration::from_secs(60), || async {
            let (status, body) = send(d, reqwest::Method::GET, url.clone(), &d.token(user), None).await;
            (status == StatusCode::OK).then(|| body["position"].as_i64()).flatten()
        })
        .await;
        found.push(
            position.unwrap_or_else(|| panic!("{user} has no position on {gateway}; logs in {}", d.dir.display())),
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_place_survives_a_sigkill_of_the_booking_service_and_of_a_gateway_and_two_gateways_agree() {
    let _serial = SERIAL.lock().await;
    let dir = workdir("faults_waiting_room");
    let Some(tansu) = Tansu::start(&dir) else { return };
    let mut d = Deployment::new(dir, &tansu.brokers, server_url());
    d.start_all().await;
    // A second gateway in front of the same services.
    let (booking_url, payment_url) =
        (format!("http://127.0.0.1:{}", d.ports('a').booking), format!("http://127.0.0.1:{}", d.ports('a').payment));
    d.start("gateway-b", &[("BOOKING_GRPC_URL", &booking_url), ("PAYMENT_GRPC_URL", &payment_url)]);
    d.wait_ready('b').await;
    let (gateway_a, gateway_b) = (d.gateway('a'), d.gateway('b'));
    let opens_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    on_sale(&d, &gateway_a, "perf_q", json!({"opensAt": opens_at, "maxActive": 1})).await;

    // Joined on one gateway, read on the other.
    let users: Vec<String> = (0..12).map(|n| format!("q_fan{n}")).collect();
    for user in &users {
        let (status, _) =
            send(&d, reqwest::Method::POST, format!("{gateway_a}/performances/perf_q/queue"), &d.token(user), None)
                .await;
        assert_eq!(status, StatusCode::OK);
    }
    let before = positions(&d, &gateway_b, &users).await;
    let mut sorted = before.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=12).collect::<Vec<i64>>(), "one place each");
    assert_eq!(positions(&d, &gateway_a, &users).await, before, "both gateways show the same places");

    // SIGKILL the booking-service, restart it as a user would: every place stays.
    d.kill("booking-a");
    d.start("booking-a", &[]);
    d.wait_ready('a').await;
    assert_eq!(positions(&d, &gateway_b, &users).await, before, "places after the booking-service restarted");
    d.kill("gateway-a");
    d.start("gateway-a", &[]);
    d.wait_ready('a').await;
    assert_eq!(positions(&d, &gateway_a, &users).await, before, "places after a gateway restarted");

    // New work completes: the first in line is admitted and books through the other gateway.
    let first = &users[before.iter().position(|p| *p == 1).unwrap()];
    let admitted = eventually(Duration::from_secs(30), || async {
        let url = format!("{gateway_b}/performances/perf_q/queue");
        let (_, body) = send(&d, reqwest::Method::GET, url, &d.token(first), None).await;
        body["admission"].as_str().map(str::to_owned)
    })
    .await
    .expect("the first in line is admitted");
    let response = d
        .client
        .post(format!("{gateway_b}/bookings"))
        .bearer_auth(d.token(first))
        .header("admission", admitted)
        .json(&json!({"performanceId": "perf_q", "seatIds": ["A1"], "userId": first}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_check_passes(&d);
    d.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_sent_to_a_hung_booking_service_are_answered_once_it_runs_again_and_new_joins_complete() {
    let _serial = SERIAL.lock().await;
    let dir = workdir("faults_waiting_room_hang");
    let Some(tansu) = Tansu::start(&dir) else { return };
    let mut d = Deployment::new(dir, &tansu.brokers, server_url());
    d.start_all().await;
    let gateway = d.gateway('a');
    let opens_at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    on_sale(&d, &gateway, "perf_qh", json!({"opensAt": opens_at})).await;
    let join_url = format!("{gateway}/performances/perf_qh/queue");
    let joins = |users: Vec<String>| {
        let (client, url) = (reqwest::Client::new(), join_url.clone());
        let tokens: Vec<(String, String)> = users.into_iter().map(|u| (d.token(&u), u)).collect();
        tokio::spawn(async move {
            let calls = tokens.into_iter().map(|(token, user)| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let started = Instant::now();
                    let status = client.post(url).bearer_auth(token).send().await.map(|r| r.status());
                    (user, status.ok(), started.elapsed())
                }
            });
            futures::future::join_all(calls).await
        })
    };
    let before = joins((0..5).map(|n| format!("qh_before{n}")).collect()).await.unwrap();
    assert!(before.iter().all(|(_, s, _)| *s == Some(StatusCode::OK)), "{before:?}");

    // The booking-service hangs: its connections stay open, nothing answers.
    let booking = d.procs["booking-a"].id();
    signal(booking, "STOP");
    let during = joins((0..40).map(|n| format!("qh_during{n}")).collect());
    tokio::time::sleep(Duration::from_secs(10)).await;
    signal(booking, "CONT");
    let during = during.await.unwrap();
    // Within the request timeout, every join held during the hang is answered.
    for (user, status, took) in &during {
        assert_eq!(*status, Some(StatusCode::OK), "{user} after {took:?}; logs in {}", d.dir.display());
    }
    // New joins complete at once, not behind calls still stuck on the hang.
    let after = joins((0..40).map(|n| format!("qh_after{n}")).collect()).await.unwrap();
    for (user, status, took) in &after {
        assert_eq!(*status, Some(StatusCode::OK), "{user}");
        assert!(*took < Duration::from_secs(5), "{user} took {took:?} after the hang");
    }
    // Nothing lost: every one of them holds a place.
    for (user, _, _) in before.iter().chain(&during).chain(&after) {
        let (status, body) =
            send(&d, reqwest::Method::GET, format!("{gateway}/performances/perf_qh/queue"), &d.token(user), None).await;
        assert_eq!((status, body["state"].as_str()), (StatusCode::OK, Some("queued")), "{user}: {body}");
    }
    assert_check_passes(&d);
    d.stop_all();
}

/// Follows `user`'s place stream on `gateway` as the page does, opening it
/// again whenever it ends or is refused, until it says `admitted`; the
/// states it heard, and the admission.
async fn follow(client: reqwest::Client, url: String, token: String) -> (Vec<String>, String) {
    let mut heard = Vec::new();
    loop {
        if let Ok(response) = client.get(&url).bearer_auth(&token).send().await {
            if response.status() == StatusCode::OK {
                let mut body = response.bytes_stream();
                let mut text = String::new();
                while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
                    text.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = text.find("\n\n") {
                        let event: String = text.drain(..end + 2).collect();
                        let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
                        let place: Value = serde_json::from_str(data).unwrap();
                        heard.push(place["state"].as_str().unwrap_or_default().to_owned());
                        if place["state"] == "admitted" {
                            return (heard, place["admission"].as_str().unwrap_or_default().to_owned());
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_streams_outlive_a_hung_and_a_killed_booking_service_and_every_viewer_hears_their_admission() {
    let _serial = SERIAL.lock().await;
    let dir = workdir("faults_waiting_room_streams");
    let Some(tansu) = Tansu::start(&dir) else { return };
    let mut d = Deployment::new(dir, &tansu.brokers, server_url());
    d.start_all().await;
    let gateway = d.gateway('a');
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    on_sale(&d, &gateway, "perf_qs", json!({"opensAt": later, "maxActive": 10})).await;
    let users: Vec<String> = (0..8).map(|n| format!("qs_viewer{n}")).collect();
    for user in &users {
        let url = format!("{gateway}/performances/perf_qs/queue");
        assert_eq!(send(&d, reqwest::Method::POST, url, &d.token(user), None).await.0, StatusCode::OK);
    }
    let stream_url = format!("{gateway}/performances/perf_qs/queue/stream");
    let viewers: Vec<_> =
        users.iter().map(|user| tokio::spawn(follow(d.client.clone(), stream_url.clone(), d.token(user)))).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The booking-service hangs, then is killed and restarted as a user would.
    let booking = d.procs["booking-a"].id();
    signal(booking, "STOP");
    tokio::time::sleep(Duration::from_secs(6)).await;
    signal(booking, "CONT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.kill("booking-a");
    d.start("booking-a", &[]);
    d.wait_ready('a').await;

    // New work completes: the sale opens, one more person joins, and every
    // viewer, old streams reopened and the new one, hears their admission.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    let admin = edge::auth::issue_token(&d.env("JWT_SECRET"), "ops", true, 3600).unwrap();
    let url = format!("{gateway}/performances/perf_qs/onsale");
    let (status, _) =
        send(&d, reqwest::Method::PUT, url, &admin, Some(json!({"opensAt": soon, "maxActive": 10}))).await;
    assert_eq!(status, StatusCode::OK);
    let url = format!("{gateway}/performances/perf_qs/queue");
    assert_eq!(send(&d, reqwest::Method::POST, url, &d.token("qs_late"), None).await.0, StatusCode::OK);
    let late = follow(d.client.clone(), stream_url.clone(), d.token("qs_late"));
    let late = tokio::time::timeout(Duration::from_secs(60), late).await.expect("the late viewer is admitted");
    let mut admissions = vec![late.1];
    for (user, viewer) in users.iter().zip(viewers) {
        let (heard, admission) = tokio::time::timeout(Duration::from_secs(60), viewer)
            .await
            .unwrap_or_else(|_| panic!("{user} never heard their admission; logs in {}", d.dir.display()))
            .unwrap();
        assert_eq!(heard.first().map(String::as_str), Some("queued"), "{user}: {heard:?}");
        admissions.push(admission);
    }
    // Nothing lost: each admission is its holder's own, one each.
    for (user, admission) in std::iter::once("qs_late").chain(users.iter().map(String::as_str)).zip(&admissions) {
        let url = format!("{gateway}/performances/perf_qs/queue");
        let (status, body) = send(&d, reqwest::Method::GET, url, &d.token(user), None).await;
        assert_eq!((status, body["admission"].as_str()), (StatusCode::OK, Some(admission.as_str())), "{user}");
    }
    assert_check_passes(&d);
    d.stop_all();
}
