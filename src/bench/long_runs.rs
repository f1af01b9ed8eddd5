//! Runs that watch the system over time rather than at full tilt, each on
//! the system started as separate processes (so each process's cost is its
//! own): `idle` (what a system burns when nothing happens), `viewers`
//! (thousands watching one seat map while others book) and `soak` (a long
//! mixed run: memory, descriptors and connections stay flat, latency stays
//! bounded, and the stores stay consistent).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use serde_json::{json, Value};

use super::{histogram, latency, procs::Watched, record_shared, Target};

/// CPU an idle system burns: cores per process over `duration`, after a
/// moment to settle.
pub async fn idle(watched: &Watched, duration: Duration) -> Value {
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = watched.sample();
    tokio::time::sleep(duration).await;
    let cores = watched.sample().cores_since(&before);
    json!({ "seconds": duration.as_secs_f64(), "cores": cores, "rss_mib": watched.rss() })
}

/// Opens `count` seat streams of `performance`, one user each; they read
/// until `stop`. Returns how many connected and the events they received.
fn open_viewers(
    target: &Arc<Target>,
    performance: &str,
    count: usize,
    stop: &Arc<AtomicBool>,
) -> (Arc<AtomicUsize>, Arc<AtomicU64>, Vec<tokio::task::JoinHandle<()>>) {
    let (connected, events) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks = (0..count)
        .map(|n| {
            let (target, performance, stop, connected, events) =
                (target.clone(), performance.to_owned(), stop.clone(), connected.clone(), events.clone());
            tokio::spawn(async move {
                let url = format!("{}/performances/{performance}/seats/stream", target.base);
                let Ok(response) =
                    target.client.get(url).bearer_auth(target.token(&format!("viewer_{n}"))).send().await
                else {
                    return;
                };
                if !response.status().is_success() {
                    return;
                }
                connected.fetch_add(1, Ordering::Relaxed);
                let mut body = response.bytes_stream();
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(500), body.next()).await {
                        Ok(Some(Ok(chunk))) => {
                            events.fetch_add(
                                chunk.windows(6).filter(|w| w == b"event:").count() as u64,
                                Ordering::Relaxed,
                            );
                        }
                        Ok(_) => return,
                        Err(_) => {}
                    }
                }
            })
        })
        .collect();
    (connected, events, tasks)
}

/// What the `viewers` run uses.
pub struct ViewersRun {
    /// Where the system is.
    pub target: Arc<Target>,
    /// The performance `distinct` books, and its seats.
    pub booked: (String, Arc<Vec<String>>),
    /// The performance everyone watches (a hall of a usual size), and its
    /// seats: one of them is held every second, so streams carry changes.
    pub watched: (String, Arc<Vec<String>>),
    /// Viewers.
    pub viewers: usize,
    /// `distinct`'s clients.
    pub clients: usize,
    /// `distinct`'s length, each time.
    pub duration: Duration,
}

