//! The event feed against a real event store: history in position order
//! then live, every event exactly once with writes racing the hand-over,
//! resuming after a position, the type filter, who may subscribe, the
//! subscriber limit, and a stalled subscriber that is ended without
//! slowing writers or other subscribers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::{append_one, fresh_db, JsonMapper};
use edge::auth::Verifier;
use futures::StreamExt;
use proto::feed::{event_feed_server::EventFeed, FeedEvent, SubscribeRequest};
use runtime::feed::{Feed, FeedSettings};
use sqlx::PgPool;
use tonic::{Code, Status};

const SECRET: &str = "a-feed-test-secret-of-at-least-32-bytes";

type Events = std::pin::Pin<Box<dyn futures::Stream<Item = Result<FeedEvent, Status>> + Send>>;

fn feed(pool: &PgPool, settings: FeedSettings) -> Feed {
    let verifier = Arc::new(Verifier::new(Some(SECRET), None, None).unwrap());
    let mapper = Arc::new(JsonMapper { topic: "feed-test".into() });
    Feed::new(pool.clone(), mapper, verifier, settings, edge::shutdown::Shutdown::new())
}

fn token(role: Option<&str>) -> String {
    edge::auth::issue_token_with_role(SECRET, "feed-reader", role, 600).unwrap()
}

async fn subscribe(feed: &Feed, role: Option<&str>, from: i64, types: &[&str]) -> Result<Events, Status> {
    let mut request = tonic::Request::new(SubscribeRequest {
        from_position: from,
        types: types.iter().map(|t| (*t).to_owned()).collect(),
    });
    request.metadata_mut().insert("authorization", format!("Bearer {}", token(role)).parse().unwrap());
    Ok(feed.subscribe(request).await?.into_inner())
}

/// The next `n` events, each within 10 s.
async fn take(events: &mut Events, n: usize) -> Vec<FeedEvent> {
    let mut taken = Vec::with_capacity(n);
    while taken.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
            Ok(Some(Ok(event))) => taken.push(event),
            other => panic!("after {} events: {other:?}", taken.len()),
        }
    }
    taken
}

/// Positions strictly grow, no event twice, each stream's sequence 1, 2, 3….
fn assert_in_order_once(events: &[FeedEvent]) {
    assert!(events.windows(2).all(|w| w[0].position < w[1].position), "positions grow");
    let ids: HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "no event twice");
    let mut next: HashMap<&str, i64> = HashMap::new();
    for event in events {
        let expected = next.entry(event.stream_id.as_str()).or_insert(1);
        assert_eq!(event.sequence, *expected, "stream {} has a gap or a repeat", event.stream_id);
        *expected += 1;
    }
}

