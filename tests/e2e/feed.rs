//! The event feed of the running system: the same bytes and attributes as
//! the Kafka records, who may read it over gRPC, and the consumer example
//! of docs/CONSUMERS.md run as a team would run it (Python, code generated
//! from proto/), switching from the feed to Kafka by position with writes
//! going on, and meeting an event type it does not know.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use proto::feed::{event_feed_client::EventFeedClient, FeedEvent, SubscribeRequest};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    message::{Header, Headers, Message, OwnedHeaders},
    producer::FutureRecord,
};
use testkit::unique_name;

use crate::support::System;

async fn feed_client(addr: std::net::SocketAddr) -> EventFeedClient<tonic::transport::Channel> {
    EventFeedClient::connect(format!("http://127.0.0.1:{}", addr.port())).await.unwrap()
}

fn subscribe_as(token: &str, from: i64) -> tonic::Request<SubscribeRequest> {
    let mut request = tonic::Request::new(SubscribeRequest { from_position: from, types: vec![] });
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn events_token(sys: &System) -> String {
    edge::auth::issue_token_with_role(&sys.secret, "feed_reader", Some("events"), 600).unwrap()
}

/// Every record of `topic`: ce_id → (value, headers).
async fn records(sys: &System, topic: &str, expected: usize) -> HashMap<String, (Vec<u8>, HashMap<String, String>)> {
    let reader: StreamConsumer = messaging::kafka::client_config(&sys.brokers)
        .set("group.id", unique_name("feed_compare"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    reader.subscribe(&[topic]).unwrap();
    let mut found = HashMap::new();
    while found.len() < expected {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(20), reader.recv()).await else { break };
        let headers: HashMap<String, String> = message
            .headers()
            .iter()
            .flat_map(|h| h.iter())
            .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
            .collect();
        found.insert(headers["ce_id"].clone(), (message.payload().unwrap_or_default().to_vec(), headers));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_feed_event_carries_the_same_bytes_and_attributes_as_its_kafka_record() {
    let sys = System::start().await;
    let (booking, intent) = sys.book("feed_buyer", "perf_001", &["F1"]).await;
    sys.wait_intent("feed_buyer", &intent).await;
    assert_eq!(sys.pay("feed_buyer", &intent, "tok_visa").await.status, reqwest::StatusCode::OK);
    sys.wait_status("feed_buyer", &booking, "confirmed").await;
    for (addr, topic, count) in [(sys.booking_addr, &sys.topics.booking, 2), (sys.payment_addr, &sys.topics.payment, 2)]
    {
        let mut feed = feed_client(addr).await;
        let mut stream = feed.subscribe(subscribe_as(&events_token(&sys), 0)).await.unwrap().into_inner();
        let mut events: Vec<FeedEvent> = Vec::new();
        while events.len() < count {
            let next = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
            events.push(next.expect("an event within 10 s").unwrap().unwrap());
        }
        let kafka = records(&sys, topic, count).await;
        for event in &events {
            let (value, headers) =
                kafka.get(&event.event_id).unwrap_or_else(|| panic!("{} not on Kafka", event.event_id));
            assert_eq!(&event.data, value, "{}: the same bytes", event.r#type);
            assert_eq!(headers["ce_type"], event.r#type);
            assert_eq!(headers["ce_position"], event.position.to_string());
            assert_eq!(headers["ce_sequence"], event.sequence.to_string());
            assert_eq!(headers["ce_subject"], event.subject);
            assert_eq!(headers["content-type"], event.content_type);
        }
        assert!(events.windows(2).all(|w| w[0].position < w[1].position));
    }
    // A user's token, an admin's token.
    let mut feed = feed_client(sys.booking_addr).await;
    let denied = feed.subscribe(subscribe_as(&sys.token("feed_buyer"), 0)).await.err().unwrap();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let mut admin = feed.subscribe(subscribe_as(&sys.admin_token(), 0)).await.unwrap().into_inner();
    assert_eq!(admin.next().await.unwrap().unwrap().stream_id, booking);
    sys.stop().await;
}

/// Runs docs/examples/consumer/consumer.py against the system; its summary.
async fn run_example(sys: &System, group: &str) -> tokio::process::Child {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    tokio::process::Command::new("python3")
        .arg(root.join("docs/examples/consumer/consumer.py"))
        .args(["--proto", &root.join("proto").display().to_string()])
        .args(["--booking-feed", &format!("127.0.0.1:{}", sys.booking_addr.port())])
        .args(["--payment-feed", &format!("127.0.0.1:{}", sys.payment_addr.port())])
        .args(["--kafka", &sys.brokers, "--booking-topic", &sys.topics.booking])
        .args(["--payment-topic", &sys.topics.payment, "--group", group, "--until-idle", "6"])
        .env("FEED_TOKEN", events_token(sys))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_starts_from_history_switches_to_kafka_by_position_and_skips_an_unknown_type() {
    let ready = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, confluent_kafka"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        testkit::skip_notice("python3 with docs/examples/consumer/requirements.txt is not installed");
        return;
    }
    let sys = System::start().await;
    // History: one paid booking, one left pending.
    let (paid, intent) = sys.book("py_paid", "perf_001", &["E1"]).await;
    sys.wait_intent("py_paid", &intent).await;
    assert_eq!(sys.pay("py_paid", &intent, "tok_visa").await.status, reqwest::StatusCode::OK);
    sys.wait_status("py_paid", &paid, "confirmed").await;
    let (pending, _) = sys.book("py_pending", "perf_001", &["E2"]).await;
    let example = run_example(&sys, &unique_name("py_example")).await;
    // Writes race the switch from the feed to Kafka.
    let mut later = Vec::new();
    for n in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let user = format!("py_later{n}");
        let (booking, intent) = sys.book(&user, "perf_001", &[&format!("E{}", n + 3)]).await;
        if n % 2 == 0 {
            sys.wait_intent(&user, &intent).await;
            assert_eq!(sys.pay(&user, &intent, "tok_visa").await.status, reqwest::StatusCode::OK);
            sys.wait_status(&user, &booking, "confirmed").await;
            later.push((booking, "CONFIRMED"));
        } else {
            later.push((booking, "PENDING"));
        }
    }
    // A newer producer publishes a type this example has never heard of.
    let producer = messaging::kafka::producer(&sys.brokers).unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header { key: "ce_id", value: Some(uuid::Uuid::now_v7().to_string().as_str()) })
        .insert(Header { key: "ce_type", value: Some("ticketing.booking.v1.SeatsUpgraded") })
        .insert(Header { key: "ce_subject", value: Some("a-future-booking") })
        .insert(Header { key: "ce_sequence", value: Some("1") })
        .insert(Header { key: "ce_position", value: Some(i64::MAX.to_string().as_str()) });
    let record = FutureRecord::to(&sys.topics.booking).key("a-future-booking").payload(&[8_u8, 1][..]).headers(headers);
    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();

    let output = tokio::time::timeout(Duration::from_secs(90), example.wait_with_output()).await.unwrap().unwrap();
    assert!(output.status.success(), "the example failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    let counts = &summary["counts"];
    assert_eq!(counts["gaps"], 0, "{summary}");
    assert_eq!(counts["unknown_types"], 1, "{summary}");
    assert!(counts["feed"].as_u64().unwrap() >= 3, "history came from the feed: {summary}");
    // What the feed gave is on Kafka too, and was skipped there by position.
    assert!(counts["skipped_by_position"].as_u64() >= counts["feed"].as_u64(), "{summary}");
    // Every published event handled exactly once, from one source or the other.
    let mut published = 0_i64;
    for pool in [sys.booking_pool().await, sys.payment_pool().await] {
        let n: i64 = sqlx::query_scalar("select count(*) from events where sequence is not null")
            .fetch_one(&pool)
            .await
            .unwrap();
        published += n;
    }
    let handled = counts["feed"].as_i64().unwrap() + counts["kafka"].as_i64().unwrap();
    assert_eq!(handled, published + 1, "each event once, plus the unknown one: {summary}");
    assert_eq!(summary["bookings"][&paid], "CONFIRMED", "{summary}");
    assert_eq!(summary["bookings"][&pending], "PENDING", "{summary}");
    for (booking, status) in &later {
        assert_eq!(summary["bookings"][booking], *status, "{summary}");
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticketing_events_tail_prints_each_event_as_a_json_line_with_its_payload_decoded() {
    let sys = System::start().await;
    let (booking, _) = sys.book("tail_buyer", "perf_001", &["D7"]).await;
    let url = format!("http://127.0.0.1:{}", sys.booking_addr.port());
    let tail = |args: Vec<String>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ticketing"))
            .args(["events", "tail", "--url", &url])
            .args(args)
            .env("JWT_SECRET", &sys.secret)
            .env_remove("FEED_TOKEN")
            .output()
            .unwrap()
    };
    let output = tokio::task::block_in_place(|| {
        tail(vec!["--count".into(), "1".into(), "--type".into(), "ticketing.booking.v1.SeatLocked".into()])
    });
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(line["type"], "ticketing.booking.v1.SeatLocked");
    assert_eq!(line["subject"], booking);
    assert_eq!(line["sequence"], 1);
    assert_eq!(line["data"]["bookingId"], booking, "the payload, decoded: {line}");
    assert_eq!(line["data"]["seatIds"], serde_json::json!(["D7"]));
    // From after that event: nothing older comes back.
    let position = line["position"].as_i64().unwrap();
    let (later, _) = sys.book("tail_buyer2", "perf_001", &["D8"]).await;
    let output =
        tokio::task::block_in_place(|| tail(vec!["--count".into(), "1".into(), "--from".into(), position.to_string()]));
    let next: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(next["subject"], later, "{next}");
    // A user's token is refused, and says why.
    let refused = tokio::task::block_in_place(|| tail(vec!["--token".into(), sys.token("tail_buyer")]));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("role admin or events"));
    sys.stop().await;
}
