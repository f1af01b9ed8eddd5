//! The Kafka consumer's guarantees, against real PostgreSQL and a real
//! Kafka-protocol broker (tansu in CI, the embedded broker elsewhere): each
//! event applied once, poison and permanent refusals dead-lettered, transient
//! failures retried in order, backlogs batched, and partitions that move to
//! a live member the moment their holder is gone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use async_trait::async_trait;
use common::*;
use edge::shutdown::Shutdown;
use messaging::inbox;
use messaging::inbox::ConsumerSettings;
use messaging::inbox::EventHandler;
use messaging::inbox::HandlerError;
use messaging::inbox::IncomingEvent;
use messaging::kafka;
use messaging::kafka::CloudEventHeaders;
use rdkafka::producer::FutureRecord;
use sqlx::{PgConnection, PgPool};
use testkit::eventually;
use testkit::unique_name;
use testkit::TestKafka;

/// Records each event it handles. Rejects `ce_type`s ending in `Poison`
/// (deterministically) unless the database says the bug is fixed; fails
/// those ending in `Flaky` transiently until the database says it healed;
/// writes what the database refuses (a null in a not-null column) for
/// those ending in `Constraint`.
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
        let ce_type = Some(&event.headers.event_type).filter(|t| !t.ends_with("Constraint"));
        sqlx::query("insert into handled_events (event_id, ce_type) values ($1, $2)")
            .bind(event.event_id()?)
            .bind(ce_type)
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
    start_member(pool, kafka, topic, &unique_name("group"))
}

/// A member of consumer `group`.
fn start_member(pool: &PgPool, kafka: &TestKafka, topic: &str, group: &str) -> (Shutdown, tokio::task::JoinHandle<()>) {
    let mut settings = ConsumerSettings::new(group, &[topic]);
    settings.retry_backoff = Duration::from_millis(20);
    settings.max_backoff = Duration::from_millis(200);
    let stop = Shutdown::new();
    let task = tokio::spawn(inbox::run_consumer(
        pool.clone(),
        kafka.brokers().to_owned(),
        Recorder,
        settings,
        messaging::Signals::default(),
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
    let transactions: i64 =
        sqlx::query_scalar("select count(distinct tx_id::text) from handled_events").fetch_one(&pool).await.unwrap();
    assert!(transactions < 20, "38 records shared transactions: {transactions} transactions");
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
    let sent =
        messaging::inbox::redrive::redrive(kafka.brokers(), &topic, &group, Duration::from_secs(5)).await.unwrap();
    assert_eq!(sent, 1);
    let (stop, task) = start_consumer(&pool, &kafka, &topic);
    let handled_now = eventually(Duration::from_secs(60), || async {
        handled(&pool).await.contains(&"test.v1.Poison".to_owned()).then_some(())
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    assert!(handled_now.is_some(), "the re-driven record was handled");
    assert_eq!(
        messaging::inbox::redrive::redrive(kafka.brokers(), &topic, &group, Duration::from_secs(3)).await.unwrap(),
        0
    );
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
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.unwrap().unwrap();
    (header_of(&message, "ce_id"), header_of(&message, "dlq_reason"))
}

#[tokio::test]
async fn a_record_the_database_refuses_for_good_is_dead_lettered_after_a_few_tries_and_the_partition_moves_on() {
    let kafka = TestKafka::start().unwrap();
    let topic = topic_for(&kafka, "inbox_permanent").await;
    let pool = fresh_db("inbox_permanent").await;
    let refused = uuid::Uuid::now_v7().to_string();
    produce(&kafka, &topic, "k", &refused, "test.v1.Constraint").await;
    produce(&kafka, &topic, "k", &uuid::Uuid::now_v7().to_string(), "test.v1.After").await;
    let (stop, task) = start_consumer(&pool, &kafka, &topic);
    let done = eventually(Duration::from_secs(60), || async { (!handled(&pool).await.is_empty()).then_some(()) }).await;
    stop.cancel();
    task.await.unwrap();
    assert!(done.is_some(), "the record behind the refused one was applied");
    assert_eq!(handled(&pool).await, ["test.v1.After"]);
    let (ce_id, reason) = read_dlq(&reader(kafka.brokers(), &kafka::dlq_topic(&topic))).await;
    assert_eq!(ce_id, refused);
    assert!(reason.contains("SQLSTATE 23502") && reason.contains("3 times"), "the reason names the refusal: {reason}");
}

/// Where the consumer stands in each partition, by owner.
async fn leases(pool: &PgPool) -> Vec<(i32, Option<i64>, Option<String>)> {
    sqlx::query_as("select partition, next_offset, owner from consumer_partitions order by partition")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn two_members_share_the_partitions_and_a_dead_members_partitions_move_to_the_survivor_at_once() {
    let kafka = TestKafka::start().unwrap();
    let topic = topic_for(&kafka, "inbox_members").await;
    let pool = fresh_db("inbox_members").await;
    let group = unique_name("members");
    let (stop_a, task_a) = start_member(&pool, &kafka, &topic, &group);
    let first = eventually(Duration::from_secs(30), || async { (leases(&pool).await.len() == 3).then_some(()) }).await;
    assert!(first.is_some(), "a lone member leases every partition");
    let (stop_b, task_b) = start_member(&pool, &kafka, &topic, &group);
    let shared = eventually(Duration::from_secs(30), || async {
        let owners: std::collections::BTreeSet<Option<String>> = leases(&pool).await.into_iter().map(|l| l.2).collect();
        (owners.len() == 2).then_some(())
    })
    .await;
    assert!(shared.is_some(), "a second member gets a share: {:?}", leases(&pool).await);
    for partition in 0..3 {
        produce_to(&kafka, &topic, Some(partition), "k", &uuid::Uuid::now_v7().to_string(), "test.v1.Before").await;
    }
    let before =
        eventually(Duration::from_secs(30), || async { (handled(&pool).await.len() == 3).then_some(()) }).await;
    assert!(before.is_some(), "both members work their partitions");

    // Member b dies without a word (its task and lease session are gone at once).
    task_b.abort();
    let _ = task_b.await;
    stop_b.cancel();
    let died = std::time::Instant::now();
    for partition in 0..3 {
        produce_to(&kafka, &topic, Some(partition), "k", &uuid::Uuid::now_v7().to_string(), "test.v1.After").await;
    }
    let after = eventually(Duration::from_secs(30), || async { (handled(&pool).await.len() == 6).then_some(()) }).await;
    assert!(after.is_some(), "the survivor took every partition over");
    assert!(died.elapsed() < Duration::from_secs(10), "within seconds, not a session timeout: {:?}", died.elapsed());
    stop_a.cancel();
    task_a.await.unwrap();
    let offsets: i64 = leases(&pool).await.iter().filter_map(|l| l.1).sum();
    assert_eq!(offsets, 6, "each partition's offset is stored past its two records");

    // A restarted member resumes where the offsets stand: nothing is applied again.
    let (stop, task) = start_member(&pool, &kafka, &topic, &group);
    produce_to(&kafka, &topic, Some(0), "k", &uuid::Uuid::now_v7().to_string(), "test.v1.Restarted").await;
    let resumed =
        eventually(Duration::from_secs(30), || async { (handled(&pool).await.len() == 7).then_some(()) }).await;
    stop.cancel();
    task.await.unwrap();
    assert!(resumed.is_some(), "the restarted member consumed the new record");
    let duplicates: i64 = sqlx::query_scalar("select count(*) - count(distinct event_id) from handled_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(duplicates, 0);
}
