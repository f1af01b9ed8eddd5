//! CORS: a browser app on another origin calls the API. Preflights are
//! answered for the origins `GATEWAY_CORS_ORIGINS` lists and for no other;
//! in Chromium, a page served from a listed origin books and pays, and the
//! same page from an unlisted origin is stopped by the browser.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::live::{open_browser, ChromeDriver};
use crate::support::System;

/// A loopback listener for a page, and the origin it serves.
async fn page_origin() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    (listener, origin)
}

/// Answers every request on `listener` with `html`.
fn serve_page(listener: tokio::net::TcpListener, html: String) {
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
}

async fn preflight(sys: &System, origin: &str) -> reqwest::Response {
    sys.client
        .request(Method::OPTIONS, format!("{}/bookings", sys.base))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type, idempotency-key")
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_for_listed_origins_only() {
    let listed = "https://tickets.example.com";
    let sys = System::start_with(&[&format!("--gateway-cors-origins={listed},https://admin.example.com")]).await;
    let ok = preflight(&sys, listed).await;
    assert!(ok.status().is_success(), "{}", ok.status());
    let headers = ok.headers();
    assert_eq!(headers["access-control-allow-origin"], listed);
    let methods = headers["access-control-allow-methods"].to_str().unwrap().to_ascii_uppercase();
    assert!(methods.contains("POST") && methods.contains("DELETE"), "{methods}");
    let allowed = headers["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("idempotency-key") && allowed.contains("authorization"), "{allowed}");

    let other = preflight(&sys, "https://evil.example.com").await;
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // A real request from a listed origin exposes the contract's headers.
    let reply = sys
        .client
        .get(format!("{}/bookings/my", sys.base))
        .header("origin", listed)
        .bearer_auth(sys.token("cors_user"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(reply.headers()["access-control-allow-origin"], listed);
    let exposed = reply.headers()["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase();
    for header in ["idempotent-replayed", "retry-after", "link"] {
        assert!(exposed.contains(header), "{header} not exposed: {exposed}");
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_setting_no_origin_is_allowed() {
    let sys = System::start().await;
    let reply = preflight(&sys, "https://tickets.example.com").await;
    assert!(reply.headers().get("access-control-allow-origin").is_none());
    sys.stop().await;
}

/// The page: books seat `seat` of perf_001 and pays for it through the API
/// on `api`, and writes the outcome into the document's title.
fn app_page(api: &str, token: &str, seat: &str) -> String {
    format!(
        r#"<!doctype html><title>working</title><script>
(async () => {{
  try {{
    const auth = {{"authorization": "Bearer {token}", "content-type": "application/json"}};
    const booked = await fetch("{api}/bookings", {{method: "POST", headers: {{...auth, "idempotency-key": "k-{seat}"}},
      body: JSON.stringify({{performanceId: "perf_001", seatIds: ["{seat}"], userId: "web_cors"}})}});
    const booking = await booked.json();
    const paid = await fetch("{api}/payments/execute", {{method: "POST", headers: auth,
      body: JSON.stringify({{paymentIntentId: booking.paymentIntentId, paymentMethodToken: "tok_visa", cvv: "123"}})}});
    const payment = await paid.json();
    document.title = "done " + booked.status + " " + paid.status + " " + payment.status + " " + booked.headers.get("idempotent-replayed");
  }} catch (e) {{
    document.title = "blocked " + e.name;
  }}
}})();
</script>"#
    )
}

async fn title_after_script(browser: &fantoccini::Client, url: &str) -> String {
    browser.goto(url).await.unwrap();
    for _ in 0..150 {
        let title = browser.title().await.unwrap();
        if title != "working" {
            return title;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the page's script never finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_a_page_from_a_listed_origin_books_and_pays_and_an_unlisted_one_is_stopped() {
    let Some(driver) = ChromeDriver::start().await else { return };
    let (allowed_listener, allowed) = page_origin().await;
    let (unlisted_listener, unlisted) = page_origin().await;
    let sys = System::start_with(&[&format!("--gateway-cors-origins={allowed}")]).await;
    let token = sys.token("web_cors");
    serve_page(allowed_listener, app_page(&sys.base, &token, "E2"));
    serve_page(unlisted_listener, app_page(&sys.base, &token, "E1"));

    let browser = open_browser(&driver).await;
    let outcome = title_after_script(&browser, &format!("{allowed}/")).await;
    assert_eq!(outcome, "done 201 200 SUCCESS null", "from {allowed}");
    let outcome = title_after_script(&browser, &format!("{unlisted}/")).await;
    assert!(outcome.starts_with("blocked"), "from {unlisted}: {outcome}");
    browser.close().await.unwrap();

    // The blocked page never reached the API: E1 is free.
    let seat: Value = sys.get("/performances/perf_001/seats", "web_cors").await.body;
    let e1 = seat["seats"].as_array().unwrap().iter().find(|s| s["seatId"] == "E1").cloned();
    assert_eq!(e1.map(|s| s["state"].clone()), Some(Value::from("available")));
    sys.stop().await;
}
