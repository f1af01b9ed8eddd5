//! The live seat map (Server-Sent Events), the box-office page, and the
//! dev-only token endpoint; then the page itself in Debian's Chromium,
//! driven over WebDriver: sign in, book, pay, watch the seat turn sold.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::System;

/// Reads SSE events (`event`, `id`, parsed `data`) from a streaming response.
struct Events {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl Events {
    fn new(response: reqwest::Response) -> Self {
        Self { body: response.bytes_stream().boxed(), buffer: String::new() }
    }

    /// The next event within `within`, skipping keep-alive comments.
    async fn next(&mut self, within: Duration) -> Option<(String, String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (String::from("message"), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((event, id, serde_json::from_str(&data).unwrap()));
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next()).await.ok()??.ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

async fn open_stream(sys: &System, user: &str, performance: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = sys
        .client
        .get(format!("{}/performances/{performance}/seats/stream", sys.base))
        .bearer_auth(sys.token(user))
        .timeout(Duration::from_secs(120));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_the_gateway_reaches_its_performances_viewers_at_once_not_at_the_next_look() {
    // Watchers look once a minute here: only the write's own nudge can show it.
    let sys = System::start_with(&["--gateway-seat-stream-every-ms=60000"]).await;
    let mut events = Events::new(open_stream(&sys, "viewer", "perf_002", None).await);
    assert_eq!(events.next(Duration::from_secs(10)).await.expect("a snapshot").0, "snapshot");
    let (booking, intent) = sys.book("buyer", "perf_002", &["A4"]).await;
    let (_, _, change) = events.next(Duration::from_secs(10)).await.expect("the hold, at once");
    assert_eq!(change, json!({"changes": [{"seatId": "A4", "state": "locked"}]}));
    sys.wait_intent("buyer", &intent).await;
    assert_eq!(sys.pay("buyer", &intent, "tok_visa").await.status, StatusCode::OK);
    let (_, _, change) = events.next(Duration::from_secs(10)).await.expect("the sale, at once");
    assert_eq!(change, json!({"changes": [{"seatId": "A4", "state": "booked"}]}));
    let (other, _) = sys.book("buyer2", "perf_002", &["A5"]).await;
    events.next(Duration::from_secs(10)).await.expect("the second hold");
    assert_eq!(sys.delete(&format!("/bookings/{other}"), "buyer2").await.status, StatusCode::OK);
    let (_, _, change) = events.next(Duration::from_secs(10)).await.expect("the cancel, at once");
    assert_eq!(change, json!({"changes": [{"seatId": "A5", "state": "available"}]}));
    assert!(!booking.is_empty());
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seat_streams_are_capped_per_user_and_end_with_their_own_token() {
    let sys = System::start_with(&["--gateway-max-streams-per-user=2"]).await;
    let first = open_stream(&sys, "greedy", "perf_002", None).await;
    let second = open_stream(&sys, "greedy", "perf_002", None).await;
    assert_eq!((first.status(), second.status()), (StatusCode::OK, StatusCode::OK));
    let third = open_stream(&sys, "greedy", "perf_002", None).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers().contains_key("retry-after"));
    assert_eq!(open_stream(&sys, "someone_else", "perf_002", None).await.status(), StatusCode::OK, "others may watch");
    drop(first);
    // The closed stream's place comes back.
    let again = testkit::eventually(Duration::from_secs(10), || async {
        let r = open_stream(&sys, "greedy", "perf_002", None).await;
        (r.status() == StatusCode::OK).then_some(r)
    })
    .await;
    assert!(again.is_some(), "a closed stream gives its place back");

    // A stream ends when its own token expires (plus the verifiers' leeway),
    // whatever the other streams do.
    let short = edge::auth::issue_token(&sys.secret, "brief", false, 2).unwrap();
    let response = sys
        .client
        .get(format!("{}/performances/perf_002/seats/stream", sys.base))
        .bearer_auth(short)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let opened = std::time::Instant::now();
    let mut events = Events::new(response);
    assert_eq!(events.next(Duration::from_secs(10)).await.expect("a snapshot").0, "snapshot");
    assert!(events.next(Duration::from_secs(30)).await.is_none(), "the stream ended");
    let lasted = opened.elapsed();
    assert!(lasted < Duration::from_secs(20), "ended with its token, after {lasted:?}");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seat_stream_sends_a_snapshot_then_each_change_and_resumes_without_repeating_it() {
    let sys = System::start().await;
    // The same JWT as every other read.
    let anonymous = sys.client.get(format!("{}/performances/perf_002/seats/stream", sys.base)).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let unknown = open_stream(&sys, "viewer", "perf_nope", None).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let response = open_stream(&sys, "viewer", "perf_002", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut events = Events::new(response);
    let (kind, first_id, snapshot) = events.next(Duration::from_secs(10)).await.expect("a snapshot");
    assert_eq!(kind, "snapshot");
    let seats = snapshot["seats"].as_array().unwrap();
    assert_eq!(seats.len(), 10, "perf_002 has 10 seats");
    assert!(seats.iter().all(|s| s["state"] == "available" && s["price"].as_i64().is_some()));

    // Someone else holds a seat: the viewer sees it change, and no one's identity.
    let (booking, intent) = sys.book("buyer", "perf_002", &["A3"]).await;
    let (kind, held_id, change) = events.next(Duration::from_secs(10)).await.expect("a change");
    assert_eq!(kind, "seats");
    assert_eq!(change, json!({"changes": [{"seatId": "A3", "state": "locked"}]}));
    assert_ne!(held_id, first_id);
    assert!(!change.to_string().contains("buyer") && !change.to_string().contains(&booking));

    // ... pays: the seat turns sold.
    sys.wait_intent("buyer", &intent).await;
    assert_eq!(sys.pay("buyer", &intent, "tok_visa").await.status, StatusCode::OK);
    let (_, sold_id, change) = events.next(Duration::from_secs(10)).await.expect("sold");
    assert_eq!(change, json!({"changes": [{"seatId": "A3", "state": "booked"}]}));
    drop(events);

    // Resuming at the current state sends nothing to repeat ...
    let mut resumed = Events::new(open_stream(&sys, "viewer", "perf_002", Some(&sold_id)).await);
    assert!(resumed.next(Duration::from_millis(1500)).await.is_none(), "nothing changed since {sold_id}");
    // ... and the next change arrives as usual.
    sys.book("buyer2", "perf_002", &["B1"]).await;
    let (kind, _, change) = resumed.next(Duration::from_secs(10)).await.expect("a change after resuming");
    assert_eq!((kind.as_str(), &change), ("seats", &json!({"changes": [{"seatId": "B1", "state": "locked"}]})));
    drop(resumed);
    // Resuming from an older state gets a fresh snapshot (states are absolute).
    let mut stale = Events::new(open_stream(&sys, "viewer", "perf_002", Some(&held_id)).await);
    let (kind, _, snapshot) = stale.next(Duration::from_secs(10)).await.expect("a snapshot");
    assert_eq!(kind, "snapshot");
    let state_of =
        |id: &str| snapshot["seats"].as_array().unwrap().iter().find(|s| s["seatId"] == id).unwrap()["state"].clone();
    assert_eq!((state_of("A3"), state_of("B1")), (json!("booked"), json!("locked")));
    drop(stale);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_box_office_page_is_served_and_dev_tokens_exist_only_in_dev() {
    let sys = System::start().await;
    let page = sys.client.get(format!("{}/", sys.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("Box office") && !html.contains("http://") && !html.contains("https://"), "no CDN");
    let token = sys.client.post(format!("{}/dev/token", sys.base)).json(&json!({"userId": "mallory"})).send().await;
    assert_eq!(token.unwrap().status(), StatusCode::NOT_FOUND, "no dev tokens outside dev");
    sys.stop().await;

    let dev = System::start_dev().await;
    let minted = dev.client.post(format!("{}/dev/token", dev.base)).json(&json!({"userId": "alice"})).send().await;
    let minted: Value = minted.unwrap().json().await.unwrap();
    let token = minted["token"].as_str().unwrap();
    let mine = dev.client.get(format!("{}/bookings/my", dev.base)).bearer_auth(token).send().await.unwrap();
    assert_eq!(mine.status(), StatusCode::OK, "the dev token is a working user token");
    for bad in [json!({}), json!({"userId": ""}), json!({"userId": "a b"}), json!({"userId": "x".repeat(65)})] {
        let refused = dev.client.post(format!("{}/dev/token", dev.base)).json(&bad).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    dev.stop().await;
}

// ---------------------------------------------------------------- the browser

/// chromedriver on a free port, killed on drop.
pub(crate) struct ChromeDriver {
    child: std::process::Child,
    url: String,
}

impl ChromeDriver {
    pub(crate) async fn start() -> Option<Self> {
        let (driver, browser) = ("/usr/bin/chromedriver", "/usr/bin/chromium");
        if !std::path::Path::new(driver).exists() || !std::path::Path::new(browser).exists() {
            testkit::skip_notice(
                "the box-office browser test: Debian's chromium and chromium-driver are not installed",
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Owned by the guard from here on: dropping it kills and reaps the driver.
        let driver = Self { child, url: format!("http://127.0.0.1:{port}") };
        for _ in 0..100 {
            if reqwest::get(format!("{}/status", driver.url)).await.is_ok_and(|r| r.status().is_success()) {
                return Some(driver);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start");
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session on `driver`.
pub(crate) async fn open_browser(driver: &ChromeDriver) -> fantoccini::Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
        }),
    );
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session in chromium")
}

/// Waits until `script` (a JavaScript expression) is truthy in the page.
pub(crate) async fn wait_for(browser: &fantoccini::Client, script: &str, what: &str) {
    for _ in 0..150 {
        let value = browser.execute(&format!("return !!({script});"), vec![]).await.unwrap();
        if value == Value::Bool(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let message = browser.execute("return document.getElementById('message').textContent;", vec![]).await;
    panic!("the page never showed {what}; its message: {message:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_a_user_books_pays_and_sees_the_seat_turn_sold_and_the_booking_confirmed() {
    let Some(driver) = ChromeDriver::start().await else { return };
    let sys = System::start_dev().await;
    let browser = open_browser(&driver).await;

    browser.goto(&format!("{}/", sys.base)).await.unwrap();
    let user = browser.find(fantoccini::Locator::Id("user")).await.unwrap();
    user.clear().await.unwrap();
    user.send_keys("web_buyer").await.unwrap();
    browser.find(fantoccini::Locator::Id("signin")).await.unwrap().click().await.unwrap();
    wait_for(&browser, "document.getElementById('who').textContent.includes('web_buyer')", "the signed-in user").await;
    // The seat map arrives over the stream.
    let seat = "document.querySelector('button.seat[data-seat=\"C5\"]')";
    wait_for(&browser, &format!("{seat} && {seat}.dataset.state === 'available'"), "seat C5, free").await;

    browser.execute(&format!("{seat}.click();"), vec![]).await.unwrap();
    wait_for(&browser, &format!("{seat}.classList.contains('selected')"), "C5 selected").await;
    browser.find(fantoccini::Locator::Id("book")).await.unwrap().click().await.unwrap();
    wait_for(&browser, "!document.getElementById('payment').hidden", "the payment form").await;
    wait_for(&browser, &format!("{seat}.dataset.state === 'locked'"), "C5 held, from the stream").await;

    // A declined card first: the page says so, and the seat stays held.
    browser.execute("document.getElementById('card').value = 'tok_chargeDeclined';", vec![]).await.unwrap();
    browser.find(fantoccini::Locator::Id("pay")).await.unwrap().click().await.unwrap();
    wait_for(&browser, "document.getElementById('message').className === 'error'", "the decline").await;
    // Then a good one.
    browser.execute("document.getElementById('card').value = 'tok_visa';", vec![]).await.unwrap();
    browser.find(fantoccini::Locator::Id("pay")).await.unwrap().click().await.unwrap();
    wait_for(&browser, &format!("{seat}.dataset.state === 'booked'"), "C5 sold, from the stream").await;
    wait_for(
        &browser,
        "[...document.querySelectorAll('#bookings td')].some(td => td.textContent === 'confirmed')",
        "the booking confirmed",
    )
    .await;

    let png = browser.screenshot().await.unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("box-office.png");
    std::fs::write(&path, &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    println!("box-office screenshot: {}", path.display());
    browser.close().await.unwrap();
    sys.stop().await;
}
