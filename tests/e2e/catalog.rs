//! `GET /performances` and `GET /performances/{id}`: what is on sale,
//! soonest first, paged by a `Link` header, with counts that follow every
//! write.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::System;

async fn register(sys: &System, id: &str, starts_at: &str, rows: Value) {
    let body = json!({"performanceId": id, "title": format!("Show {id}"), "startsAt": starts_at, "rows": rows});
    let reply = sys.call(reqwest::Method::POST, "/performances", Some(&sys.admin_token()), Some(body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

fn next_link(reply: &crate::support::Reply) -> Option<String> {
    let link = reply.headers.get("link")?.to_str().unwrap().to_owned();
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    Some(link.trim_start_matches('<').split('>').next().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn performances_are_listed_soonest_first_paged_by_link_with_live_counts() {
    let sys = System::start().await;
    register(&sys, "perf_late", "2027-03-01T19:00:00Z", json!([{"row": "A", "seats": 4, "price": 70000}])).await;
    register(
        &sys,
        "perf_soon",
        "2027-01-10T19:00:00Z",
        json!([{"row": "A", "seats": 3, "price": 20000}, {"row": "B", "seats": 2, "price": 90000}]),
    )
    .await;
    register(&sys, "perf_mid", "2027-02-01T19:00:00Z", json!([{"row": "A", "seats": 1, "price": 10000}])).await;

    // Two per page: soonest first, the demo ones (no start time) last.
    let mut ids = Vec::new();
    let mut path = Some("/performances?limit=2".to_owned());
    let mut pages = 0;
    while let Some(p) = path {
        let reply = sys.get(&p, "browser").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let items = reply.body.as_array().unwrap();
        assert!(items.len() <= 2);
        ids.extend(items.iter().map(|i| i["performanceId"].as_str().unwrap().to_owned()));
        path = next_link(&reply);
        pages += 1;
    }
    assert_eq!(ids, ["perf_soon", "perf_mid", "perf_late", "perf_001", "perf_002"]);
    assert_eq!(pages, 3);

    // Counts follow every write at once.
    let (booking, intent) = sys.book("fan", "perf_soon", &["A1", "B2"]).await;
    sys.book("fan2", "perf_soon", &["A2"]).await;
    let one = sys.get("/performances/perf_soon", "browser").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(
        one.body,
        json!({"performanceId": "perf_soon", "title": "Show perf_soon", "startsAt": "2027-01-10T19:00:00Z",
               "currency": "KRW", "minPrice": 20000, "maxPrice": 90000, "available": 2, "held": 3, "sold": 0})
    );
    sys.pay("fan", &intent, "tok_visa").await;
    let one = sys.get("/performances/perf_soon", "browser").await;
    assert_eq!(
        (one.body["available"].as_u64(), one.body["held"].as_u64(), one.body["sold"].as_u64()),
        (Some(2), Some(1), Some(2))
    );
    sys.wait_status("fan", &booking, "confirmed").await;

    let unknown = sys.get("/performances/perf_nope", "browser").await;
    assert_eq!(
        (unknown.status, unknown.body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("Performance perf_nope not found."))
    );
    for bad in
        ["/performances?limit=0", "/performances?limit=101", "/performances?limit=x", "/performances?after=perf_nope"]
    {
        let reply = sys.get(bad, "browser").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}: {}", reply.body);
    }
    let anonymous = sys.call(reqwest::Method::GET, "/performances", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    sys.stop().await;
}
