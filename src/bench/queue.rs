//! `onsale-queue`: an on-sale through the waiting room. `clients` people
//! join at once a queue for `seats` seats, wait on their place (Server-Sent
//! Events), and the admitted ones book one seat and pay, as a person would.
//! Reported: join latency, errors and 5xx, position inversions (someone
//! admitted while a smaller position still waited: must be 0), time from
//! the opening to sold out, seats sold (all, none twice: `ticketing check`
//! runs after), how late the last waiter learned `sold_out`, each process's
//! memory and CPU, and how many place looks reached the database.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::{HeaderValue, Method, Uri};
use serde_json::{json, Value};

use super::{
    histogram, latency,
    link::{Ask, Link},
    micros,
    procs::Watched,
    Target,
};

/// One run.
pub struct QueueRun {
    /// The system.
    pub target: Arc<Target>,
    /// The connections people share: HTTP/2 connections (a load balancer's
    /// few), or one HTTP/1.1 pool with a connection per person.
    pub connections: Vec<Link>,
    /// How many of them are HTTP/2 (0: HTTP/1.1).
    pub h2_connections: usize,
    /// People joining.
    pub clients: usize,
    /// They arrive evenly over this time (zero: all at once).
    pub arrivals_over: Duration,
    /// Seats on sale.
    pub seats: u64,
    /// The booking-service's database, read after the run.
    pub booking_db: sqlx::PgPool,
    /// `/metrics` of the booking-service.
    pub booking_metrics: String,
}

/// What happened to one person.
#[derive(Default)]
struct Outcome {
    join_status: Option<u16>,
    join_took: Duration,
    bought: bool,
    told_sold_out_at: Option<chrono::DateTime<chrono::Utc>>,
    stream_failed: bool,
    /// From the first stream request to the first place it carried.
    first_place_after: Option<Duration>,
    /// Stream openings the gateway answered 503 (busy).
    streams_shed: u64,
}

const PERFORMANCE: &str = "perf_queue";

/// Runs it and returns the report.
pub async fn onsale_queue(run: QueueRun, watched: &Watched) -> anyhow::Result<Value> {
    register(&run.target, run.seats).await?;
    let opens_at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let setup = json!({"opensAt": opens_at.to_rfc3339(), "maxActive": 200, "admitPerMinute": 6000});
    let reply = run
        .target
        .client
        .put(format!("{}/performances/{PERFORMANCE}/onsale", run.target.base))
        .bearer_auth(run.target.token("admin_bench"))
        .json(&setup)
        .send()
        .await?;
    anyhow::ensure!(reply.status().is_success(), "setting up the on-sale: {}", reply.text().await?);
    let free: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
        (1..=run.seats).map(|n| format!("{}{}", row_label((n - 1) / 500), (n - 1) % 500 + 1)).collect(),
    ));
    // People sign in before the sale: their tokens are not part of the joins.
    let signed_in: Vec<Person> = (0..run.clients)
        .map(|n| {
            let user = format!("q{n}");
            let mut bearer = HeaderValue::try_from(format!("Bearer {}", run.target.token(&user)))?;
            // Never put in HPACK's table (as reqwest's `bearer_auth` did).
            bearer.set_sensitive(true);
            Ok(Person { bearer, user })
        })
        .collect::<anyhow::Result<_>>()?;
    let paths = Arc::new(Paths::new(&run.target.base)?);
    let looks_before = looks(&run).await;
    let before = watched.sample();
    let started = Instant::now();
    let arrives = |n: usize| {
        let share = n as f64 / run.clients.max(1) as f64;
        tokio::time::Instant::from_std(started) + run.arrivals_over.mul_f64(share)
    };
    // What the joins alone cost: each process's CPU once every join is answered.
    let answered = Arc::new(JoinsAnswered::new(run.clients));
    let joins_sampled = {
        let (answered, watched) = (answered.clone(), watched.clone());
        tokio::spawn(async move {
            answered.all.notified().await;
            watched.sample()
        })
    };
    let people: Vec<_> = signed_in
        .into_iter()
        .enumerate()
        .map(|(n, who)| {
            let link = run.connections[n % run.connections.len()].clone();
            tokio::spawn(person(paths.clone(), link, who, arrives(n), free.clone(), answered.clone()))
        })
        .collect();
    let mut outcomes = Vec::with_capacity(people.len());
    for person in people {
        outcomes.push(person.await.unwrap_or_default());
    }
    let took = started.elapsed();
    let after = watched.sample();
    answered.all.notify_one();
    let joined = joins_sampled.await?;
    let looks_after = looks(&run).await;
    let looks = (looks_after.0.saturating_sub(looks_before.0), looks_after.1.saturating_sub(looks_before.1));
    report(&run, &outcomes, took, [&before, &joined, &after], watched, looks).await
}

