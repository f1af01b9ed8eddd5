//! `ticketing bench`: a load generator that drives the REST gateway with
//! real JWTs, side by side with the raw PostgreSQL limit of the same work.
//!
//! Scenarios: `distinct` (no contention), `flow` (book → pay → poll until
//! confirmed; reports the projection lag), `onsale` (N clients race for M
//! seats: exactly M winners). Baselines: pgbench running one booking's
//! command's SQL at the same concurrency, and the gateway's trivial route.

pub mod cost;
pub mod feed;
pub mod link;
pub mod long_runs;
pub mod pgbench;
pub mod procs;
pub mod queue;
pub mod run;
pub mod separate;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};

/// Latency distribution in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

fn latency(h: &Histogram<u64>) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p95_ms: ms(h.value_at_quantile(0.95)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

/// A latency in whole microseconds, at least 1 (the histogram's floor).
fn micros(took: Duration) -> u64 {
    u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Records `took` into a histogram the clients share.
fn record_shared(histogram: &std::sync::Mutex<Histogram<u64>>, took: Duration) {
    if let Ok(mut histogram) = histogram.lock() {
        let _ = histogram.record(micros(took));
    }
}

#[allow(clippy::expect_used)]
fn histogram() -> Histogram<u64> {
    // 1 µs .. 120 s, 3 significant digits: constant bounds hdrhistogram accepts.
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid constant histogram bounds")
}

/// One scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub name: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Wall time.
    pub seconds: f64,
    /// Requests (or purchases, for `flow`) per second.
    pub throughput_per_sec: f64,
    /// Latency of the measured operation.
    pub latency: Latency,
    /// Answers by HTTP status ("error" for transport errors).
    pub statuses: BTreeMap<String, u64>,
    /// Scenario-specific figures.
    pub extra: Value,
}

/// Everything one `ticketing bench` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The scenarios.
    pub scenarios: Vec<ScenarioReport>,
    /// pgbench TPS of one booking's essential writes at the same concurrency (the limit).
    pub pgbench_tps: Option<f64>,
    /// pgbench TPS of every statement a booking command sends.
    pub pgbench_full_tps: Option<f64>,
    /// `distinct` throughput / the essential pgbench TPS.
    pub ratio_to_pgbench: Option<f64>,
    /// Requests per second of `GET /healthz` (the HTTP ceiling).
    pub http_ceiling_per_sec: f64,
    /// Seats sold to more than one booking, from `ticketing check` (must be 0).
    pub oversold_seats: usize,
    /// `ticketing check` findings (must be empty).
    pub violations: Vec<String>,
    /// Resident memory of the process at the end (all three components), in MiB.
    pub rss_mib: f64,
    /// Mean milliseconds per pipeline histogram (see [`pipeline_means`]).
    pub pipeline_means_ms: BTreeMap<String, f64>,
}

/// How to reach the system under test.
pub struct Target {
    /// `http://host:port` of the gateway.
    pub base: String,
    /// HS256 secret to sign tokens.
    pub secret: String,
    /// HTTP client.
    pub client: reqwest::Client,
}

impl Target {
    pub(crate) fn token(&self, user: &str) -> String {
        edge::auth::issue_token(&self.secret, user, user.starts_with("admin"), 3600).unwrap_or_default()
    }
}

#[derive(Default)]
struct Tally {
    statuses: BTreeMap<String, u64>,
    latencies: Option<Histogram<u64>>,
}

impl Tally {
    fn record(&mut self, status: Option<u16>, took: Duration) {
        let key = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        *self.statuses.entry(key).or_default() += 1;
        let _ = self.latencies.get_or_insert_with(histogram).record(micros(took));
    }

    fn merge(&mut self, other: Tally) {
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        if let Some(h) = other.latencies {
            let _ = self.latencies.get_or_insert_with(histogram).add(h);
        }
    }
}

/// Registers a performance with `rows` rows of 500 seats.
pub async fn register_performance(target: &Target, id: &str, rows: usize) -> anyhow::Result<Vec<String>> {
    let labels: Vec<String> =
        (0..rows).map(|i| format!("{}{}", (b'A' + (i / 26) as u8) as char, (b'A' + (i % 26) as u8) as char)).collect();
    let body = json!({
        "performanceId": id,
        "title": "bench",
        "rows": labels.iter().map(|r| json!({"row": r, "seats": 500, "price": 10000})).collect::<Vec<_>>(),
    });
    let response = target
        .client
        .post(format!("{}/performances", target.base))
        .bearer_auth(target.token("admin_bench"))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(response.status().as_u16() == 201, "registering {id}: {}", response.text().await?);
    Ok(labels.iter().flat_map(|r| (1..=500).map(move |n| format!("{r}{n}"))).collect())
}

