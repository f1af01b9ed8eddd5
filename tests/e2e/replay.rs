//! At-least-once delivery: replaying whole topics from offset 0 into the
//! consumers changes nothing (the inbox dedupes on ce_id).

use std::time::Duration;

use rdkafka::{
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    message::{Header, Headers, Message, OwnedHeaders},
    producer::FutureRecord,
};
use testkit::eventually;
use testkit::unique_name;

use crate::support::System;

/// Everything the consumers could change, as comparable rows.
async fn state(sys: &System) -> Vec<String> {
    let booking = sys.booking_pool().await;
    let payment = sys.payment_pool().await;
    let mut rows: Vec<String> = Vec::new();
    for (pool, sql) in [
        (&booking, "select stream_id || ':' || stream_version || ':' || event_type from events order by 1"),
        (&booking, "select performance_id || seat_id || booking_id || status from seat_holds order by 1"),
        (&booking, "select booking_id || status from booking_view order by 1"),
        (&payment, "select stream_id || ':' || stream_version || ':' || event_type from events order by 1"),
        (&payment, "select transaction_id || account || direction || amount from ledger_entries order by 1"),
    ] {
        let part: Vec<String> = sqlx::query_scalar(sql).fetch_all(pool).await.unwrap();
        rows.extend(part);
    }
    rows
}

/// Re-publishes every record of `topic` with its key, value and headers.
async fn replay_topic(sys: &System, topic: &str) -> usize {
    republish(sys, topic, |_| true, |_, value| value.map(<[u8]>::to_vec)).await
}

