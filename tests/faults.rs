//! Fault injection with real processes, the way production breaks: every
//! test runs its own tansu broker process (so it can hang it with SIGSTOP
//! without disturbing other tests), the components as separate `ticketing`
//! processes started with the settings a user would use (no static group
//! membership), and purchases that retry like real clients. After each
//! fault it requires two things: nothing is lost (every acknowledged
//! purchase reaches its final state, `ticketing check` is clean) and new
//! work still completes.
//!
//! The heavy tests run one at a time (`SERIAL`): their recovery deadlines
//! are about the system, not about two cores shared by six deployments.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::eventually;
use testkit::server_url;
use testkit::unique_name;
use testkit::TestKafka;
use ticketing::private_postgres::PrivatePostgres;

const CVV: &str = "8642";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn signal(pid: u32, name: &str) {
    assert!(Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap().success());
}

// ---------------------------------------------------------------- the broker

/// A private tansu broker process on a free port.
struct Tansu {
    child: Child,
    brokers: String,
}

impl Tansu {
    /// Starts one; `None` (with a notice) where tansu is not installed,
    /// except in CI, which installs it: there a missing tansu fails.
    fn start(dir: &Path) -> Option<Self> {
        if Command::new("tansu").arg("--version").output().is_err() {
            testkit::skip_notice(
                "tansu is not installed (cargo install tansu --version 0.6.0 --features dynostore); this fault test did not run",
            );
            return None;
        }
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("tansu.log")).unwrap();
        let child = Command::new("tansu")
            .args(["broker", "--storage-engine", "memory://tansu/", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let brokers = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&brokers).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start listening");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Self { child, brokers })
    }

    /// Hangs the broker: connections stay open, nothing answers.
    fn hang(&self) {
        signal(self.child.id(), "STOP");
    }

