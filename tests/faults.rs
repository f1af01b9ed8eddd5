//! Fault injection with real processes: the three components run as
//! separate `ticketing` processes; the tests SIGKILL them mid-stream and
//! take the broker away, then require every purchase that got a 2xx to reach
//! its final state, `ticketing check` to pass, and no CVV anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::testkit::{eventually, server_url, unique_name, TestKafka};

const CVV: &str = "8642";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One deployment: env shared by the three processes, their logs in `dir`.
struct Deployment {
    env: Vec<(String, String)>,
    dir: PathBuf,
    gateway: String,
    secret: String,
    procs: HashMap<&'static str, Child>,
    client: reqwest::Client,
}

impl Deployment {
    async fn new(kafka: &TestKafka) -> Self {
        let prefix = format!("{}.", unique_name("faults"));
        let topics = shared::topics::Topics::new(&prefix);
        kafka.create_topics(&topics.all(), 3).await.unwrap();
        let (booking_port, payment_port, gateway_port) = (free_port(), free_port(), free_port());
        let secret = unique_name("secret");
        let env = [
            ("DATABASE_URL", server_url()),
            ("BOOKING_DATABASE", unique_name("t_faults_booking")),
            ("PAYMENT_DATABASE", unique_name("t_faults_payment")),
            ("KAFKA_BROKERS", kafka.brokers().to_owned()),
            ("KAFKA_TOPIC_PREFIX", prefix),
            ("BOOKING_GRPC_ADDR", format!("127.0.0.1:{booking_port}")),
            ("PAYMENT_GRPC_ADDR", format!("127.0.0.1:{payment_port}")),
            ("GATEWAY_ADDR", format!("127.0.0.1:{gateway_port}")),
            ("BOOKING_GRPC_URL", format!("http://127.0.0.1:{booking_port}")),
            ("PAYMENT_GRPC_URL", format!("http://127.0.0.1:{payment_port}")),
            ("JWT_SECRET", secret.clone()),
            ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
            ("SHUTDOWN_DRAIN_SECS", "0".to_owned()),
            ("SWEEP_INTERVAL_MS", "200".to_owned()),
            // Log everything: the CVV must not show up even at debug level.
            ("RUST_LOG", "debug,h2=info,hyper=info,tower=info,rdkafka=info,sqlx=info".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let dir = std::env::temp_dir().join(unique_name("faults"));
        std::fs::create_dir_all(&dir).unwrap();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        Self { env, dir, gateway: format!("http://127.0.0.1:{gateway_port}"), secret, procs: HashMap::new(), client }
    }

    fn start(&mut self, component: &'static str) {
        let instance = format!("{component}-{}", self.env("KAFKA_TOPIC_PREFIX"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{component}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ticketing"))
            .arg(component)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("KAFKA_GROUP_INSTANCE_ID", instance)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.procs.insert(component, child);
    }

    fn kill(&mut self, component: &'static str) {
        let mut child = self.procs.remove(component).unwrap();
        child.kill().unwrap(); // SIGKILL: no drain, no flush.
        child.wait().unwrap();
    }

    async fn start_all(&mut self) {
        for component in ["booking", "payment", "gateway"] {
            self.start(component);
        }
        let ready = eventually(Duration::from_secs(60), || async {
            let r = self.client.get(format!("{}/readyz", self.gateway)).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(())
        })
        .await;
        assert!(ready.is_some(), "deployment became ready; logs in {}", self.dir.display());
    }

    fn token(&self, user: &str) -> String {
        gateway::auth::issue_token(&self.secret, user, false, 3600).unwrap()
    }

    fn env(&self, key: &str) -> String {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap()
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

    fn stop_all(&mut self) {
        for (_, mut child) in self.procs.drain() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
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

/// A client that books one seat and pays, retrying like a real client
/// (same Idempotency-Key) through crashes and outages, until a final answer.
async fn purchase(
    client: reqwest::Client,
    gateway: String,
    token: String,
    user: String,
    seat: String,
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(150);
    let booking_key = unique_name("book");
    let body = json!({"performanceId": "perf_001", "seatIds": [seat], "userId": user});
    let booked: Value = loop {
        if Instant::now() > deadline {
            return None;
        }
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
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    let booking_id = booked["bookingId"].as_str().unwrap().to_owned();
    let intent = booked["paymentIntentId"].as_str().unwrap().to_owned();
    let pay_key = unique_name("pay");
    let pay = json!({"paymentIntentId": intent, "paymentMethodToken": "tok_visa", "cvv": CVV});
    loop {
        if Instant::now() > deadline {
            panic!("payment of {booking_id} never got an answer");
        }
        let sent = client
            .post(format!("{gateway}/payments/execute"))
            .bearer_auth(&token)
            .header("Idempotency-Key", &pay_key)
            .json(&pay)
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == StatusCode::OK => return Some(booking_id),
            // Not there yet (the intent travels over Kafka), in flight, or down: retry.
            Ok(r)
                if matches!(r.status(), StatusCode::NOT_FOUND | StatusCode::CONFLICT)
                    || r.status().is_server_error() =>
            {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok(r) => panic!("payment refused: {} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

async fn wait_confirmed(d: &Deployment, user: &str, booking: &str) {
    let token = d.token(user);
    let ok = eventually(Duration::from_secs(90), || async {
        let r = d.client.get(format!("{}/bookings/{booking}", d.gateway)).bearer_auth(&token).send().await.ok()?;
        let body: Value = r.json().await.ok()?;
        (body["status"] == "confirmed").then_some(())
    })
    .await;
    assert!(ok.is_some(), "{booking} never confirmed; logs in {}", d.dir.display());
}

fn spawn_purchases(
    d: &Deployment,
    tag: &str,
    count: usize,
    first_seat: usize,
) -> Vec<(String, tokio::task::JoinHandle<Option<String>>)> {
    (0..count)
        .map(|n| {
            let user = format!("{tag}_{n}");
            let seat = format!(
                "{}{}",
                ["A", "B", "C", "D", "E", "F", "G", "H"][(first_seat + n) / 20],
                1 + (first_seat + n) % 20
            );
            let task = tokio::spawn({
                let (client, gateway, token) = (d.client.clone(), d.gateway.clone(), d.token(&user));
                let user = user.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(150 * n as u64)).await;
                    purchase(client, gateway, token, user, seat).await
                }
            });
            (user, task)
        })
        .collect()
}

async fn settle(d: &Deployment, purchases: Vec<(String, tokio::task::JoinHandle<Option<String>>)>) -> usize {
    let mut confirmed = 0;
    for (user, task) in purchases {
        if let Some(booking) = task.await.unwrap() {
            wait_confirmed(d, &user, &booking).await;
            confirmed += 1;
        }
    }
    confirmed
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
    shared::testkit::contains_token(text, CVV)
}

/// No CVV in the logs, the databases or the topics.
async fn assert_no_cvv(d: &Deployment, kafka: &TestKafka) {
    for entry in std::fs::read_dir(&d.dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!contains_cvv(&text), "a log contains the CVV");
    }
    for db in ["BOOKING_DATABASE", "PAYMENT_DATABASE"] {
        let url = format!("{}/{}", server_url().rsplit_once('/').unwrap().0, d.env(db));
        let dump = Command::new("pg_dump").arg("--data-only").arg(&url).output().unwrap();
        assert!(dump.status.success(), "pg_dump {}", String::from_utf8_lossy(&dump.stderr));
        assert!(!contains_cvv(&String::from_utf8_lossy(&dump.stdout)), "{db} contains the CVV");
    }
    use rdkafka::{
        consumer::{Consumer, StreamConsumer},
        message::{Headers, Message},
    };
    let prefix = d.env("KAFKA_TOPIC_PREFIX");
    let topics = shared::topics::Topics::new(&prefix);
    let consumer: StreamConsumer = shared::kafka::client_config(kafka.brokers())
        .set("group.id", unique_name("cvv-scan"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&topics.all()).unwrap();
    let mut seen = 0;
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
        seen += 1;
        let mut bytes = message.payload().unwrap_or_default().to_vec();
        for header in message.headers().iter().flat_map(|h| h.iter()) {
            bytes.extend_from_slice(header.value.unwrap_or_default());
        }
        assert!(!contains_cvv(&String::from_utf8_lossy(&bytes)), "a Kafka record contains the CVV");
    }
    assert!(seen > 0, "the topics were read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_services_mid_stream_loses_no_purchase() {
    let kafka = TestKafka::start().unwrap();
    let mut d = Deployment::new(&kafka).await;
    d.start_all().await;
    let purchases = spawn_purchases(&d, "kill", 24, 0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    d.kill("booking");
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.start("booking");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    d.kill("payment");
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.start("payment");
    let confirmed = settle(&d, purchases).await;
    assert_eq!(confirmed, 24, "every purchase reached confirmed");
    assert_check_passes(&d);
    d.stop_all();
    assert_no_cvv(&d, &kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_first_then_drains_then_exits_in_time() {
    let kafka = TestKafka::start().unwrap();
    let mut d = Deployment::new(&kafka).await;
    d.env.retain(|(k, _)| k != "SHUTDOWN_DRAIN_SECS");
    d.env.push(("SHUTDOWN_DRAIN_SECS".to_owned(), "3".to_owned()));
    d.start_all().await;
    let gateway = d.procs.remove("gateway").unwrap();
    let pid = gateway.id().to_string();
    let started = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = d.client.get(format!("{}/readyz", d.gateway)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE, "readiness fails first");
    let alive = d.client.get(format!("{}/healthz", d.gateway)).send().await.unwrap();
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
async fn a_broker_outage_of_30_seconds_loses_no_purchase() {
    // Its own broker: stopping a shared one would disturb other tests.
    let kafka = TestKafka::embedded().unwrap();
    let mut d = Deployment::new(&kafka).await;
    d.start_all().await;
    let purchases = spawn_purchases(&d, "outage", 16, 40);
    tokio::time::sleep(Duration::from_millis(800)).await;
    kafka.embedded_broker().unwrap().broker_down().unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    kafka.embedded_broker().unwrap().broker_up().unwrap();
    let confirmed = settle(&d, purchases).await;
    assert_eq!(confirmed, 16, "every purchase reached confirmed");
    assert_check_passes(&d);
    d.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_runs_every_scenario_and_its_baseline_and_reports_no_oversell() {
    let output = std::env::temp_dir().join(format!("{}.json", unique_name("bench")));
    let kafka = TestKafka::start().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_ticketing"))
        .args(["bench", "--clients", "4", "--duration", "1s", "--onsale-clients", "40", "--onsale-seats", "5"])
        .arg("--output")
        .arg(&output)
        .env("DATABASE_URL", server_url())
        .env("KAFKA_BROKERS", kafka.brokers())
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
    let names: Vec<&str> =
        report["scenarios"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["flow", "distinct", "onsale"]);
    assert_eq!(report["scenarios"][2]["extra"]["winners"], 5, "exactly one winner per seat");
    assert_eq!(report["oversold_seats"], 0);
    assert!(report["pgbench_tps"].as_f64().is_some_and(|tps| tps > 0.0), "{stdout}");
    assert!(report["scenarios"][1]["latency"]["p99_ms"].as_f64().is_some());
}