/// Re-publishes the records of `topic` whose headers `pick` accepts, with
/// their key and value, each header value as `header` returns it.
async fn republish(
    sys: &System,
    topic: &str,
    pick: impl Fn(&[(String, Option<Vec<u8>>)]) -> bool,
    header: impl Fn(&str, Option<&[u8]>) -> Option<Vec<u8>>,
) -> usize {
    let reader: StreamConsumer = messaging::kafka::client_config(&sys.brokers)
        .set("group.id", unique_name("replayer"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    reader.subscribe(&[topic]).unwrap();
    // Read everything first, then publish: reading while publishing would
    // pick up our own copies forever.
    let mut records = Vec::new();
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), reader.recv()).await {
        let headers: Vec<(String, Option<Vec<u8>>)> = message
            .headers()
            .iter()
            .flat_map(|h| h.iter())
            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
            .collect();
        if pick(&headers) {
            records.push((message.key().map(<[u8]>::to_vec), message.payload().map(<[u8]>::to_vec), headers));
        }
    }
    let producer = messaging::kafka::producer(&sys.brokers).unwrap();
    let count = records.len();
    for (key, payload, headers) in &records {
        let mut owned = OwnedHeaders::new();
        for (k, v) in headers {
            owned = owned.insert(Header { key: k, value: header(k, v.as_deref()).as_deref() });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        producer.send(record, Duration::from_secs(10)).await.unwrap();
    }
    count
}

/// True once consumer `group`, whose offsets live in `db`, has handled
/// every record of every partition of `topic`.
async fn caught_up(sys: &System, db: &sqlx::PgPool, group: &str, topic: &str) -> bool {
    let stored: Vec<(i32, Option<i64>)> =
        sqlx::query_as("select partition, next_offset from consumer_partitions where consumer = $1 and topic = $2")
            .bind(group)
            .bind(topic)
            .fetch_all(db)
            .await
            .unwrap();
    let Some(partitions) = watermarks(sys, topic) else { return false };
    partitions.iter().all(|(id, marks)| {
        let Some((_, high)) = marks else { return false };
        let done = stored.iter().find(|(partition, _)| partition == id).and_then(|(_, next)| *next).unwrap_or(0);
        *high == 0 || done >= *high
    })
}

/// Records ever written to `topic` (0 if it does not exist).
fn records_in(sys: &System, topic: &str) -> i64 {
    let partitions = watermarks(sys, topic).unwrap_or_default();
    partitions.iter().filter_map(|(_, marks)| *marks).map(|(low, high)| high - low).sum()
}

/// A partition and its low and high watermarks (`None` where the broker did not say).
type Marks = (i32, Option<(i64, i64)>);

/// Each partition of `topic` with its watermarks; `None` if the topic's
/// metadata could not be read.
fn watermarks(sys: &System, topic: &str) -> Option<Vec<Marks>> {
    let probe: BaseConsumer = messaging::kafka::client_config(&sys.brokers).create().unwrap();
    let metadata = probe.fetch_metadata(Some(topic), Duration::from_secs(5)).ok()?;
    let partitions = metadata.topics().first()?.partitions().iter().map(|p| p.id()).collect::<Vec<_>>();
    Some(partitions.into_iter().map(|p| (p, probe.fetch_watermarks(topic, p, Duration::from_secs(5)).ok())).collect())
}

/// True once both consumer groups have handled every record of the topic they read.
async fn consumers_caught_up(sys: &System) -> bool {
    let (booking_db, payment_db) = (sys.booking_pool().await, sys.payment_pool().await);
    caught_up(sys, &booking_db, &sys.topics.group("booking-service"), &sys.topics.payment).await
        && caught_up(sys, &payment_db, &sys.topics.group("payment-service"), &sys.topics.booking).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_both_topics_from_the_start_changes_nothing() {
    let sys = System::start().await;
    let (confirmed, intent) = sys.book("replay_a", "perf_001", &["G10"]).await;
    sys.pay("replay_a", &intent, "tok_visa").await;
    let (cancelled, cancelled_intent) = sys.book("replay_b", "perf_001", &["G11"]).await;
    sys.wait_intent("replay_b", &cancelled_intent).await;
    sys.delete(&format!("/bookings/{cancelled}"), "replay_b").await;
    let (failed, failing) = sys.book("replay_c", "perf_002", &["B1"]).await;
    for _ in 0..3 {
        sys.pay("replay_c", &failing, "tok_chargeDeclined").await;
    }
    sys.wait_status("replay_a", &confirmed, "confirmed").await;
    sys.wait_status("replay_c", &failed, "failed").await;
    let all_handled = || async { consumers_caught_up(&sys).await.then_some(()) };
    let settled = eventually(Duration::from_secs(30), all_handled).await;
    assert!(settled.is_some(), "consumers caught up before the replay");
    assert!(sys.settled_violations().await.is_empty());
    let before = state(&sys).await;

    let replayed = replay_topic(&sys, &sys.topics.booking).await + replay_topic(&sys, &sys.topics.payment).await;
    assert!(replayed >= 10, "replayed {replayed} records");
    let drained = eventually(Duration::from_secs(60), all_handled).await;
    assert!(drained.is_some(), "consumers processed the replayed records");
    assert_eq!(state(&sys).await, before, "a replay changes no state");
    sys.stop().await;
}

/// A `SeatLocked` sent again under a new event id (an operator re-sending
/// from a backup, say) gets past the inbox; the payment-service appends the
/// intent's creation without reading its stream first, finds it taken, and
/// must then decide as for any command: the intent exists, nothing changes,
/// and the consumer goes on with the next booking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seat_locked_sent_again_under_a_new_id_creates_nothing_twice() {
    let sys = System::start().await;
    let (booking, intent) = sys.book("resend_a", "perf_001", &["G12"]).await;
    sys.wait_intent("resend_a", &intent).await;
    let all_handled = || async { consumers_caught_up(&sys).await.then_some(()) };
    assert!(eventually(Duration::from_secs(30), all_handled).await.is_some(), "caught up before the resend");
    let before = state(&sys).await;

    let seat_locked = |headers: &[(String, Option<Vec<u8>>)]| {
        headers.iter().any(|(k, v)| k == "ce_type" && v.as_deref().is_some_and(|v| v.ends_with(b".SeatLocked")))
            && headers.iter().any(|(k, v)| k == "ce_subject" && v.as_deref() == Some(booking.as_bytes()))
    };
    let new_id = |key: &str, value: Option<&[u8]>| {
        if key == "ce_id" {
            Some(uuid::Uuid::now_v7().to_string().into_bytes())
        } else {
            value.map(<[u8]>::to_vec)
        }
    };
    let resent = republish(&sys, &sys.topics.booking, seat_locked, new_id).await;
    assert_eq!(resent, 1, "the booking's SeatLocked was found and sent again");
    assert!(eventually(Duration::from_secs(60), all_handled).await.is_some(), "the resent record was handled");
    assert_eq!(state(&sys).await, before, "the intent was not created twice");
    assert_eq!(records_in(&sys, &messaging::kafka::dlq_topic(&sys.topics.booking)), 0, "nothing was dead-lettered");

    // New work still completes.
    let (next, next_intent) = sys.book("resend_b", "perf_001", &["G13"]).await;
    sys.wait_intent("resend_b", &next_intent).await;
    sys.pay("resend_b", &next_intent, "tok_visa").await;
    sys.wait_status("resend_b", &next, "confirmed").await;
    sys.stop().await;
}
