//! The foundation's guarantees, against real PostgreSQL and a real
//! Kafka-protocol broker (tansu in CI, the embedded broker elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use common::*;
use rdkafka::producer::FutureRecord;
use shared::{
    event_store::{self, EventMetadata, EventStoreError, ExpectedVersion},
    global_log::read_after,
    inbox::{self, ConsumerSettings, EventHandler, HandlerError, IncomingEvent},
    kafka::{self, CloudEventHeaders},
    outbox::{self, RelaySettings},
    projection::{self, Projection, ProjectionError},
    shutdown::Shutdown,
    testkit::{eventually, unique_name, TestKafka},
    LogPosition,
};
use sqlx::{PgConnection, PgPool};

// ---------------------------------------------------------------- event store

#[tokio::test]
async fn append_with_a_stale_expected_version_conflicts_and_writes_nothing() {
    let pool = fresh_db("es_stale").await;
    let mut conn = pool.acquire().await.unwrap();
    let meta = EventMetadata { actor: Some("user_1".into()), ..Default::default() };
    let appended =
        event_store::append(&mut conn, "test", "s1", ExpectedVersion::NoStream, &[event("A", 1), event("B", 2)], &meta)
            .await
            .unwrap();

    let stale = event_store::append(&mut conn, "test", "s1", ExpectedVersion::Exact(1), &[event("C", 3)], &meta).await;
    assert!(matches!(stale, Err(EventStoreError::Conflict { actual: 2, .. })), "{stale:?}");
    let again = event_store::append(&mut conn, "test", "s1", ExpectedVersion::NoStream, &[event("C", 3)], &meta).await;
    assert!(matches!(again, Err(EventStoreError::Conflict { .. })));

    let stream = event_store::load_stream(&mut conn, "test", "s1").await.unwrap();
    let types: Vec<_> = stream.iter().map(|e| (e.event_type.as_str(), e.stream_version)).collect();
    assert_eq!(types, [("A", 1), ("B", 2)]);
    let returned: Vec<_> = appended.iter().map(|e| (e.event_id, e.stream_version, e.payload.clone())).collect();
    let loaded: Vec<_> = stream.iter().map(|e| (e.event_id, e.stream_version, e.payload.clone())).collect();
    assert_eq!(returned, loaded, "what append returns is what was stored, event by event");
    assert_eq!(stream[0].metadata.actor.as_deref(), Some("user_1"));
    assert_eq!(stream[0].event_id.get_version_num(), 7, "event ids are UUIDv7");
}

#[tokio::test]
async fn concurrent_appends_at_the_same_version_have_exactly_one_winner() {
    let pool = fresh_db("es_race").await;
    append_one(&pool, "s1", "Created", 0).await;
    let attempts = (0..16).map(|n| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            let result = event_store::append(
                &mut tx,
                "test",
                "s1",
                ExpectedVersion::Exact(1),
                &[event("Changed", n)],
                &EventMetadata::default(),
            )
            .await;
            match result {
                Ok(_) => tx.commit().await.map(|_| true).unwrap(),
                Err(EventStoreError::Conflict { .. }) => false,
                Err(other) => panic!("unexpected error {other}"),
            }
        })
    });
    let wins = futures::future::join_all(attempts).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(wins, 1);
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(event_store::load_stream(&mut conn, "test", "s1").await.unwrap().len(), 2);
}

// ---------------------------------------------------------------- outbox relay