/// Counts answered joins and wakes the sampler once all are.
struct JoinsAnswered {
    left: std::sync::atomic::AtomicUsize,
    all: tokio::sync::Notify,
}

impl JoinsAnswered {
    fn new(people: usize) -> Self {
        Self { left: people.into(), all: tokio::sync::Notify::new() }
    }

    fn one(&self) {
        if self.left.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.all.notify_one();
        }
    }
}

async fn register(target: &Target, seats: u64) -> anyhow::Result<()> {
    let rows: Vec<Value> = (0..seats.div_ceil(500))
        .map(|r| json!({"row": row_label(r), "seats": (seats - r * 500).min(500), "price": 10000}))
        .collect();
    let body = json!({"performanceId": PERFORMANCE, "title": "bench on-sale", "rows": rows});
    let reply = target
        .client
        .post(format!("{}/performances", target.base))
        .bearer_auth(target.token("admin_bench"))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(reply.status().is_success(), "registering the on-sale's performance: {}", reply.text().await?);
    Ok(())
}

fn row_label(r: u64) -> String {
    char::from(b'A' + u8::try_from(r % 26).unwrap_or(0)).to_string()
}

/// A signed-in person.
struct Person {
    user: String,
    /// `Bearer <their token>`.
    bearer: HeaderValue,
}

/// The addresses people ask, made once.
struct Paths {
    join: Uri,
    stream: Uri,
    bookings: Uri,
    payments: Uri,
}

impl Paths {
    fn new(base: &str) -> anyhow::Result<Self> {
        let at = |path: &str| format!("{base}{path}").parse::<Uri>();
        Ok(Self {
            join: at(&format!("/performances/{PERFORMANCE}/queue"))?,
            stream: at(&format!("/performances/{PERFORMANCE}/queue/stream"))?,
            bookings: at("/bookings")?,
            payments: at("/payments/execute")?,
        })
    }
}

/// What a place event says (the rest of it is for the page).
#[derive(serde::Deserialize)]
struct Place {
    state: String,
    #[serde(default)]
    admission: Option<String>,
}

/// One person: arrive, join, wait on the place stream, and when admitted
/// book one free seat (another if it was just taken) and pay.
async fn person(
    paths: Arc<Paths>,
    link: Link,
    who: Person,
    arrives: tokio::time::Instant,
    free: Arc<Mutex<Vec<String>>>,
    answered: Arc<JoinsAnswered>,
) -> Outcome {
    let mut outcome = Outcome::default();
    if tokio::time::Instant::now() < arrives {
        tokio::time::sleep_until(arrives).await;
    }
    let sent = Instant::now();
    let joined =
        link.send(Ask { method: Method::POST, uri: &paths.join, bearer: &who.bearer, admission: None, json: None });
    let joined = match joined.await {
        Ok(answer) => {
            let status = answer.status();
            answer.body().await;
            Some(status)
        }
        Err(_) => None,
    };
    outcome.join_took = sent.elapsed();
    outcome.join_status = joined;
    answered.one();
    if outcome.join_status != Some(200) {
        return outcome;
    }
    let Some(place) = wait_turn(&paths, &link, &who, &mut outcome).await else { return outcome };
    if let ("admitted", Some(admission)) = (place.state.as_str(), place.admission.as_deref()) {
        outcome.bought = buy(&paths, &link, &who, admission, &free).await;
    }
    outcome
}