async fn book(target: &Target, user: &str, performance: &str, seat: &str) -> (Option<u16>, Duration, Value) {
    let started = Instant::now();
    let sent = target
        .client
        .post(format!("{}/bookings", target.base))
        .bearer_auth(target.token(user))
        .json(&json!({"performanceId": performance, "seatIds": [seat], "userId": user}))
        .send()
        .await;
    match sent {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.json().await.unwrap_or(Value::Null);
            (Some(status), started.elapsed(), body)
        }
        Err(_) => (None, started.elapsed(), Value::Null),
    }
}

/// `distinct`: `clients` clients book distinct seats for `duration`.
pub async fn distinct(
    target: Arc<Target>,
    performance: &str,
    seats: Arc<Vec<String>>,
    clients: usize,
    duration: Duration,
) -> ScenarioReport {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (target, seats, next, performance) =
                (target.clone(), seats.clone(), next.clone(), performance.to_owned());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while started.elapsed() < duration {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(seat) = seats.get(n) else { break };
                    let (status, took, _) = book(&target, &format!("d{c}_{n}"), &performance, seat).await;
                    tally.record(status, took);
                }
                tally
            })
        })
        .collect();
    finish("distinct", clients, started, tasks, json!({})).await
}

/// `flow`: book → pay → poll `GET /bookings/my` until confirmed.
pub async fn flow(
    target: Arc<Target>,
    performance: &str,
    seats: Arc<Vec<String>>,
    clients: usize,
    duration: Duration,
) -> ScenarioReport {
    let next = Arc::new(AtomicUsize::new(seats.len() / 2));
    let started = Instant::now();
    let lags = Arc::new(std::sync::Mutex::new(histogram()));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (target, seats, next, performance, lags) =
                (target.clone(), seats.clone(), next.clone(), performance.to_owned(), lags.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while started.elapsed() < duration {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(seat) = seats.get(n) else { break };
                    let user = format!("f{c}_{n}");
                    let purchase = Instant::now();
                    let (status, _, body) = book(&target, &user, &performance, seat).await;
                    if status != Some(201) {
                        tally.record(status, purchase.elapsed());
                        continue;
                    }
                    let intent = body["paymentIntentId"].as_str().unwrap_or_default().to_owned();
                    let booking = body["bookingId"].as_str().unwrap_or_default().to_owned();
                    let token = target.token(&user);
                    let mut paid = None;
                    for _ in 0..100 {
                        let r = target
                            .client
                            .post(format!("{}/payments/execute", target.base))
                            .bearer_auth(&token)
                            .json(&json!({"paymentIntentId": intent, "paymentMethodToken": "tok_visa", "cvv": "123"}))
                            .send()
                            .await;
                        match r.map(|r| r.status().as_u16()) {
                            Ok(200) => {
                                paid = Some(Instant::now());
                                break;
                            }
                            Ok(404) | Ok(503) | Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                            Ok(other) => {
                                tally.record(Some(other), purchase.elapsed());
                                break;
                            }
                        }
                    }
                    let Some(paid) = paid else { continue };
                    loop {
                        let list: Value = match target
                            .client
                            .get(format!("{}/bookings/my", target.base))
                            .bearer_auth(&token)
                            .send()
                            .await
                        {
                            Ok(r) => r.json().await.unwrap_or(Value::Null),
                            Err(_) => Value::Null,
                        };
                        let confirmed = list.as_array().is_some_and(|l| {
                            l.iter().any(|b| b["bookingId"] == booking.as_str() && b["status"] == "confirmed")
                        });
                        if confirmed {
                            record_shared(&lags, paid.elapsed());
                            tally.record(Some(200), purchase.elapsed());
                            break;
                        }
                        if paid.elapsed() > Duration::from_secs(30) {
                            tally.record(None, purchase.elapsed());
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                tally
            })
        })
        .collect();
    let mut report = finish("flow", clients, started, tasks, json!({})).await;
    let lag = lags.lock().map(|h| latency(&h)).ok();
    report.extra = json!({ "projection_lag": lag, "note": "latency is the whole purchase; projection_lag is PaymentSucceeded (pay answered) to visible confirmed" });
    report
}