    fn resume(&self) {
        signal(self.child.id(), "CONT");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        signal(self.child.id(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- a private PostgreSQL

/// A private PostgreSQL cluster (what `ticketing dev` starts when none is
/// running), so restarting it disturbs no other test.
fn private_postgres(dir: &Path) -> PrivatePostgres {
    PrivatePostgres::start(&dir.join("pgdata")).unwrap()
}

// ---------------------------------------------------------------- a deployment

/// The ports of one replica set (a booking-service, a payment-service and
/// the gateway in front of them).
#[derive(Clone, Copy)]
struct Ports {
    booking: u16,
    payment: u16,
    gateway: u16,
}

/// One deployment: env shared by its processes, their logs in `dir`.
struct Deployment {
    env: Vec<(String, String)>,
    dir: PathBuf,
    secret: String,
    ports: HashMap<char, Ports>,
    procs: HashMap<String, Child>,
    client: reqwest::Client,
}

impl Deployment {
    fn new(dir: PathBuf, brokers: &str, database_url: String) -> Self {
        let secret = unique_name("secret-with-enough-bytes-for-hs256");
        let env = [
            ("DATABASE_URL", database_url),
            ("BOOKING_DATABASE", unique_name("t_faults_booking")),
            ("PAYMENT_DATABASE", unique_name("t_faults_payment")),
            ("KAFKA_BROKERS", brokers.to_owned()),
            ("JWT_SECRET", secret.clone()),
            ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
            ("SHUTDOWN_DRAIN_SECS", "0".to_owned()),
            ("SWEEP_INTERVAL_MS", "200".to_owned()),
            ("RUST_LOG", "info,librdkafka=warn".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        Self { env, dir, secret, ports: HashMap::new(), procs: HashMap::new(), client }
    }

    fn ports(&mut self, replica: char) -> Ports {
        *self.ports.entry(replica).or_insert_with(|| Ports {
            booking: free_port(),
            payment: free_port(),
            gateway: free_port(),
        })
    }

    /// Starts process `name` (`booking-a`, `gateway-b`, `dev-a`, ...): the
    /// command before the dash, the replica set after it.
    fn start(&mut self, name: &str, extra_env: &[(&str, &str)]) {
        let (command, replica) = name.split_once('-').unwrap();
        let ports = self.ports(replica.chars().next().unwrap());
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ticketing"))
            .arg(command)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("BOOKING_GRPC_ADDR", format!("127.0.0.1:{}", ports.booking))
            .env("PAYMENT_GRPC_ADDR", format!("127.0.0.1:{}", ports.payment))
            .env("GATEWAY_ADDR", format!("127.0.0.1:{}", ports.gateway))
            .env("BOOKING_GRPC_URL", format!("http://127.0.0.1:{}", ports.booking))
            .env("PAYMENT_GRPC_URL", format!("http://127.0.0.1:{}", ports.payment))
            .envs(extra_env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.procs.insert(name.to_owned(), child);
    }

    /// SIGKILL: no drain, no flush.
    fn kill(&mut self, name: &str) {
        let mut child = self.procs.remove(name).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn gateway(&mut self, replica: char) -> String {
        format!("http://127.0.0.1:{}", self.ports(replica).gateway)
    }

    async fn wait_ready(&mut self, replica: char) {
        let url = format!("{}/readyz", self.gateway(replica));
        let ready = eventually(Duration::from_secs(90), || async {
            let r = self.client.get(&url).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(())
        })
        .await;
        assert!(ready.is_some(), "replica {replica} became ready; logs in {}", self.dir.display());
    }

    /// booking-a, payment-a and gateway-a, ready.
    async fn start_all(&mut self) {
        for name in ["booking-a", "payment-a", "gateway-a"] {
            self.start(name, &[]);
        }
        self.wait_ready('a').await;
    }

    fn token(&self, user: &str) -> String {
        edge::auth::issue_token(&self.secret, user, false, 3600).unwrap()
    }

    fn env(&self, key: &str) -> String {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap()
    }

    fn db_url(&self, db: &str) -> String {
        format!("{}/{}", self.env("DATABASE_URL").rsplit_once('/').unwrap().0, self.env(db))
    }

    /// `ticketing check` as a process; returns its exit status and output.
    fn check(&self) -> (bool, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_ticketing"))
            .arg("check")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Leaves `key` out of every process's environment from now on.
    fn unset(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    fn stop_all(&mut self) {
        for (_, mut child) in self.procs.drain() {
            signal(child.id(), "TERM");
            let _ = child.wait();
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for (_, child) in self.procs.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------- clients

/// A client that books one seat and pays, retrying like a real client (same
/// Idempotency-Key, the next gateway when one is gone) through crashes and
/// outages, until a final answer. Returns the booking id once paid.
async fn purchase(client: reqwest::Client, gateways: Vec<String>, token: String, user: String, seat: String) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut turn = 0;
    let mut next_gateway = || {
        turn += 1;
        gateways[turn % gateways.len()].clone()
    };
    let booking_key = unique_name("book");
    let body = json!({"performanceId": "perf_001", "seatIds": [seat], "userId": user});
    let mut gateway = next_gateway();
    let booked: Value = loop {
        assert!(Instant::now() < deadline, "booking for {user} never got an answer");
        let sent = client
            .post(format!("{gateway}/bookings"))
            .bearer_auth(&token)
            .header("Idempotency-Key", &booking_key)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == StatusCode::CREATED => break r.json().await.unwrap(),
            Ok(r) if r.status().is_client_error() && r.status() != StatusCode::CONFLICT => {
                panic!("booking refused: {} {}", r.status(), r.text().await.unwrap_or_default())
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            Err(_) => {
                gateway = next_gateway();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    let booking_id = booked["bookingId"].as_str().unwrap().to_owned();
    let intent = booked["paymentIntentId"].as_str().unwrap().to_owned();
    let pay_key = unique_name("pay");
    let pay = json!({"paymentIntentId": intent, "paymentMethodToken": "tok_visa", "cvv": CVV});
    loop {
        assert!(Instant::now() < deadline, "payment of {booking_id} never got an answer");
        let sent = client
            .post(format!("{gateway}/payments/execute"))
            .bearer_auth(&token)
            .header("Idempotency-Key", &pay_key)
            .json(&pay)
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == StatusCode::OK => return booking_id,
            // Not there yet (the intent travels over Kafka), in flight, or down: retry.
            Ok(r)
                if matches!(r.status(), StatusCode::NOT_FOUND | StatusCode::CONFLICT)
                    || r.status().is_server_error() =>
            {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok(r) => panic!("payment refused: {} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(_) => {
                gateway = next_gateway();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

async fn wait_confirmed(d: &Deployment, gateway: &str, user: &str, booking: &str, within: Duration) {
    let token = d.token(user);
    let ok = eventually(within, || async {
        let r = d.client.get(format!("{gateway}/bookings/{booking}")).bearer_auth(&token).send().await.ok()?;
        let body: Value = r.json().await.ok()?;
        (body["status"] == "confirmed").then_some(())
    })
    .await;
    assert!(ok.is_some(), "{booking} never confirmed; logs in {}", d.dir.display());
}

type Purchases = Vec<(String, tokio::task::JoinHandle<String>)>;

fn seat(n: usize) -> String {
    format!("{}{}", ["A", "B", "C", "D", "E", "F", "G", "H"][n / 20], 1 + n % 20)
}

fn spawn_purchases(d: &Deployment, gateways: &[String], tag: &str, count: usize, first_seat: usize) -> Purchases {
    (0..count)
        .map(|n| {
            let user = format!("{tag}_{n}");
            let mut order = gateways.to_vec();
            order.rotate_left(n % gateways.len());
            let task = tokio::spawn({
                let (client, token, user, seat) =
                    (d.client.clone(), d.token(&user), user.clone(), seat(first_seat + n));
                async move {
                    tokio::time::sleep(Duration::from_millis(150 * n as u64)).await;
                    purchase(client, order, token, user, seat).await
                }
            });
            (user, task)
        })
        .collect()
}

/// Every acknowledged purchase reaches confirmed.
async fn settle(d: &Deployment, gateway: &str, purchases: Purchases) {
    for (user, task) in purchases {
        let booking = task.await.unwrap();
        wait_confirmed(d, gateway, &user, &booking, Duration::from_secs(120)).await;
    }
}

/// A new purchase completes end to end (book, pay, confirmed) within `within`;
/// returns how long it took.
async fn new_purchase_completes(d: &Deployment, gateway: &str, user: &str, seat: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let booking = tokio::time::timeout(
        within,
        purchase(d.client.clone(), vec![gateway.to_owned()], d.token(user), user.to_owned(), seat.to_owned()),
    )
    .await
    .unwrap_or_else(|_| panic!("a new purchase did not get paid within {within:?}; logs in {}", d.dir.display()));
    wait_confirmed(d, gateway, user, &booking, within.saturating_sub(started.elapsed())).await;
    started.elapsed()
}

fn assert_check_passes(d: &Deployment) {
    let mut last = String::new();
    for _ in 0..50 {
        let (ok, output) = d.check();
        if ok {
            return;
        }
        last = output;
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("ticketing check failed:\n{last}");
}

fn contains_cvv(text: &str) -> bool {
    testkit::contains_token(text, CVV)
}

/// Reads every record of `topics` from the start.
async fn read_all(brokers: &str, topics: &[&str]) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = messaging::kafka::client_config(brokers)
        .set("group.id", unique_name("scan"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(topics).unwrap();
    let mut seen = Vec::new();
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(8), consumer.recv()).await {
        seen.push(message.detach());
    }
    seen
}

/// No CVV in the logs, the databases or the topics, and no secret
/// (JWT_SECRET, a Kafka password) in the logs.
async fn assert_no_cvv(d: &Deployment, brokers: &str) {
    use rdkafka::message::{Headers, Message};
    let secrets: Vec<String> =
        d.env.iter().filter(|(k, _)| k == "JWT_SECRET" || k.ends_with("PASSWORD")).map(|(_, v)| v.clone()).collect();
    assert_eq!(secrets.len(), 2, "the test runs with both secrets");
    for entry in std::fs::read_dir(&d.dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(!contains_cvv(&text), "{} contains the CVV", path.display());
            for secret in &secrets {
                assert!(!text.contains(secret.as_str()), "{} contains a secret", path.display());
            }
        }
    }
    for db in ["BOOKING_DATABASE", "PAYMENT_DATABASE"] {
        let dump = Command::new("pg_dump").arg("--data-only").arg(d.db_url(db)).output().unwrap();
        assert!(dump.status.success(), "pg_dump {}", String::from_utf8_lossy(&dump.stderr));
        assert!(!contains_cvv(&String::from_utf8_lossy(&dump.stdout)), "{db} contains the CVV");
    }
    let topics = messaging::topics::Topics::new("");
    let records = read_all(brokers, &topics.all()).await;
    assert!(!records.is_empty(), "the topics were read");
    for message in records {
        let mut bytes = message.payload().unwrap_or_default().to_vec();
        for header in message.headers().iter().flat_map(|h| h.iter()) {
            bytes.extend_from_slice(header.value.unwrap_or_default());
        }
        assert!(!contains_cvv(&String::from_utf8_lossy(&bytes)), "a Kafka record contains the CVV");
    }
}

/// No consumer ever sees a gap in one key's events: the first time
/// `ce_sequence` n of a key arrives, n - 1 has arrived before it (a repeat
/// of a number already seen is a duplicate). Returns how many keys were seen.
fn assert_no_sequence_gaps(records: &[rdkafka::message::OwnedMessage]) -> usize {
    use rdkafka::message::{Headers, Message};
    let mut last: HashMap<(String, Vec<u8>), i64> = HashMap::new();
    for message in records {
        let sequence = message
            .headers()
            .and_then(|h| h.iter().find(|x| x.key == "ce_sequence").and_then(|x| x.value))
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
            .expect("every record carries ce_sequence");
        let seen = last.entry((message.topic().to_owned(), message.key().unwrap_or_default().to_vec())).or_insert(0);
        if sequence <= *seen {
            continue;
        }
        assert_eq!(
            sequence,
            *seen + 1,
            "{} offset {}: sequence {sequence} after {seen}",
            message.topic(),
            message.offset()
        );
        *seen = sequence;
    }
    last.len()
}

/// Nothing was dead-lettered.
async fn assert_no_dead_letters(brokers: &str) {
    let topics = messaging::topics::Topics::new("");
    let dlqs: Vec<String> = topics.all().iter().map(|t| messaging::kafka::dlq_topic(t)).collect();
    let dlq_refs: Vec<&str> = dlqs.iter().map(String::as_str).collect();
    let dead = read_all(brokers, &dlq_refs).await;
    assert!(dead.is_empty(), "{} records were dead-lettered", dead.len());
}

// ---------------------------------------------------------------- the faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_hung_for_30_seconds_loses_nothing_and_new_purchases_complete() {
    let _serial = SERIAL.lock().await;
    let dir = workdir("faults_hang");
    let Some(tansu) = Tansu::start(&dir) else { return };
    let mut d = Deployment::new(dir, &tansu.brokers, server_url());
    d.start_all().await;
    let gateway = d.gateway('a');
    let purchases = spawn_purchases(&d, std::slice::from_ref(&gateway), "hang", 16, 0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Longer than any producer timeout but the message timeout.
    tansu.hang();
    // Nothing waits on the hung broker on the request threads: liveness and
    // reads keep answering quickly all through the hang.
    let reads = {
        let (client, token) = (d.client.clone(), d.token("hang_reader"));
        let (health, list) = (format!("{gateway}/healthz"), format!("{gateway}/bookings/my"));
        tokio::spawn(async move {
            let mut took = Vec::new();
            let until = Instant::now() + Duration::from_secs(28);
            while Instant::now() < until {
                for (url, auth) in [(&health, false), (&list, true)] {
                    let started = Instant::now();
                    let mut request = client.get(url.as_str());
                    if auth {
                        request = request.bearer_auth(&token);
                    }
                    let ok = request.send().await.is_ok_and(|r| r.status().is_success());
                    took.push((url.clone(), ok, started.elapsed()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            took
        })
    };
    tokio::time::sleep(Duration::from_secs(30)).await;
    tansu.resume();
    let mut took = reads.await.unwrap();
    assert!(took.iter().all(|(_, ok, _)| *ok), "every read answered during the hang");
    took.sort_by_key(|(_, _, elapsed)| *elapsed);
    let p99 = took[took.len() * 99 / 100].2;
    println!("during a 30 s broker hang, /healthz and /bookings/my answered with p99 {p99:?} ({} reads)", took.len());
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?} while the broker hung");
    let took = new_purchase_completes(&d, &gateway, "hang_after", "H1", Duration::from_secs(30)).await;
    println!("after a 30 s broker hang, a new purchase completed {took:?} after SIGCONT");
    settle(&d, &gateway, purchases).await;
    assert_check_passes(&d);
    assert_no_sequence_gaps(&read_all(&tansu.brokers, &messaging::topics::Topics::new("").all()).await);
    d.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_hung_while_message_timeouts_fire_never_reorders_one_bookings_events() {
    let _serial = SERIAL.lock().await;
    let dir = workdir("faults_order");
    let Some(tansu) = Tansu::start(&dir) else { return };
    let mut d = Deployment::new(dir, &tansu.brokers, server_url());
    // Deliveries time out while the broker hangs, so the relay sends again
    // from its checkpoint while earlier sends may still land.
    d.env.push(("KAFKA_PROPERTY_MESSAGE_TIMEOUT_MS".to_owned(), "3000".to_owned()));
    d.start_all().await;
    let gateway = d.gateway('a');
    let purchases = spawn_purchases(&d, std::slice::from_ref(&gateway), "order", 16, 0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    tansu.hang();
    tokio::time::sleep(Duration::from_secs(15)).await;
    tansu.resume();
    new_purchase_completes(&d, &gateway, "order_after", "H1", Duration::from_secs(60)).await;
    settle(&d, &gateway, purchases).await;
    assert_check_passes(&d);
    let records = read_all(&tansu.brokers, &messaging::topics::Topics::new("").all()).await;
    let keys = assert_no_sequence_gaps(&records);
    assert!(keys >= 34, "both topics' keys of 17 purchases were read: {keys}");
    d.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_dev_and_restarting_it_as_the_readme_runs_it_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = workdir("faults_dev");
    let Some(tansu) = Tansu::start(&dir) else { return };
    let mut d = Deployment::new(dir, &tansu.brokers, server_url());
    d.start("dev-a", &[]);
    d.wait_ready('a').await;
    let gateway = d.gateway('a');
    let purchases = spawn_purchases(&d, std::slice::from_ref(&gateway), "dev", 16, 20);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    d.kill("dev-a");
    d.start("dev-a", &[]);
    let restarted = Instant::now();
    // Back in seconds: the killed process's partition leases ended with
    // its database sessions, so the restarted one takes them at once.
    let took = new_purchase_completes(&d, &gateway, "dev_after", "H2", Duration::from_secs(15)).await;
    println!("after SIGKILL and restart of dev, a new purchase completed {took:?} after the restart");
    // Every purchase acknowledged before or across the crash is confirmed
    // within 15 s of the restart.
    for (user, task) in purchases {
        let booking = task.await.unwrap();
        let left = Duration::from_secs(15).saturating_sub(restarted.elapsed()).max(Duration::from_secs(1));
        wait_confirmed(&d, &gateway, &user, &booking, left).await;
    }
    assert_check_passes(&d);
    d.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_with_no_database_running_brings_its_own_and_keeps_it_for_the_next_run() {
    let _serial = SERIAL.lock().await;
    let dir = workdir("faults_dev_pg");
    if ticketing::private_postgres::server_bindir().is_none() {
        testkit::skip_notice("dev's private PostgreSQL: no PostgreSQL server binaries on this machine");
        return;
    }
    let Some(tansu) = Tansu::start(&dir) else { return };
    // This machine's own server answers on 5432, so the switch forces the
    // private cluster; DATABASE_URL stays unset, as on a fresh laptop.
    let mut d = Deployment::new(dir.clone(), &tansu.brokers, String::new());
    d.unset("DATABASE_URL");
    let pg_dir = dir.join("dev-pg");
    let private = [("DEV_PRIVATE_POSTGRES", "1"), ("DEV_POSTGRES_DIR", pg_dir.to_str().unwrap())];
    d.start("dev-a", &private);
    d.wait_ready('a').await;
    let gateway = d.gateway('a');
    new_purchase_completes(&d, &gateway, "own_pg", "H5", Duration::from_secs(90)).await;
    assert!(pg_dir.join("postmaster.pid").exists(), "the private cluster runs while dev does");

    // dev stops its cluster when it exits ...
    d.stop_all();
    assert!(!pg_dir.join("postmaster.pid").exists(), "dev stopped its private PostgreSQL on exit");
    // ... and the next run reuses it: the purchase is still there.
    d.start("dev-a", &private);
    d.wait_ready('a').await;
    let list = d.client.get(format!("{gateway}/bookings/my")).bearer_auth(d.token("own_pg")).send().await.unwrap();
    let list: Value = list.json().await.unwrap();
    assert!(
        list.as_array().is_some_and(|l| l.iter().any(|b| b["status"] == "confirmed")),
        "the booking survived a restart of dev: {list}"
    );
    new_purchase_completes(&d, &gateway, "own_pg_again", "H6", Duration::from_secs(90)).await;
    d.stop_all();
    let log = std::fs::read_to_string(dir.join("dev-a.log")).unwrap_or_default();
    assert!(log.contains("private PostgreSQL is up"), "dev says where its database is");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_each_service_process_mid_stream_and_restarting_it_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = workdir("faults_kill");
    let Some(tansu) = Tansu::start(&dir) else { return };
    let mut d = Deployment::new(dir, &tansu.brokers, server_url());
    // Log everything: neither the CVV nor a secret may show up, even at debug level.
    d.env.retain(|(k, _)| k != "RUST_LOG");
    d.env.push(("RUST_LOG".to_owned(), "debug,h2=info,hyper=info,tower=info,librdkafka=info,sqlx=info".to_owned()));
    // A Kafka credential passed through (ignored by a PLAINTEXT broker, but held by every client).
    d.env.push(("KAFKA_PROPERTY_SASL_PASSWORD".to_owned(), unique_name("kafka-password")));
    d.start_all().await;
    let gateway = d.gateway('a');
    let purchases = spawn_purchases(&d, std::slice::from_ref(&gateway), "kill", 24, 40);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    d.kill("booking-a");
    d.start("booking-a", &[]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    d.kill("payment-a");
    d.start("payment-a", &[]);
    let restarted = Instant::now();
    new_purchase_completes(&d, &gateway, "kill_after", "H3", Duration::from_secs(120)).await;
    println!("after SIGKILL and restart of each service, a new purchase completed {:?} after", restarted.elapsed());
    settle(&d, &gateway, purchases).await;
    assert_check_passes(&d);
    d.stop_all();
    assert_no_cvv(&d, &tansu.brokers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_load_dead_letters_nothing_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = workdir("faults_pg");
    let Some(tansu) = Tansu::start(&dir) else { return };
    let postgres = private_postgres(&dir);
    let mut d = Deployment::new(dir, &tansu.brokers, postgres.url());
    d.start_all().await;
    let gateway = d.gateway('a');
    let purchases = spawn_purchases(&d, std::slice::from_ref(&gateway), "pg", 16, 60);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    postgres.stop().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    postgres.start_again().unwrap();
    let restarted = Instant::now();
    new_purchase_completes(&d, &gateway, "pg_after", "H4", Duration::from_secs(60)).await;
    println!("after a 5 s PostgreSQL outage, a new purchase completed {:?} after it came back", restarted.elapsed());
    settle(&d, &gateway, purchases).await;
    assert_check_passes(&d);
    assert_no_dead_letters(&tansu.brokers).await;
    d.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_postgres_outage_and_a_restart_of_the_other_replica_every_partition_drains() {
    let _serial = SERIAL.lock().await;
    let dir = workdir("faults_pg_replicas");
    let Some(tansu) = Tansu::start(&dir) else { return };
    let postgres = private_postgres(&dir);
    let mut d = Deployment::new(dir, &tansu.brokers, postgres.url());
    d.start_all().await;
    for name in ["booking-b", "payment-b", "gateway-b"] {
        d.start(name, &[]);
    }
    d.wait_ready('b').await;
    let (gateway_a, gateway_b) = (d.gateway('a'), d.gateway('b'));
    let purchases = spawn_purchases(&d, &[gateway_a.clone(), gateway_b], "pgrep", 16, 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Records fail while the database is away: partitions pause and retry.
    postgres.stop().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    postgres.start_again().unwrap();
    // Then the other replica restarts: its partitions move and come back.
    for name in ["booking-b", "payment-b"] {
        d.kill(name);
        d.start(name, &[]);
    }
    new_purchase_completes(&d, &gateway_a, "pgrep_after", "H1", Duration::from_secs(60)).await;
    settle(&d, &gateway_a, purchases).await;
    assert_check_passes(&d);
    assert_no_dead_letters(&tansu.brokers).await;
    d.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_the_psp_charged_is_recorded_once_after_restart() {
    let _serial = SERIAL.lock().await;
    let dir = workdir("faults_psp");
    let Some(tansu) = Tansu::start(&dir) else { return };
    let mut d = Deployment::new(dir, &tansu.brokers, server_url());
    d.start("booking-a", &[]);
    d.start("payment-a", &[(runtime::failpoint::ENV, "payment.after_psp_charge")]);
    d.start("gateway-a", &[]);
    d.wait_ready('a').await;
    let gateway = d.gateway('a');
    let user = "crash_payer";
    let token = d.token(user);
    let booked: Value = d
        .client
        .post(format!("{gateway}/bookings"))
        .bearer_auth(&token)
        .json(&json!({"performanceId": "perf_001", "seatIds": ["H5"], "userId": user}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let booking = booked["bookingId"].as_str().unwrap().to_owned();
    let intent = booked["paymentIntentId"].as_str().unwrap().to_owned();
    let pay = json!({"paymentIntentId": intent, "paymentMethodToken": "tok_visa", "cvv": CVV});
    let client = d.client.clone();
    let pay_once = || {
        client
            .post(format!("{gateway}/payments/execute"))
            .bearer_auth(&token)
            .header("Idempotency-Key", "crash-pay-1")
            .json(&pay)
            .send()
    };
    // The payment-service aborts right after the PSP accepted the charge.
    let crashed = eventually(Duration::from_secs(30), || async {
        let r = pay_once().await.ok()?;
        (r.status().is_server_error()).then_some(r.status())
    })
    .await;
    assert!(crashed.is_some(), "the charge reached the PSP and the process died");
    let mut payment = d.procs.remove("payment-a").unwrap();
    assert!(!payment.wait().unwrap().success(), "the failpoint aborted the payment-service");
    // A plain restart: the reconciler finds the attempt and asks the PSP.
    d.start("payment-a", &[]);
    wait_confirmed(&d, &gateway, user, &booking, Duration::from_secs(90)).await;
    // The client's retry with its key gets the recorded answer, not a second charge.
    let replayed = eventually(Duration::from_secs(30), || async {
        let r = pay_once().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(replayed.is_some(), "the retry with the same key was answered 200");
    let payment_db = sqlx::PgPool::connect(&d.db_url("PAYMENT_DATABASE")).await.unwrap();
    let charges: i64 =
        sqlx::query_scalar("select count(*) from psp.charges where payment_intent_id = $1 and status = 'succeeded'")
            .bind(&intent)
            .fetch_one(&payment_db)
            .await
            .unwrap();
    assert_eq!(charges, 1, "the PSP shows one charge");
    let recorded: i64 =
        sqlx::query_scalar("select count(*) from events where stream_id = $1 and event_type = 'PaymentSucceeded'")
            .bind(&intent)
            .fetch_one(&payment_db)
            .await
            .unwrap();
    assert_eq!(recorded, 1, "the charge is recorded exactly once");
    assert_check_passes(&d);
    d.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_two_replicas_of_each_lose_one_of_each_and_the_survivors_take_over() {
    let _serial = SERIAL.lock().await;
    let dir = workdir("faults_scale");
    let Some(tansu) = Tansu::start(&dir) else { return };
    let mut d = Deployment::new(dir, &tansu.brokers, server_url());
    // Replica a first, so it holds both relays' leadership when it dies.
    d.start_all().await;
    for name in ["booking-b", "payment-b", "gateway-b"] {
        d.start(name, &[]);
    }
    d.wait_ready('b').await;
    let (gateway_a, gateway_b) = (d.gateway('a'), d.gateway('b'));
    let purchases = spawn_purchases(&d, &[gateway_a, gateway_b.clone()], "scale", 24, 80);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for name in ["booking-a", "payment-a", "gateway-a"] {
        d.kill(name);
    }
    let killed = Instant::now();
    new_purchase_completes(&d, &gateway_b, "scale_after", "H6", Duration::from_secs(120)).await;
    println!("after losing one replica of each, a new purchase completed {:?} after the kill", killed.elapsed());
    settle(&d, &gateway_b, purchases).await;
    assert_check_passes(&d);
    d.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_refusing_connections_for_30_seconds_loses_nothing() {
    let _serial = SERIAL.lock().await;
    // Its own embedded broker: it can refuse connections on demand.
    let kafka = TestKafka::embedded().unwrap();
    let mut d = Deployment::new(workdir("faults_refused"), kafka.brokers(), server_url());
    // The embedded broker does not serve CreateTopics: create them here.
    kafka.create_topics(&messaging::topics::Topics::new("").all(), 3).await.unwrap();
    d.start_all().await;
    let gateway = d.gateway('a');
    let purchases = spawn_purchases(&d, std::slice::from_ref(&gateway), "refused", 16, 100);
    tokio::time::sleep(Duration::from_millis(800)).await;
    kafka.broker_down();
    tokio::time::sleep(Duration::from_secs(30)).await;
    kafka.broker_up();
    new_purchase_completes(&d, &gateway, "refused_after", "H7", Duration::from_secs(90)).await;
    settle(&d, &gateway, purchases).await;
    assert_check_passes(&d);
    d.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_first_then_drains_then_exits_in_time() {
    let kafka = TestKafka::start().unwrap();
    let mut d = Deployment::new(workdir("faults_sigterm"), kafka.brokers(), server_url());
    let prefix = format!("{}.", unique_name("sigterm"));
    kafka.create_topics(&messaging::topics::Topics::new(&prefix).all(), 3).await.unwrap();
    d.env.push(("KAFKA_TOPIC_PREFIX".to_owned(), prefix));
    d.env.retain(|(k, _)| k != "SHUTDOWN_DRAIN_SECS");
    d.env.push(("SHUTDOWN_DRAIN_SECS".to_owned(), "3".to_owned()));
    d.start_all().await;
    let gateway_url = d.gateway('a');
    let gateway = d.procs.remove("gateway-a").unwrap();
    let started = Instant::now();
    signal(gateway.id(), "TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = d.client.get(format!("{gateway_url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE, "readiness fails first");
    let alive = d.client.get(format!("{gateway_url}/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), StatusCode::OK, "still serving while draining");
    let status = tokio::task::spawn_blocking(move || {
        let mut gateway = gateway;
        gateway.wait().unwrap()
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(status.success(), "clean exit: {status}");
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(15), "drained, then exited: {took:?}");
    d.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_runs_every_scenario_and_its_baseline_and_reports_no_oversell() {
    let output = std::env::temp_dir().join(format!("{}.json", unique_name("bench")));
    // As a user runs it: against KAFKA_BROKERS when set (tansu in CI), else
    // with the bench's own embedded broker.
    let mut bench = Command::new(env!("CARGO_BIN_EXE_ticketing"));
    bench
        .args(["bench", "--clients", "4", "--duration", "1s", "--onsale-clients", "40", "--onsale-seats", "5"])
        .arg("--output")
        .arg(&output)
        .env("DATABASE_URL", server_url())
        .env("RUST_LOG", "error");
    match std::env::var("KAFKA_BROKERS").ok().filter(|b| !b.is_empty()) {
        Some(brokers) => bench.env("KAFKA_BROKERS", brokers),
        None => bench.env_remove("KAFKA_BROKERS"),
    };
    let run = bench.output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
    let names: Vec<&str> =
        report["scenarios"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["warm-up", "flow", "distinct", "onsale"]);
    assert_eq!(report["scenarios"][0]["statuses"]["200"], 1, "the warm-up purchase completed");
    assert_eq!(report["scenarios"][3]["extra"]["winners"], 5, "exactly one winner per seat");
    assert!(report["scenarios"][3]["extra"]["losers_400"]["count"].as_u64().is_some_and(|n| n == 35), "{stdout}");
    assert_eq!(report["oversold_seats"], 0);
    assert!(report["pgbench_tps"].as_f64().is_some_and(|tps| tps > 0.0), "{stdout}");
    assert!(report["scenarios"][2]["latency"]["p99_ms"].as_f64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_up_error_names_the_setting_to_change_and_never_shows_a_password() {
    let closed = free_port();
    let run = |env: &[(&str, String)]| {
        let output = Command::new(env!("CARGO_BIN_EXE_ticketing"))
            .arg("booking")
            .env_remove("KAFKA_BROKERS")
            .env("JWT_SECRET", "a-test-secret-of-at-least-32-bytes")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("BOOKING_GRPC_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "error")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let database = run(&[
        ("DATABASE_URL", format!("postgres://app:hunter2-secret@127.0.0.1:{closed}/postgres")),
        ("KAFKA_BROKERS", format!("127.0.0.1:{closed}")),
    ]);
    assert!(database.contains("DATABASE_URL") && database.contains("app:***@"), "{database}");
    assert!(!database.contains("hunter2-secret"), "the password is masked: {database}");
    let broker = run(&[("DATABASE_URL", server_url()), ("KAFKA_BROKERS", format!("127.0.0.1:{closed}"))]);
    assert!(broker.contains(&format!("KAFKA_BROKERS 127.0.0.1:{closed}")), "{broker}");
    let key = run(&[
        ("DATABASE_URL", server_url()),
        ("KAFKA_BROKERS", format!("127.0.0.1:{closed}")),
        ("JWT_JWKS", "/nonexistent/jwks.json".to_owned()),
    ]);
    assert!(key.contains("JWT_JWKS"), "{key}");
}