struct RunningRelay {
    stop: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

fn start_relay(pool: &PgPool, brokers: &str, topic: &str, batch_size: i64) -> RunningRelay {
    let stop = Shutdown::new();
    let mut settings = RelaySettings::new("outbox", "/test-service");
    settings.batch_size = batch_size;
    settings.poll_interval = Duration::from_millis(50);
    settings.retry_backoff = Duration::from_millis(100);
    let task = tokio::spawn(outbox::run_relay(
        pool.clone(),
        outbox::RelayProducer::new(brokers),
        JsonMapper { topic: topic.to_owned() },
        settings,
        stop.clone(),
    ));
    RunningRelay { stop, task }
}

async fn relay_checkpoint(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select coalesce(max(last_position), 0) from subscription_checkpoints where subscription = 'outbox'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn topic_for(kafka: &TestKafka, prefix: &str) -> String {
    let topic = unique_name(prefix);
    kafka.create_topics(&[&topic], 3).await.unwrap();
    topic
}

#[tokio::test]
async fn relay_publishes_with_cloudevents_headers_keyed_by_stream() {
    let kafka = TestKafka::start().unwrap();
    let topic = topic_for(&kafka, "relay_headers").await;
    let pool = fresh_db("relay_headers").await;
    let appended = append_one(&pool, "booking-1", "SeatLocked", 1).await;
    let relay = start_relay(&pool, kafka.brokers(), &topic, 100);
    let got = read_records(&reader(kafka.brokers(), &topic), 1, Duration::from_secs(30)).await;
    relay.stop.cancel();
    relay.task.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, "booking-1");
    assert_eq!(got[0].ce_id, appended.event_id.to_string());
    assert_eq!(got[0].ce_type, "test.v1.SeatLocked");
}

#[tokio::test]
async fn an_event_appended_while_the_broker_is_down_is_published_once_it_is_back() {
    // Stopping a broker must not disturb other tests, so this one always
    // uses its own embedded broker.
    let kafka = TestKafka::embedded().unwrap();
    let broker = kafka.embedded_broker().unwrap();
    let topic = topic_for(&kafka, "relay_outage").await;
    let pool = fresh_db("relay_outage").await;
    broker.broker_down().unwrap();
    let appended = append_one(&pool, "booking-1", "SeatLocked", 1).await;
    let relay = start_relay(&pool, kafka.brokers(), &topic, 100);

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(relay_checkpoint(&pool).await, 0, "nothing is acknowledged while the broker is down");

    broker.broker_up().unwrap();
    let got = read_records(&reader(kafka.brokers(), &topic), 1, Duration::from_secs(60)).await;
    assert_eq!(got.first().map(|r| r.ce_id.clone()), Some(appended.event_id.to_string()));
    let advanced = eventually(Duration::from_secs(30), || async {
        (relay_checkpoint(&pool).await == appended.global_position).then_some(())
    })
    .await;
    assert!(advanced.is_some(), "checkpoint moves after the delivery report");
    relay.stop.cancel();
    relay.task.await.unwrap();
}

#[tokio::test]
async fn a_relay_killed_mid_batch_and_restarted_publishes_every_event_in_stream_order() {
    let kafka = TestKafka::start().unwrap();
    let topic = topic_for(&kafka, "relay_crash").await;
    let pool = fresh_db("relay_crash").await;
    let streams = ["b1", "b2", "b3", "b4", "b5"];
    let mut expected = 0;
    for n in 0..40 {
        for stream in streams {
            append_one(&pool, stream, "Step", n).await;
            expected += 1;
        }
    }
    // Small batches; abort (no graceful shutdown, no flush) after the first checkpoint.
    let relay = start_relay(&pool, kafka.brokers(), &topic, 7);
    eventually(Duration::from_secs(30), || async { (relay_checkpoint(&pool).await > 0).then_some(()) })
        .await
        .expect("first batch acknowledged");
    relay.task.abort();
    let _ = relay.task.await;
    let first_run = relay_checkpoint(&pool).await;
    assert!(first_run < 200, "the kill happened mid-stream ({first_run})");

    let relay = start_relay(&pool, kafka.brokers(), &topic, 7);
    let consumer = reader(kafka.brokers(), &topic);
    let mut got = Vec::new();
    let mut distinct = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while distinct.len() < expected && tokio::time::Instant::now() < deadline {
        for record in read_records(&consumer, 1, Duration::from_secs(1)).await {
            distinct.insert(record.ce_id.clone());
            got.push(record);
        }
    }
    relay.stop.cancel();
    relay.task.await.unwrap();
    assert_eq!(distinct.len(), expected, "every event was published at least once");

    // Per key, first sightings come in stream order (duplicates may follow).
    let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
    let mut first = std::collections::HashSet::new();
    for record in &got {
        assert_eq!(record.key, record.stream);
        if first.insert(record.ce_id.clone()) {
            seen.entry(record.key.clone()).or_default().push(record.version);
        }
    }
    for (key, versions) in seen {
        assert_eq!(versions, (1..=40).collect::<Vec<_>>(), "order of {key}");
    }
}

#[tokio::test]
async fn a_slow_transaction_that_commits_after_a_later_one_is_not_skipped() {
    let kafka = TestKafka::start().unwrap();
    let topic = topic_for(&kafka, "relay_gap").await;
    let pool = fresh_db("gap").await;
    let counts = StreamCounts;
    projection::ensure(&pool, &counts).await.unwrap();

    // The slow transaction takes the lower position and stays open...
    let mut slow = pool.begin().await.unwrap();
    let early = event_store::append(
        &mut slow,
        "test",
        "slow",
        ExpectedVersion::Any,
        &[event("A", 1)],
        &EventMetadata::default(),
    )
    .await
    .unwrap()
    .remove(0);
    // ...while a later one commits a higher position.
    let late = append_one(&pool, "fast", "B", 2).await;
    assert!(late.global_position > early.global_position);

    let relay = start_relay(&pool, kafka.brokers(), &topic, 100);
    projection::catch_up(&pool, &counts).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut conn = pool.acquire().await.unwrap();
    assert!(
        read_after(&mut conn, LogPosition::default(), 10).await.unwrap().is_empty(),
        "nothing past the open transaction"
    );
    assert_eq!(relay_checkpoint(&pool).await, 0);
    assert_eq!(stream_counts(&pool).await, HashMap::new());

    slow.commit().await.unwrap();
    projection::catch_up(&pool, &counts).await.unwrap();
    assert_eq!(stream_counts(&pool).await, HashMap::from([("slow".to_owned(), 1), ("fast".to_owned(), 1)]));
    let got = read_records(&reader(kafka.brokers(), &topic), 2, Duration::from_secs(30)).await;
    let mut ids: Vec<_> = got.iter().map(|r| r.ce_id.clone()).collect();
    ids.sort();
    let mut want = vec![early.event_id.to_string(), late.event_id.to_string()];
    want.sort();
    assert_eq!(ids, want);
    relay.stop.cancel();
    relay.task.await.unwrap();
}

// ---------------------------------------------------------------- inbox consumer

/// Records each event it handles. Rejects `ce_type`s ending in `Poison`
/// (deterministically) unless the database says the bug is fixed; fails
/// those ending in `Flaky` transiently until the database says it healed.
struct Recorder;

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, tx: &mut PgConnection, event: &IncomingEvent) -> Result<(), HandlerError> {
        let fixed: bool = sqlx::query_scalar("select exists (select 1 from handled_events where ce_type = 'fix')")
            .fetch_one(&mut *tx)
            .await?;
        if event.headers.event_type.ends_with("Poison") && !fixed {
            return Err(HandlerError::Poison("this handler rejects it".into()));
        }
        let healed: bool = sqlx::query_scalar("select exists (select 1 from handled_events where ce_type = 'heal')")
            .fetch_one(&mut *tx)
            .await?;
        if event.headers.event_type.ends_with("Flaky") && !healed {
            return Err(HandlerError::Transient(anyhow::anyhow!("the database is restarting")));
        }
        sqlx::query("insert into handled_events (event_id, ce_type) values ($1, $2)")
            .bind(event.event_id()?)
            .bind(&event.headers.event_type)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

async fn produce(kafka: &TestKafka, topic: &str, key: &str, ce_id: &str, ce_type: &str) {
    produce_to(kafka, topic, None, key, ce_id, ce_type).await;
}

async fn produce_to(kafka: &TestKafka, topic: &str, partition: Option<i32>, key: &str, ce_id: &str, ce_type: &str) {
    let producer = kafka::producer(kafka.brokers()).unwrap();
    let headers = CloudEventHeaders {
        id: ce_id.to_owned(),
        source: "/test".into(),
        event_type: ce_type.to_owned(),
        time: CloudEventHeaders::format_time(chrono::Utc::now()),
        subject: key.to_owned(),
        ..Default::default()
    };
    let mut record = FutureRecord::to(topic).key(key).payload(b"{}".as_slice()).headers(headers.to_kafka());
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    producer.send(record, Duration::from_secs(10)).await.unwrap();
}

fn start_consumer(pool: &PgPool, kafka: &TestKafka, topic: &str) -> (Shutdown, tokio::task::JoinHandle<()>) {
    let mut settings = ConsumerSettings::new(&unique_name("group"), &[topic]);
    settings.retry_backoff = Duration::from_millis(20);
    settings.max_backoff = Duration::from_millis(200);
    let stop = Shutdown::new();
    let task = tokio::spawn(inbox::run_consumer(
        pool.clone(),
        kafka.brokers().to_owned(),
        Recorder,
        settings,
        shared::health::Signals::default(),
        stop.clone(),
    ));
    (stop, task)
}

async fn handled(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("select ce_type from handled_events order by handled_at, ce_type").fetch_all(pool).await.unwrap()
}

#[tokio::test]
async fn a_consumer_fed_the_same_ce_id_twice_applies_it_once() {
    let kafka = TestKafka::start().unwrap();
    let topic = topic_for(&kafka, "inbox_dupe").await;
    let pool = fresh_db("inbox_dupe").await;
    let id = uuid::Uuid::now_v7().to_string();
    produce(&kafka, &topic, "k", &id, "test.v1.First").await;
    produce(&kafka, &topic, "k", &id, "test.v1.First").await;
    produce(&kafka, &topic, "k", &uuid::Uuid::now_v7().to_string(), "test.v1.Second").await;
    let (stop, task) = start_consumer(&pool, &kafka, &topic);
    let done = eventually(Duration::from_secs(60), || async { (handled(&pool).await.len() >= 2).then_some(()) }).await;
    assert!(done.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(handled(&pool).await, ["test.v1.First", "test.v1.Second"]);
    let inbox_rows: i64 = sqlx::query_scalar("select count(*) from inbox").fetch_one(&pool).await.unwrap();
    assert_eq!(inbox_rows, 2);
}

#[tokio::test]
async fn a_backlog_of_one_partition_is_handled_in_shared_transactions_and_a_poison_record_among_it_still_goes_alone() {
    let kafka = TestKafka::start().unwrap();
    let topic = topic_for(&kafka, "inbox_batch").await;
    let pool = fresh_db("inbox_batch").await;
    // A backlog on one key (one partition), read in one round: a repeated
    // ce_id, and a poison record in the middle.
    let repeated = uuid::Uuid::now_v7().to_string();
    let poison_id = uuid::Uuid::now_v7().to_string();
    for n in 0..40 {
        let id = match n {
            10 | 11 => repeated.clone(),
            20 => poison_id.clone(),
            _ => uuid::Uuid::now_v7().to_string(),
        };
        let ce_type = if n == 20 { "test.v1.Poison".to_owned() } else { format!("test.v1.N{n:02}") };
        produce(&kafka, &topic, "k", &id, &ce_type).await;
    }
    let (stop, task) = start_consumer(&pool, &kafka, &topic);
    let done = eventually(Duration::from_secs(60), || async { (handled(&pool).await.len() >= 38).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    task.await.unwrap();
    assert!(done.is_some(), "the backlog was handled: {:?}", handled(&pool).await);
    let mut seen = handled(&pool).await;
    seen.sort();
    let expected: Vec<String> = (0..40).filter(|n| *n != 11 && *n != 20).map(|n| format!("test.v1.N{n:02}")).collect();
    assert_eq!(seen, expected, "each applied once; the repeated ce_id once; the poison one not");
    let dead = read_dlq(&reader(kafka.brokers(), &kafka::dlq_topic(&topic))).await;
    assert_eq!(dead.0, poison_id, "the poison record went to the DLQ on its own");
}

#[tokio::test]
async fn a_poison_record_goes_to_the_dlq_and_the_partition_moves_on() {
    let kafka = TestKafka::start().unwrap();
    let topic = topic_for(&kafka, "inbox_dlq").await;
    let pool = fresh_db("inbox_dlq").await;
    let poison_id = uuid::Uuid::now_v7().to_string();
    // Same key, so same partition: the good record sits behind the poison one.
    produce(&kafka, &topic, "k", &poison_id, "test.v1.Poison").await;
    produce(&kafka, &topic, "k", &uuid::Uuid::now_v7().to_string(), "test.v1.After").await;
    let (stop, task) = start_consumer(&pool, &kafka, &topic);
    let done = eventually(Duration::from_secs(60), || async { (!handled(&pool).await.is_empty()).then_some(()) }).await;
    stop.cancel();
    task.await.unwrap();
    assert!(done.is_some(), "the record after the poison one was processed");
    assert_eq!(handled(&pool).await, ["test.v1.After"]);

    let dlq = reader(kafka.brokers(), &kafka::dlq_topic(&topic));
    let dead = read_dlq(&dlq).await;
    assert_eq!(dead.0, poison_id);
    assert!(dead.1.contains("rejects it"), "reason recorded: {}", dead.1);

    // Fix the "bug", re-drive the DLQ: the record is handled; a second re-drive sends nothing.
    sqlx::query("insert into handled_events (event_id, ce_type) values ($1, 'fix')")
        .bind(uuid::Uuid::now_v7())
        .execute(&pool)
        .await
        .unwrap();
    let group = unique_name("redrive");
    let sent = shared::dlq::redrive(kafka.brokers(), &topic, &group, Duration::from_secs(5)).await.unwrap();
    assert_eq!(sent, 1);
    let (stop, task) = start_consumer(&pool, &kafka, &topic);
    let handled_now = eventually(Duration::from_secs(60), || async {
        handled(&pool).await.contains(&"test.v1.Poison".to_owned()).then_some(())
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    assert!(handled_now.is_some(), "the re-driven record was handled");
    assert_eq!(shared::dlq::redrive(kafka.brokers(), &topic, &group, Duration::from_secs(3)).await.unwrap(), 0);
}

#[tokio::test]
async fn idempotency_keys_replay_until_purged() {
    use shared::idempotency::{self, Begin, StoredOutcome};
    let pool = fresh_db("idem_purge").await;
    let lease = Duration::from_secs(60);
    let Begin::Proceed(claim) = idempotency::begin(&pool, "u1", "op", "k", "body-a", lease).await.unwrap() else {
        panic!("a new key proceeds");
    };
    assert_eq!(idempotency::begin(&pool, "u1", "op", "k", "body-a", lease).await.unwrap(), Begin::InProgress);
    let outcome = StoredOutcome::Ok { value: serde_json::json!({"n": 1}) };
    idempotency::complete(&mut pool.acquire().await.unwrap(), &claim, &outcome).await.unwrap();
    assert_eq!(idempotency::begin(&pool, "u1", "op", "k", "body-a", lease).await.unwrap(), Begin::Replay(outcome));
    assert_eq!(idempotency::begin(&pool, "u1", "op", "k", "body-b", lease).await.unwrap(), Begin::Mismatch);
    assert!(matches!(idempotency::begin(&pool, "u2", "op", "k", "body-b", lease).await.unwrap(), Begin::Proceed(_)));
    // After the retention the key is new again.
    assert_eq!(idempotency::purge(&pool, Duration::ZERO).await.unwrap(), 2);
    assert!(matches!(idempotency::begin(&pool, "u1", "op", "k", "body-b", lease).await.unwrap(), Begin::Proceed(_)));
}

#[tokio::test]
async fn an_in_flight_key_whose_holder_died_is_taken_over_after_its_lease() {
    use shared::idempotency::{self, Begin};
    let pool = fresh_db("idem_lease").await;
    let short = Duration::from_secs(1);
    assert!(matches!(idempotency::begin(&pool, "u1", "op", "k", "b", short).await.unwrap(), Begin::Proceed(_)));
    assert_eq!(idempotency::begin(&pool, "u1", "op", "k", "b", short).await.unwrap(), Begin::InProgress);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(idempotency::begin(&pool, "u1", "op", "k", "b", short).await.unwrap(), Begin::Proceed(_)));
}

#[tokio::test]
async fn a_transient_failure_pauses_only_its_partition_and_is_retried_until_it_heals_never_dead_lettered() {
    let kafka = TestKafka::start().unwrap();
    let topic = topic_for(&kafka, "inbox_transient").await;
    let pool = fresh_db("inbox_transient").await;
    let id = || uuid::Uuid::now_v7().to_string();
    produce_to(&kafka, &topic, Some(0), "k0", &id(), "test.v1.Flaky").await;
    produce_to(&kafka, &topic, Some(0), "k0", &id(), "test.v1.Behind").await;
    produce_to(&kafka, &topic, Some(1), "k1", &id(), "test.v1.Elsewhere").await;
    let (stop, task) = start_consumer(&pool, &kafka, &topic);

    // The other partition moves on while partition 0 waits, in order.
    let elsewhere = eventually(Duration::from_secs(60), || async {
        handled(&pool).await.contains(&"test.v1.Elsewhere".to_owned()).then_some(())
    })
    .await;
    assert!(elsewhere.is_some(), "the healthy partition was consumed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(handled(&pool).await, ["test.v1.Elsewhere"], "nothing behind the failing record ran");

    // The failure ends: the record and the one behind it apply, in order.
    sqlx::query("insert into handled_events (event_id, ce_type) values ($1, 'heal')")
        .bind(uuid::Uuid::now_v7())
        .execute(&pool)
        .await
        .unwrap();
    let healed = eventually(Duration::from_secs(30), || async {
        handled(&pool).await.contains(&"test.v1.Behind".to_owned()).then_some(())
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    assert!(healed.is_some(), "the retried record and the one behind it were applied");
    let order: Vec<String> =
        handled(&pool).await.into_iter().filter(|t| t == "test.v1.Flaky" || t == "test.v1.Behind").collect();
    assert_eq!(order, ["test.v1.Flaky", "test.v1.Behind"]);
    let dlq = reader(kafka.brokers(), &kafka::dlq_topic(&topic));
    let dead = tokio::time::timeout(Duration::from_secs(5), dlq.recv()).await;
    assert!(dead.is_err(), "nothing was dead-lettered");
}

async fn read_dlq(consumer: &rdkafka::consumer::StreamConsumer) -> (String, String) {
    use rdkafka::message::{Headers, Message};
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.unwrap().unwrap();
    let header = |name: &str| {
        message
            .headers()
            .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    (header("ce_id"), header("dlq_reason"))
}

// ---------------------------------------------------------------- projections

/// Counts events per stream.
struct StreamCounts;

#[async_trait]
impl Projection for StreamCounts {
    fn name(&self) -> &'static str {
        "stream_counts"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["stream_counts"]
    }
    fn create_tables_sql(&self) -> &'static str {
        "create table stream_counts (stream_id text primary key, events bigint not null, last_type text not null)"
    }
    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &shared::event_store::StoredEvent,
    ) -> Result<(), ProjectionError> {
        sqlx::query(
            "insert into stream_counts (stream_id, events, last_type) values ($1, 1, $2) \
             on conflict (stream_id) do update set events = stream_counts.events + 1, last_type = excluded.last_type",
        )
        .bind(&event.stream_id)
        .bind(&event.event_type)
        .execute(conn)
        .await?;
        Ok(())
    }
}

async fn stream_counts(pool: &PgPool) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("select stream_id, events from stream_counts")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn full_view(pool: &PgPool) -> Vec<(String, i64, String)> {
    sqlx::query_as("select stream_id, events, last_type from stream_counts order by stream_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_projection_rebuilt_from_zero_equals_the_live_one() {
    let pool = fresh_db("proj_rebuild").await;
    projection::ensure(&pool, &StreamCounts).await.unwrap();
    let stop = Shutdown::new();
    let live = tokio::spawn(projection::run(pool.clone(), StreamCounts, Duration::from_millis(50), stop.clone()));
    for n in 0..120 {
        append_one(&pool, &format!("s{}", n % 7), if n % 2 == 0 { "Even" } else { "Odd" }, n).await;
    }
    // Rebuild while the live runner is working and events keep coming.
    let writer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for n in 120..180 {
                append_one(&pool, &format!("s{}", n % 7), "Late", n).await;
            }
        })
    };
    let replayed = projection::rebuild(&pool, &StreamCounts).await.unwrap();
    assert!(replayed >= 120);
    writer.await.unwrap();
    let caught_up = eventually(Duration::from_secs(30), || async {
        let total: i64 = stream_counts(&pool).await.values().sum();
        (total == 180).then_some(())
    })
    .await;
    stop.cancel();
    live.await.unwrap();
    assert!(caught_up.is_some(), "the swapped-in view keeps following the log");
    let after_rebuild = full_view(&pool).await;

    // A second rebuild from zero reproduces the same rows exactly.
    projection::rebuild(&pool, &StreamCounts).await.unwrap();
    assert_eq!(full_view(&pool).await, after_rebuild);
    let schemas: i64 =
        sqlx::query_scalar("select count(*) from pg_namespace where nspname like 'proj_stream_counts_%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(schemas, 1, "old schemas are dropped after the swap");
}
