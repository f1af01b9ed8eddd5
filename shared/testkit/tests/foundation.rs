//! The foundation's guarantees, against real PostgreSQL and a real
//! Kafka-protocol broker (tansu in CI, the embedded broker elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use common::*;
use edge::shutdown::Shutdown;
use kernel::event_store;
use kernel::event_store::EventMetadata;
use kernel::event_store::EventStoreError;
use kernel::event_store::ExpectedVersion;
use kernel::global_log::read_after;
use kernel::projection;
use kernel::projection::Projection;
use kernel::projection::ProjectionError;
use kernel::LogPosition;
use messaging::outbox;
use messaging::outbox::RelaySettings;
use sqlx::{PgConnection, PgPool};
use testkit::eventually;
use testkit::TestKafka;

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
    start_relay_polling(pool, brokers, topic, batch_size, Duration::from_millis(50))
}

fn start_relay_polling(pool: &PgPool, brokers: &str, topic: &str, batch_size: i64, poll: Duration) -> RunningRelay {
    let stop = Shutdown::new();
    let mut settings = RelaySettings::new("outbox", "/test-service");
    settings.batch_size = batch_size;
    settings.poll_interval = poll;
    settings.retry_backoff = Duration::from_millis(100);
    let task = tokio::spawn(outbox::run_relay(
        pool.clone(),
        outbox::RelayProducer::new(brokers),
        JsonMapper { topic: topic.to_owned() },
        settings,
        std::sync::Arc::default(),
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

#[tokio::test]
async fn relay_publishes_with_cloudevents_headers_keyed_by_stream() {
    let kafka = TestKafka::start().unwrap();
    let topic = topic_for(&kafka, "relay_headers").await;
    let pool = fresh_db("relay_headers").await;
    let appended = append_one(&pool, "booking-1", "SeatLocked", 1).await;
    append_one(&pool, "booking-2", "SeatLocked", 1).await;
    append_one(&pool, "booking-1", "BookingConfirmed", 2).await;
    let relay = start_relay(&pool, kafka.brokers(), &topic, 100);
    let got = read_records(&reader(kafka.brokers(), &topic), 3, Duration::from_secs(30)).await;
    relay.stop.cancel();
    relay.task.await.unwrap();
    assert_eq!(got.len(), 3);
    let first = got.iter().find(|r| r.ce_id == appended.event_id.to_string()).unwrap();
    assert_eq!((first.key.as_str(), first.ce_type.as_str()), ("booking-1", "test.v1.SeatLocked"));
    let booking_1: Vec<(Option<i64>, Option<i64>)> =
        got.iter().filter(|r| r.key == "booking-1").map(|r| (r.sequence, r.position)).collect();
    assert_eq!(booking_1.iter().map(|r| r.0).collect::<Vec<_>>(), [Some(1), Some(2)], "ce_sequence per booking");
    let mut positions: Vec<i64> = got.iter().map(|r| r.position.unwrap()).collect();
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), 3, "ce_position is unique");
    assert!(booking_1[0].1 < booking_1[1].1, "and grows in commit order");
}

#[tokio::test]
async fn an_event_appended_while_the_broker_is_down_is_published_once_it_is_back() {
    // Stopping a broker must not disturb other tests, so this one always
    // uses its own embedded broker.
    let kafka = TestKafka::embedded().unwrap();
    let topic = topic_for(&kafka, "relay_outage").await;
    let pool = fresh_db("relay_outage").await;
    kafka.broker_down();
    let appended = append_one(&pool, "booking-1", "SeatLocked", 1).await;
    let relay = start_relay(&pool, kafka.brokers(), &topic, 100);

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(relay_checkpoint(&pool).await, 0, "nothing is acknowledged while the broker is down");

    kafka.broker_up();
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
        read_after(&mut conn, LogPosition::default(), 10).await.unwrap().events.is_empty(),
        "nothing past the open transaction"
    );
    assert!(read_after(&mut conn, LogPosition::default(), 10).await.unwrap().held_back, "and it says so");
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

#[tokio::test]
async fn an_event_held_back_by_another_databases_transaction_goes_out_when_it_ends_not_at_the_next_poll() {
    let kafka = TestKafka::start().unwrap();
    let topic = topic_for(&kafka, "relay_held").await;
    let pool = fresh_db("held").await;
    let other = fresh_db("held_other").await;
    // The relay would poll only every ten minutes: only a wake-up moves it.
    let relay = start_relay_polling(&pool, kafka.brokers(), &topic, 100, Duration::from_secs(600));

    // Transaction ids are cluster-wide: an open transaction in another
    // database holds our later commit back, and its commit tells us nothing.
    let mut elsewhere = other.begin().await.unwrap();
    sqlx::query("select pg_current_xact_id()").execute(&mut *elsewhere).await.unwrap();
    let held = append_one(&pool, "held", "A", 1).await;
    kernel::global_log::committed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(relay_checkpoint(&pool).await, 0, "held back while the older transaction is open");

    elsewhere.commit().await.unwrap();
    let published = eventually(Duration::from_secs(10), || async {
        (relay_checkpoint(&pool).await == held.global_position).then_some(())
    })
    .await;
    assert!(published.is_some(), "published within seconds of the other transaction's end");
    let got = read_records(&reader(kafka.brokers(), &topic), 1, Duration::from_secs(30)).await;
    assert_eq!(got.iter().map(|r| r.ce_id.clone()).collect::<Vec<_>>(), [held.event_id.to_string()]);
    relay.stop.cancel();
    relay.task.await.unwrap();
}

#[tokio::test]
async fn idempotency_keys_replay_until_purged() {
    use runtime::idempotency;
    use runtime::idempotency::Begin;
    use runtime::idempotency::StoredOutcome;
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
    use runtime::idempotency;
    use runtime::idempotency::Begin;
    let pool = fresh_db("idem_lease").await;
    let short = Duration::from_secs(1);
    assert!(matches!(idempotency::begin(&pool, "u1", "op", "k", "b", short).await.unwrap(), Begin::Proceed(_)));
    assert_eq!(idempotency::begin(&pool, "u1", "op", "k", "b", short).await.unwrap(), Begin::InProgress);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(idempotency::begin(&pool, "u1", "op", "k", "b", short).await.unwrap(), Begin::Proceed(_)));
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
        event: &kernel::event_store::StoredEvent,
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