/// One purchase before the scenarios, so that they measure the running
/// system and not its start: the consumer groups form when the first
/// records arrive, which holds the first payments for a few seconds. It is
/// reported as its own line (`warm-up`).
pub async fn warm_up(target: Arc<Target>, performance: &str, seat: &str) -> ScenarioReport {
    let mut report = flow(target, performance, Arc::new(vec![seat.to_owned()]), 1, Duration::from_millis(1)).await;
    report.name = "warm-up".to_owned();
    report
}

/// `onsale`: `clients` clients race for `seats.len()` seats at once; the
/// losers' ("Seat X is not available.") latency is reported on its own.
pub async fn onsale(target: Arc<Target>, performance: &str, seats: Arc<Vec<String>>, clients: usize) -> ScenarioReport {
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Barrier::new(clients));
    let losers = Arc::new(std::sync::Mutex::new(histogram()));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (target, seats, performance, gate, losers) =
                (target.clone(), seats.clone(), performance.to_owned(), gate.clone(), losers.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let seat = &seats[c % seats.len()];
                gate.wait().await;
                let (status, took, _) = book(&target, &format!("o{c}"), &performance, seat).await;
                tally.record(status, took);
                if status == Some(400) {
                    record_shared(&losers, took);
                }
                tally
            })
        })
        .collect();
    let mut report = finish("onsale", clients, started, tasks, json!({})).await;
    let winners = report.statuses.get("201").copied().unwrap_or(0);
    let losers = losers.lock().map(|h| latency(&h)).ok();
    report.extra = json!({
        "seats": seats.len(),
        "winners": winners,
        "exactly_one_winner_per_seat": winners as usize == seats.len(),
        "losers_400": losers,
    });
    report
}

async fn finish(
    name: &str,
    clients: usize,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
    extra: Value,
) -> ScenarioReport {
    let mut tally = Tally::default();
    for task in tasks {
        if let Ok(t) = task.await {
            tally.merge(t);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let h = tally.latencies.unwrap_or_else(histogram);
    ScenarioReport {
        name: name.to_owned(),
        clients,
        seconds,
        throughput_per_sec: h.len() as f64 / seconds.max(1e-9),
        latency: latency(&h),
        statuses: tally.statuses,
        extra,
    }
}

/// Requests per second of `GET /healthz` with `clients` clients for `duration`.
pub async fn http_ceiling(target: Arc<Target>, clients: usize, duration: Duration) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut n = 0_u64;
                while started.elapsed() < duration {
                    if target.client.get(format!("{}/healthz", target.base)).send().await.is_ok() {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Mean of each pipeline histogram (relay publish, consumer lag, projection
/// lag, gRPC calls) from this process's metrics, in milliseconds: where the
/// time between a commit and a visible read model goes.
pub fn pipeline_means() -> BTreeMap<String, f64> {
    let text = edge::metrics::render();
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        for (suffix, index) in [("_sum", 0), ("_count", 1)] {
            if let Some((metric, labels)) = name.split_once('{').map_or(Some((name, "")), Some) {
                if let Some(base) = metric.strip_suffix(suffix) {
                    if base.ends_with("_seconds") {
                        let key = format!("{base}{{{}", labels.trim_end_matches('}')).trim_end_matches('{').to_owned()
                            + if labels.is_empty() { "" } else { "}" };
                        let entry = sums.entry(key).or_default();
                        if index == 0 {
                            entry.0 += value
                        } else {
                            entry.1 += value
                        }
                    }
                }
            }
        }
    }
    sums.into_iter().filter(|(_, (_, n))| *n > 0.0).map(|(k, (s, n))| (k, 1000.0 * s / n)).collect()
}

/// Resident set size of this process in MiB (Linux).
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Raises this process's open-file limit to fit `needed` descriptors (each
/// simulated client and the gateway's side of its connection take one):
/// the soft limit up to the hard one, and the hard one too where allowed
/// (root). Returns the soft limit in force.
pub fn raise_open_file_limit(needed: u64) -> u64 {
    use rlimit::Resource;
    let Ok((soft, hard)) = Resource::NOFILE.get() else { return 0 };
    if soft >= needed {
        return soft;
    }
    if needed > hard && Resource::NOFILE.set(needed, needed).is_ok() {
        return needed;
    }
    let target = needed.min(hard);
    if Resource::NOFILE.set(target, hard).is_ok() {
        target
    } else {
        soft
    }
}
