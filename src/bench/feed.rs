//! `feed`: the event feed of the booking-service, measured. First a
//! history of `history` bookings (SeatLocked events) is made through the
//! gateway; then a subscriber reads it from position 0 (catch-up: events
//! per second, and each process's CPU per event); then, with that
//! subscriber live, bookings arrive at `rate` per second and each event's
//! latency from its commit to the subscriber is recorded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use proto::feed::{event_feed_client::EventFeedClient, FeedEvent, SubscribeRequest};
use serde_json::{json, Value};

use super::{histogram, latency, micros, procs::Watched, Target};

/// One run.
pub struct FeedRun {
    /// The system.
    pub target: Arc<Target>,
    /// The booking-service's gRPC URL.
    pub booking_grpc: String,
    /// Bookings made before the subscriber starts.
    pub history: usize,
    /// Bookings per second while the subscriber is live.
    pub rate: u32,
    /// How long the live part lasts.
    pub live_for: Duration,
    /// Concurrent clients making the history.
    pub clients: usize,
}

type Events = tonic::Streaming<FeedEvent>;

/// Runs it and returns the report.
pub async fn feed(run: FeedRun, watched: &Watched) -> anyhow::Result<Value> {
    let rows = (run.history + run.rate as usize * run.live_for.as_secs() as usize * 2).div_ceil(500).max(1);
    let seats = Arc::new(super::register_performance(&run.target, "perf_feed", rows).await?);
    println!("bench: feed: making a history of {} bookings", run.history);
    let made = history(&run, seats.clone()).await;
    // Let the pipeline settle, so the catch-up is measured alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = watched.sample();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_cores = watched.sample().cores_since(&idle);

    println!("bench: feed: catching up from position 0");
    let mut events = subscribe(&run).await?;
    let before = watched.sample();
    let started = Instant::now();
    let mut caught_up = 0_usize;
    while caught_up < made {
        match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
            Ok(Some(Ok(_))) => caught_up += 1,
            other => anyhow::bail!("the feed stopped after {caught_up} of {made} events: {other:?}"),
        }
    }
    let took = started.elapsed();
    let after = watched.sample();
    let per_event = after.ms_per_op_since(&before, caught_up as u64, &idle_cores);

    println!("bench: feed: live, {} bookings/s for {:?}", run.rate, run.live_for);
    let live = live(&run, seats, made, &mut events).await?;
    Ok(json!({
        "history_events": made,
        "catch_up": {
            "events": caught_up,
            "seconds": took.as_secs_f64(),
            "events_per_sec": caught_up as f64 / took.as_secs_f64().max(1e-9),
            "cpu_ms_per_event": per_event,
        },
        "live": live,
        "idle_cores": idle_cores,
        "rss_mib": watched.rss(),
    }))
}

async fn subscribe(run: &FeedRun) -> anyhow::Result<Events> {
    let mut client = EventFeedClient::connect(run.booking_grpc.clone()).await?;
    let token = edge::auth::issue_token_with_role(&run.target.secret, "bench_feed", Some("events"), 3_600)?;
    let mut request = tonic::Request::new(SubscribeRequest { from_position: 0, types: vec![] });
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(client.subscribe(request).await?.into_inner())
}

/// `history` bookings by `clients` clients; how many were made.
async fn history(run: &FeedRun, seats: Arc<Vec<String>>) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let made = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..run.clients)
        .map(|c| {
            let (target, seats, next, made, history) =
                (run.target.clone(), seats.clone(), next.clone(), made.clone(), run.history);
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= history {
                        break;
                    }
                    let (status, _, _) = super::book(&target, &format!("h{c}_{n}"), "perf_feed", &seats[n]).await;
                    if status == Some(201) {
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    made.load(Ordering::Relaxed)
}

/// Bookings at `rate` per second while `events` is live; each SeatLocked's
/// time from its commit (`time`) to its arrival here.
async fn live(run: &FeedRun, seats: Arc<Vec<String>>, first: usize, events: &mut Events) -> anyhow::Result<Value> {
    let count = run.rate as usize * run.live_for.as_secs() as usize;
    let every = Duration::from_secs(1) / run.rate.max(1);
    let target = run.target.clone();
    let booker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut made = 0_usize;
        let mut sent = Vec::with_capacity(count);
        for n in first..first + count {
            tick.tick().await;
            let (target, seats) = (target.clone(), seats.clone());
            sent.push(tokio::spawn(async move {
                super::book(&target, &format!("l{n}"), "perf_feed", &seats[n]).await.0 == Some(201)
            }));
        }
        for booking in sent {
            made += usize::from(booking.await.unwrap_or(false));
        }
        made
    });
    let mut latencies = histogram();
    let mut received = 0_usize;
    while received < count {
        let Ok(Some(Ok(event))) = tokio::time::timeout(Duration::from_secs(10), events.next()).await else { break };
        let committed = event.time.as_ref().and_then(proto::time::from_timestamp);
        if let Some(committed) = committed {
            let waited = (chrono::Utc::now() - committed).to_std().unwrap_or_default();
            let _ = latencies.record(micros(waited));
        }
        received += 1;
    }
    let made = booker.await.unwrap_or(0);
    Ok(json!({
        "bookings": made,
        "events_received": received,
        "commit_to_subscriber": latency(&latencies),
    }))
}
