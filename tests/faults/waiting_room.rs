//! The waiting room survives what production does to it: SIGKILL of the
//! booking-service and of a gateway mid-queue keeps every place, and two
//! gateways show the same place to a joiner on one and a poller on the
//! other. After the faults, the admitted person still books.

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
    let admin = edge::auth::issue_token(&d.env("JWT_SECRET"), "ops", true, 3600).unwrap();
    let performance =
        json!({"performanceId": "perf_q", "title": "On sale", "rows": [{"row": "A", "seats": 10, "price": 1000}]});
    let (status, _) =
        send(&d, reqwest::Method::POST, format!("{gateway_a}/performances"), &admin, Some(performance)).await;
    assert_eq!(status, StatusCode::CREATED);
    let opens_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let setup = json!({"opensAt": opens_at, "maxActive": 1});
    let (status, _) =
        send(&d, reqwest::Method::PUT, format!("{gateway_a}/performances/perf_q/onsale"), &admin, Some(setup)).await;
    assert_eq!(status, StatusCode::OK);

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