/// Holds one seat of `performance` a second until `stop`.
fn hold_a_seat_every_second(
    target: &Arc<Target>,
    performance: &str,
    seats: &Arc<Vec<String>>,
    stop: &Arc<AtomicBool>,
    from: usize,
) -> tokio::task::JoinHandle<()> {
    let (target, performance, seats, stop) = (target.clone(), performance.to_owned(), seats.clone(), stop.clone());
    tokio::spawn(async move {
        let mut n = from;
        while !stop.load(Ordering::Relaxed) {
            if let Some(seat) = seats.get(n) {
                let _ = super::book(&target, &format!("watched_{n}"), &performance, seat).await;
            }
            n += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// `viewers`: `distinct` without viewers, then with `viewers` seat streams
/// of another performance on the same gateway, first quiet, then sent a
/// change every second: the bookings' p99 each way, and each process's
/// memory and CPU while they watch.
pub async fn viewers(run: ViewersRun, watched: &Watched) -> Value {
    let (booked, seats) = &run.booked;
    let (watched_performance, watched_seats) = &run.watched;
    let third = seats.len() / 3;
    let part = |n: usize| Arc::new(seats[n * third..(n + 1) * third].to_vec());
    let distinct = |n: usize| super::distinct(run.target.clone(), booked, part(n), run.clients, run.duration);
    let alone = distinct(0).await;
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Instant::now();
    let (connected, events, tasks) = open_viewers(&run.target, watched_performance, run.viewers, &stop);
    while connected.load(Ordering::Relaxed) < run.viewers && opened.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connected_in = opened.elapsed();
    // Viewers connected, their map quiet (keep-alives only) ...
    let quiet = distinct(1).await;
    // ... then a seat of theirs held every second: each change goes to every viewer.
    let changing = Arc::new(AtomicBool::new(false));
    let holder = hold_a_seat_every_second(&run.target, watched_performance, watched_seats, &changing, 0);
    let before = watched.sample();
    let watching = distinct(2).await;
    let cores = watched.sample().cores_since(&before);
    let rss = watched.rss();
    changing.store(true, Ordering::Relaxed);
    let _ = holder.await;
    let received = events.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let change = |p99: f64| 100.0 * (p99 - alone.latency.p99_ms) / alone.latency.p99_ms.max(1e-9);
    json!({
        "viewers": run.viewers,
        "connected": connected.load(Ordering::Relaxed),
        "connected_in_seconds": connected_in.as_secs_f64(),
        "events_received": received,
        "bookings_without_viewers": { "per_sec": alone.throughput_per_sec, "p99_ms": alone.latency.p99_ms },
        "bookings_with_quiet_viewers": {
            "per_sec": quiet.throughput_per_sec, "p99_ms": quiet.latency.p99_ms, "p99_change_percent": change(quiet.latency.p99_ms),
        },
        "bookings_with_viewers_sent_a_change_a_second": {
            "per_sec": watching.throughput_per_sec, "p99_ms": watching.latency.p99_ms, "p99_change_percent": change(watching.latency.p99_ms),
        },
        "rss_mib_while_watching": rss,
        "cores_while_watching": cores,
    })
}

/// One purchase of the soak's mix: `kind` 0-5 pays, 6-7 cancels, 8 is
/// declined three times (the booking fails), 9 holds and leaves.
async fn soak_purchase(target: &Target, performance: &str, seat: &str, user: &str, kind: usize) -> Option<u16> {
    let (status, _, body) = super::book(target, user, performance, seat).await;
    if status != Some(201) {
        return status;
    }
    let token = target.token(user);
    let intent = body["paymentIntentId"].as_str().unwrap_or_default().to_owned();
    let booking = body["bookingId"].as_str().unwrap_or_default().to_owned();
    let pay = |card: &'static str| {
        let (client, base, token, intent) = (target.client.clone(), target.base.clone(), token.clone(), intent.clone());
        async move {
            for _ in 0..200 {
                let sent = client
                    .post(format!("{base}/payments/execute"))
                    .bearer_auth(&token)
                    .json(&json!({"paymentIntentId": intent, "paymentMethodToken": card, "cvv": "123"}))
                    .send()
                    .await;
                match sent.map(|r| r.status().as_u16()) {
                    Ok(503) | Ok(404) | Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    Ok(other) => return Some(other),
                }
            }
            None
        }
    };
    match kind {
        0..=5 => pay("tok_visa").await,
        6 | 7 => {
            let sent = target.client.delete(format!("{}/bookings/{booking}", target.base)).bearer_auth(&token).send();
            sent.await.ok().map(|r| r.status().as_u16())
        }
        8 => {
            let mut last = None;
            for _ in 0..3 {
                last = pay("tok_chargeDeclined").await;
            }
            last
        }
        _ => status,
    }
}

/// The services' databases, whose connections a soak counts.
#[derive(Clone, Copy)]
pub struct ServiceDatabases<'a> {
    /// A connection to the cluster that holds them.
    pub pool: &'a sqlx::PgPool,
    /// booking's and payment's database names.
    pub names: [&'a str; 2],
}

/// `soak`: `clients` clients run the mix for `duration` beside 100
/// viewers; every 10 s each process's memory and descriptors, the
/// services' database connections and the window's p99 are sampled.
pub async fn soak(
    target: Arc<Target>,
    performance: &str,
    seats: Arc<Vec<String>>,
    clients: usize,
    duration: Duration,
    watched: &Watched,
    databases: &ServiceDatabases<'_>,
) -> Value {
    let ServiceDatabases { pool: databases, names } = *databases;
    let stop = Arc::new(AtomicBool::new(false));
    let (_, _, viewers) = open_viewers(&target, performance, 100, &stop);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let window = Arc::new(std::sync::Mutex::new(histogram()));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (target, seats, next, done, window, performance) =
                (target.clone(), seats.clone(), next.clone(), done.clone(), window.clone(), performance.to_owned());
            tokio::spawn(async move {
                while started.elapsed() < duration {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(seat) = seats.get(n) else { break };
                    let took = Instant::now();
                    soak_purchase(&target, &performance, seat, &format!("s{c}_{n}"), n % 10).await;
                    record_shared(&window, took.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let p99 = window.lock().map(|mut h| {
            let p99 = latency(&h).p99_ms;
            h.reset();
            p99
        });
        let connections: i64 = sqlx::query_scalar("select count(*) from pg_stat_activity where datname = any($1)")
            .bind(&names[..])
            .fetch_one(databases)
            .await
            .unwrap_or(-1);
        samples.push(json!({
            "at_seconds": started.elapsed().as_secs(),
            "operations": done.load(Ordering::Relaxed),
            "window_p99_ms": p99.unwrap_or(0.0),
            "rss_mib": watched.rss(),
            "open_files": watched.files(),
            "database_connections": connections,
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    stop.store(true, Ordering::Relaxed);
    for viewer in viewers {
        let _ = viewer.await;
    }
    json!({
        "seconds": started.elapsed().as_secs_f64(),
        "operations": done.load(Ordering::Relaxed),
        "samples": samples,
        "rss_growth_percent_after_warm_up": growth(&samples),
    })
}

/// Each process's resident memory growth from the end of the first fifth
/// of the run (the warm-up) to its end, in percent.
fn growth(samples: &[Value]) -> BTreeMap<String, f64> {
    let warm = samples.get(samples.len() / 5).and_then(|s| s["rss_mib"].as_object());
    let last = samples.last().and_then(|s| s["rss_mib"].as_object());
    let (Some(warm), Some(last)) = (warm, last) else { return BTreeMap::new() };
    warm.iter()
        .filter_map(|(name, at_warm)| {
            let (at_warm, at_end) = (at_warm.as_f64()?, last.get(name)?.as_f64()?);
            Some((name.clone(), 100.0 * (at_end - at_warm) / at_warm.max(1e-9)))
        })
        .collect()
}