#[tokio::test]
async fn history_then_live_every_event_exactly_once_with_writes_racing_the_hand_over() {
    let pool = fresh_db("feed_race").await;
    for n in 0..200 {
        append_one(&pool, &format!("s{}", n % 20), "a", n).await;
    }
    let feed = feed(&pool, FeedSettings::default());
    // Writers race the subscription: some of theirs land in the history,
    // some in the live part, some in between.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for n in 0..100 {
                    append_one(&pool, &format!("w{w}-{}", n % 10), "b", n).await;
                }
            })
        })
        .collect();
    // Subscribers join one after another while the writes go on: each
    // hands over from the store to the live tail at a different moment.
    let mut subscribers = Vec::new();
    for _ in 0..8 {
        subscribers.push(subscribe(&feed, Some("events"), 0, &[]).await.unwrap());
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|mut events| {
            tokio::spawn(async move {
                let seen = take(&mut events, 600).await;
                (events, seen)
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let mut read = Vec::new();
    for reader in readers {
        read.push(reader.await.unwrap());
    }
    for (_, seen) in &read {
        assert_in_order_once(seen);
    }
    let (mut events, seen) = read.pop().unwrap();
    // Nothing more than what was written.
    let extra = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
    assert!(extra.is_err(), "an event beyond the 600 written: {extra:?}");
    // And live goes on.
    append_one(&pool, "late", "a", 1).await;
    let late = take(&mut events, 1).await;
    assert_eq!(late[0].stream_id, "late");
    assert!(late[0].position > seen[599].position);
    assert_eq!(late[0].content_type, "application/protobuf");
    assert_eq!(late[0].r#type, "test.v1.a");
}

#[tokio::test]
async fn a_subscriber_resuming_after_its_last_position_gets_exactly_the_rest() {
    let pool = fresh_db("feed_resume").await;
    for n in 0..50 {
        append_one(&pool, &format!("s{}", n % 5), "a", n).await;
    }
    let feed = feed(&pool, FeedSettings::default());
    let mut first = subscribe(&feed, Some("events"), 0, &[]).await.unwrap();
    let all = take(&mut first, 50).await;
    drop(first);
    let mut again = subscribe(&feed, Some("events"), all[19].position, &[]).await.unwrap();
    let rest = take(&mut again, 30).await;
    let ids = |events: &[FeedEvent]| events.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&rest), ids(&all[20..]), "exactly the rest, in order");
    // A position no event has resumes after its whole transaction.
    let mut beyond = subscribe(&feed, Some("events"), all[49].position + 1, &[]).await.unwrap();
    append_one(&pool, "next", "a", 0).await;
    match tokio::time::timeout(Duration::from_secs(10), beyond.next()).await {
        Ok(Some(Ok(event))) => assert_eq!(event.stream_id, "next"),
        // Once seen in CI and never reproduced: say what held the log back.
        other => panic!(
            "no event after the last position: {other:?}; open transactions: {:?}",
            open_transactions(&pool).await
        ),
    }
}

/// Every transaction open in the cluster that holds an id or a snapshot
/// (an older one keeps committed events from global-log readers).
async fn open_transactions(pool: &PgPool) -> Vec<(Option<String>, Option<String>, Option<String>, Option<String>)> {
    sqlx::query_as(
        "select datname::text, state, (now() - xact_start)::text, left(query, 120) from pg_stat_activity \
          where backend_xid is not null or backend_xmin is not null order by xact_start",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default()
}

#[tokio::test]
async fn the_type_filter_and_who_may_subscribe() {
    let pool = fresh_db("feed_rules").await;
    for n in 0..20 {
        append_one(&pool, "s", if n % 2 == 0 { "a" } else { "b" }, n).await;
    }
    let feed = feed(&pool, FeedSettings::default());
    let mut only_b = subscribe(&feed, Some("admin"), 0, &["test.v1.b"]).await.unwrap();
    let b = take(&mut only_b, 10).await;
    assert!(b.iter().all(|e| e.r#type == "test.v1.b"));
    assert!(b.windows(2).all(|w| w[0].position < w[1].position));
    let denied = subscribe(&feed, None, 0, &[]).await.err().unwrap();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = subscribe(&feed, Some("user"), 0, &[]).await.err().unwrap();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let unauthenticated = feed.subscribe(tonic::Request::new(SubscribeRequest::default())).await.err().unwrap();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    let negative = subscribe(&feed, Some("events"), -1, &[]).await.err().unwrap();
    assert_eq!(negative.code(), Code::InvalidArgument);
    let empty_type = subscribe(&feed, Some("events"), 0, &[""]).await.err().unwrap();
    assert_eq!(empty_type.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn beyond_the_subscriber_limit_resource_exhausted_and_a_stalled_subscriber_ends_without_slowing_anyone() {
    let pool = fresh_db("feed_limits").await;
    let settings = FeedSettings { feed_max_subscribers: 2, feed_stall_secs: 1 };
    let feed = feed(&pool, settings);
    let stalled = subscribe(&feed, Some("events"), 0, &[]).await.unwrap();
    let mut reading = subscribe(&feed, Some("events"), 0, &[]).await.unwrap();
    let third = subscribe(&feed, Some("events"), 0, &[]).await.err().unwrap();
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    // Far more events than a subscriber buffers, while one reads nothing:
    // writers and the other subscriber go at full speed.
    let started = std::time::Instant::now();
    for n in 0..700 {
        append_one(&pool, &format!("s{}", n % 7), "a", n).await;
    }
    let written_in = started.elapsed();
    let seen = take(&mut reading, 700).await;
    assert_in_order_once(&seen);
    assert!(started.elapsed() < written_in + Duration::from_secs(5), "the reader kept up with the writers");
    // The stalled one is ended after its limit, told where to resume, and
    // gets what it had buffered first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ended: Vec<Result<FeedEvent, Status>> = stalled.collect().await;
    let (events, end): (Vec<_>, Vec<_>) = ended.into_iter().partition(Result::is_ok);
    let events: Vec<FeedEvent> = events.into_iter().map(Result::unwrap).collect();
    assert!(!events.is_empty() && events.len() < 700, "{} buffered", events.len());
    let status = end.into_iter().next().and_then(Result::err).expect("a status at the end");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let last = events.last().unwrap().position;
    assert!(status.message().contains(&format!("after position {last}")), "{}", status.message());
    // Its place is free again.
    let again = testkit::eventually(Duration::from_secs(5), || async {
        subscribe(&feed, Some("events"), last, &[]).await.ok()
    })
    .await;
    let mut again = again.expect("a subscriber after the stalled one ended");
    let rest = take(&mut again, 700 - events.len()).await;
    assert_eq!(rest.last().unwrap().event_id, seen[699].event_id, "resumed by position, nothing lost");
}