/// Follows the place stream until a final state; `None` if it broke.
async fn wait_turn(paths: &Paths, link: &Link, who: &Person, outcome: &mut Outcome) -> Option<Place> {
    let asked = Instant::now();
    for _ in 0..20 {
        let ask = Ask { method: Method::GET, uri: &paths.stream, bearer: &who.bearer, admission: None, json: None };
        let mut response = link.send(ask).await.ok()?;
        if response.status() == 503 {
            // A busy gateway: come back after its Retry-After, as the page does.
            outcome.streams_shed += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let mut buffer = BytesMut::new();
        while let Some(chunk) = response.chunk().await {
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                let block = buffer.split_to(end + 2);
                let Some(data) = block[..].split(|b| *b == b'\n').find_map(|l| l.strip_prefix(b"data: ")) else {
                    continue;
                };
                let place: Place = serde_json::from_slice(data).ok()?;
                outcome.first_place_after.get_or_insert_with(|| asked.elapsed());
                match place.state.as_str() {
                    "sold_out" => {
                        outcome.told_sold_out_at = Some(chrono::Utc::now());
                        return Some(place);
                    }
                    "admitted" | "closed" => return Some(place),
                    _ => {}
                }
            }
        }
        // The stream ended without a final state (a restart, a timeout): look again.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    outcome.stream_failed = true;
    None
}

async fn buy(paths: &Paths, link: &Link, who: &Person, admission: &str, free: &Mutex<Vec<String>>) -> bool {
    for _ in 0..20 {
        let Some(seat) = free.lock().ok().and_then(|mut f| f.pop()) else { return false };
        let body = json!({"performanceId": PERFORMANCE, "seatIds": [seat], "userId": who.user});
        let ask = Ask {
            method: Method::POST,
            uri: &paths.bookings,
            bearer: &who.bearer,
            admission: Some(admission),
            json: serde_json::to_vec(&body).ok(),
        };
        let reply = link.send(ask).await;
        let status = reply.as_ref().map_or(0, |r| r.status());
        if status != 201 {
            // Only a seat someone else took (409) is gone; after a busy
            // gateway (503), a timeout or a lost connection the seat is
            // still free, and a person tries again a moment later.
            if status != 409 {
                if let Ok(mut free) = free.lock() {
                    free.push(seat);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if let Ok(reply) = reply {
                reply.body().await;
            }
            continue;
        }
        let Ok(reply) = reply else { return false };
        let Ok(created) = serde_json::from_slice::<Value>(&reply.body().await) else { return false };
        let pay =
            json!({"paymentIntentId": created["paymentIntentId"], "paymentMethodToken": "tok_visa", "cvv": "123"});
        let pay = serde_json::to_vec(&pay).unwrap_or_default();
        for _ in 0..50 {
            let ask = Ask {
                method: Method::POST,
                uri: &paths.payments,
                bearer: &who.bearer,
                admission: None,
                json: Some(pay.clone()),
            };
            let paid = link.send(ask).await;
            let status = paid.as_ref().map_or(0, |r| r.status());
            if let Ok(paid) = paid {
                paid.body().await;
            }
            match status {
                200 => return true,
                503 | 0 => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => return false,
            }
        }
        return false;
    }
    false
}

/// `waiting_room_looks_total` of the booking-service: looks at a place
/// served from the database and from memory (joins are writes, not looks).
async fn looks(run: &QueueRun) -> (u64, u64) {
    let Ok(reply) = run.target.client.get(&run.booking_metrics).send().await else { return (0, 0) };
    let text = reply.text().await.unwrap_or_default();
    let served = |from: &str| {
        text.lines()
            .filter(|l| l.starts_with("waiting_room_looks_total{") && l.contains(&format!("served_from=\"{from}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    (served("database"), served("memory"))
}

async fn report(
    run: &QueueRun,
    outcomes: &[Outcome],
    took: Duration,
    [before, joined, after]: [&super::procs::CpuSample; 3],
    watched: &Watched,
    (database_looks, memory_looks): (u64, u64),
) -> anyhow::Result<Value> {
    let mut joins = histogram();
    for o in outcomes {
        let _ = joins.record(micros(o.join_took));
    }
    let mut first_places = histogram();
    for took in outcomes.iter().filter_map(|o| o.first_place_after) {
        let _ = first_places.record(micros(took));
    }
    let failed_joins = outcomes.iter().filter(|o| o.join_status != Some(200)).count();
    let server_errors = outcomes.iter().filter(|o| o.join_status.is_some_and(|s| s >= 500)).count();
    let (opened, sold_out): (Option<chrono::DateTime<chrono::Utc>>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("select opened_at, sold_out_at from onsales where performance_id = $1")
            .bind(PERFORMANCE)
            .fetch_one(&run.booking_db)
            .await?;
    let sold: i64 =
        sqlx::query_scalar("select count(*) from seat_holds where performance_id = $1 and status = 'booked'")
            .bind(PERFORMANCE)
            .fetch_one(&run.booking_db)
            .await?;
    let last_told = outcomes.iter().filter_map(|o| o.told_sold_out_at).max();
    let told_late_ms = match (sold_out, last_told) {
        (Some(sold_out), Some(told)) => Some((told - sold_out).num_milliseconds()),
        _ => None,
    };
    let people = outcomes.len() as u64;
    Ok(json!({
        "clients": run.clients,
        "h2_connections": run.h2_connections,
        "arrivals_over_ms": run.arrivals_over.as_millis() as u64,
        "seats": run.seats,
        "join": latency(&joins),
        "joins_failed": failed_joins,
        "joins_5xx": server_errors,
        "streams_failed": outcomes.iter().filter(|o| o.stream_failed).count(),
        "stream_first_place": latency(&first_places),
        "stream_openings_shed": outcomes.iter().map(|o| o.streams_shed).sum::<u64>(),
        "bought": outcomes.iter().filter(|o| o.bought).count(),
        "seats_sold": sold,
        "position_inversions": inversions(&run.booking_db).await?,
        "open_to_sold_out_ms": opened.zip(sold_out).map(|(o, s)| (s - o).num_milliseconds()),
        "last_waiter_told_sold_out_after_ms": told_late_ms,
        "looks_from_database": database_looks,
        "looks_from_memory": memory_looks,
        "database_queries_per_look": database_looks as f64 / (database_looks + memory_looks).max(1) as f64,
        "took_ms": took.as_millis() as u64,
        "cpu_ms_per_person": after.ms_per_op_since(before, people, &Default::default()),
        "cpu_ms_per_join_until_all_answered": joined.ms_per_op_since(before, people, &Default::default()),
        "rss_mib": watched.rss(),
    }))
}

/// Admissions of a larger position while a smaller one still waited (and
/// had not lapsed): must be 0. Places admitted in the same round count as
/// simultaneous.
async fn inversions(pool: &sqlx::PgPool) -> anyhow::Result<u64> {
    let rows: Vec<(Option<i64>, Option<chrono::DateTime<chrono::Utc>>, String)> = sqlx::query_as(
        "select position, admitted_at, state from queue_places where performance_id = $1 and position is not null",
    )
    .bind(PERFORMANCE)
    .fetch_all(pool)
    .await?;
    let mut waiting: BTreeSet<i64> = rows.iter().filter(|(_, _, s)| s != "lapsed").filter_map(|(p, _, _)| *p).collect();
    let mut admitted: Vec<(chrono::DateTime<chrono::Utc>, i64)> =
        rows.iter().filter_map(|(p, at, _)| Some(((*at)?, (*p)?))).collect();
    admitted.sort_unstable();
    let mut count = 0;
    for round in admitted.chunk_by(|a, b| a.0 == b.0) {
        for (_, position) in round {
            waiting.remove(position);
        }
        if let Some(first_waiting) = waiting.first() {
            count += round.iter().filter(|(_, p)| p > first_waiting).count() as u64;
        }
    }
    Ok(count)
}
