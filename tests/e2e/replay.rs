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
        records.push((message.key().map(<[u8]>::to_vec), message.payload().map(<[u8]>::to_vec), headers));
    }
    let producer = messaging::kafka::producer(&sys.brokers).unwrap();
    let count = records.len();
    for (key, payload, headers) in &records {
        let mut owned = OwnedHeaders::new();
        for (k, v) in headers {
            owned = owned.insert(Header { key: k, value: v.as_deref() });
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
    let probe: BaseConsumer = messaging::kafka::client_config(&sys.brokers).create().unwrap();
    let Ok(metadata) = probe.fetch_metadata(Some(topic), Duration::from_secs(5)) else { return false };
    let Some(t) = metadata.topics().first() else { return false };
    let stored: Vec<(i32, Option<i64>)> =
        sqlx::query_as("select partition, next_offset from consumer_partitions where consumer = $1 and topic = $2")
            .bind(group)
            .bind(topic)
            .fetch_all(db)
            .await
            .unwrap();
    t.partitions().iter().all(|p| {
        let Ok((_, high)) = probe.fetch_watermarks(topic, p.id(), Duration::from_secs(5)) else { return false };
        let done = stored.iter().find(|(partition, _)| *partition == p.id()).and_then(|(_, next)| *next).unwrap_or(0);
        high == 0 || done >= high
    })
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
    let (booking_group, payment_group) = (sys.topics.group("booking-service"), sys.topics.group("payment-service"));
    let (booking_db, payment_db) = (sys.booking_pool().await, sys.payment_pool().await);
    let all_handled = || async {
        (caught_up(&sys, &booking_db, &booking_group, &sys.topics.payment).await
            && caught_up(&sys, &payment_db, &payment_group, &sys.topics.booking).await)
            .then_some(())
    };
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
