//! What every fault test uses: a private tansu broker, a deployment of real
//! `ticketing` processes, purchasing clients, and the checks after a fault.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::eventually;
use testkit::unique_name;
use ticketing::private_postgres::PrivatePostgres;

pub(crate) const CVV: &str = "8642";

pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A port for a deployment's process (see `ticketing::ports`).
pub(crate) fn free_port() -> u16 {
    ticketing::ports::free_port().unwrap()
}

pub(crate) fn signal(pid: u32, name: &str) {
    assert!(Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap().success());
}

// ---------------------------------------------------------------- the broker

/// A private tansu broker process on a free port.
pub(crate) struct Tansu {
    pub(crate) child: Child,
    pub(crate) brokers: String,
}

impl Tansu {
    /// Starts one; `None` (with a notice) where tansu is not installed,
    /// except in CI, which installs it: there a missing tansu fails.
    pub(crate) fn start(dir: &Path) -> Option<Self> {
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
    pub(crate) fn hang(&self) {
        signal(self.child.id(), "STOP");
    }

    pub(crate) fn resume(&self) {
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
pub(crate) fn private_postgres(dir: &Path) -> PrivatePostgres {
    PrivatePostgres::start(&dir.join("pgdata")).unwrap()
}

// ---------------------------------------------------------------- a deployment

/// The ports of one replica set (a booking-service, a payment-service and
/// the gateway in front of them).
#[derive(Clone, Copy)]
pub(crate) struct Ports {
    pub(crate) booking: u16,
    pub(crate) payment: u16,
    pub(crate) gateway: u16,
}

/// One deployment: env shared by its processes, their logs in `dir`.
pub(crate) struct Deployment {
    pub(crate) env: Vec<(String, String)>,
    pub(crate) dir: PathBuf,
    pub(crate) secret: String,
    pub(crate) ports: HashMap<char, Ports>,
    pub(crate) procs: HashMap<String, Child>,
    /// Variables no process gets, even if this test process has them.
    pub(crate) removed: Vec<String>,
    pub(crate) client: reqwest::Client,
}

impl Deployment {
    pub(crate) fn new(dir: PathBuf, brokers: &str, database_url: String) -> Self {
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
            ("PSP", "simulated".to_owned()),
            ("RUST_LOG", "info,librdkafka=warn".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        Self { env, dir, secret, ports: HashMap::new(), procs: HashMap::new(), removed: Vec::new(), client }
    }

    pub(crate) fn ports(&mut self, replica: char) -> Ports {
        *self.ports.entry(replica).or_insert_with(|| Ports {
            booking: free_port(),
            payment: free_port(),
            gateway: free_port(),
        })
    }

    /// Starts process `name` (`booking-a`, `gateway-b`, `dev-a`, ...): the
    /// command before the dash, the replica set after it.
    pub(crate) fn start(&mut self, name: &str, extra_env: &[(&str, &str)]) {
        let (command, replica) = name.split_once('-').unwrap();
        let ports = self.ports(replica.chars().next().unwrap());
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{name}.log"))).unwrap();
        let mut process = Command::new(env!("CARGO_BIN_EXE_ticketing"));
        process.arg(command).envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        for key in &self.removed {
            process.env_remove(key);
        }
        let child = process
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
    pub(crate) fn kill(&mut self, name: &str) {
        let mut child = self.procs.remove(name).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub(crate) fn gateway(&mut self, replica: char) -> String {
        format!("http://127.0.0.1:{}", self.ports(replica).gateway)
    }

    pub(crate) async fn wait_ready(&mut self, replica: char) {
        let url = format!("{}/readyz", self.gateway(replica));
        let ready = eventually(Duration::from_secs(90), || async {
            let r = self.client.get(&url).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(())
        })
        .await;
        assert!(ready.is_some(), "replica {replica} became ready; logs in {}", self.dir.display());
    }

    /// booking-a, payment-a and gateway-a, ready.
    pub(crate) async fn start_all(&mut self) {
        for name in ["booking-a", "payment-a", "gateway-a"] {
            self.start(name, &[]);
        }
        self.wait_ready('a').await;
    }

    pub(crate) fn token(&self, user: &str) -> String {
        edge::auth::issue_token(&self.secret, user, false, 3600).unwrap()
    }

    pub(crate) fn env(&self, key: &str) -> String {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap()
    }

    pub(crate) fn db_url(&self, db: &str) -> String {
        format!("{}/{}", self.env("DATABASE_URL").rsplit_once('/').unwrap().0, self.env(db))
    }

    /// `ticketing check` as a process; returns its exit status and output.
    pub(crate) fn check(&self) -> (bool, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_ticketing"))
            .arg("check")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Leaves `key` out of every process's environment from now on.
    /// Starts processes without `key`, even when this test process has it
    /// (CI exports KAFKA_BROKERS, which a child would otherwise inherit).
    pub(crate) fn unset(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
        self.removed.push(key.to_owned());
    }

    pub(crate) fn stop_all(&mut self) {
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

pub(crate) fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------- clients

/// A client that books one seat and pays, retrying like a real client (same
/// Idempotency-Key, the next gateway when one is gone) through crashes and
/// outages, until a final answer. Returns the booking id once paid.
pub(crate) async fn purchase(
    client: reqwest::Client,
    gateways: Vec<String>,
    token: String,
    user: String,
    seat: String,
) -> String {
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

pub(crate) async fn wait_confirmed(d: &Deployment, gateway: &str, user: &str, booking: &str, within: Duration) {
    let token = d.token(user);
    let ok = eventually(within, || async {
        let r = d.client.get(format!("{gateway}/bookings/{booking}")).bearer_auth(&token).send().await.ok()?;
        let body: Value = r.json().await.ok()?;
        (body["status"] == "confirmed").then_some(())
    })
    .await;
    assert!(ok.is_some(), "{booking} never confirmed; logs in {}", d.dir.display());
}

pub(crate) type Purchases = Vec<(String, tokio::task::JoinHandle<String>)>;

pub(crate) fn seat(n: usize) -> String {
    format!("{}{}", ["A", "B", "C", "D", "E", "F", "G", "H"][n / 20], 1 + n % 20)
}

pub(crate) fn spawn_purchases(
    d: &Deployment,
    gateways: &[String],
    tag: &str,
    count: usize,
    first_seat: usize,
) -> Purchases {
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
pub(crate) async fn settle(d: &Deployment, gateway: &str, purchases: Purchases) {
    for (user, task) in purchases {
        let booking = task.await.unwrap();
        wait_confirmed(d, gateway, &user, &booking, Duration::from_secs(120)).await;
    }
}

/// A new purchase completes end to end (book, pay, confirmed) within `within`;
/// returns how long it took.
pub(crate) async fn new_purchase_completes(
    d: &Deployment,
    gateway: &str,
    user: &str,
    seat: &str,
    within: Duration,
) -> Duration {
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

pub(crate) fn assert_check_passes(d: &Deployment) {
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

pub(crate) fn contains_cvv(text: &str) -> bool {
    testkit::contains_token(text, CVV)
}

/// Reads every record of `topics` from the start.
pub(crate) async fn read_all(brokers: &str, topics: &[&str]) -> Vec<rdkafka::message::OwnedMessage> {
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
pub(crate) async fn assert_no_cvv(d: &Deployment, brokers: &str) {
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
pub(crate) fn assert_no_sequence_gaps(records: &[rdkafka::message::OwnedMessage]) -> usize {
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
pub(crate) async fn assert_no_dead_letters(brokers: &str) {
    let topics = messaging::topics::Topics::new("");
    let dlqs: Vec<String> = topics.all().iter().map(|t| messaging::kafka::dlq_topic(t)).collect();
    let dlq_refs: Vec<&str> = dlqs.iter().map(String::as_str).collect();
    let dead = read_all(brokers, &dlq_refs).await;
    assert!(dead.is_empty(), "{} records were dead-lettered", dead.len());
}
