//! The e2e harness: a whole system per test (gateway + both services over
//! real gRPC and Kafka, fresh databases, own topic prefix) and an HTTP client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use clap::Parser;
use edge::shutdown::Shutdown;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use testkit::eventually;
use testkit::unique_name;
use testkit::TestKafka;

#[derive(Parser)]
struct Harness {
    #[command(flatten)]
    dev: ticketing::DevArgs,
}

pub struct System {
    pub base: String,
    /// `/metrics` of the whole system (its own listener, not the gateway's port).
    pub metrics: String,
    pub client: reqwest::Client,
    pub booking_db: String,
    pub payment_db: String,
    pub payment_addr: std::net::SocketAddr,
    pub booking_addr: std::net::SocketAddr,
    pub topics: messaging::topics::Topics,
    pub brokers: String,
    pub secret: String,
    shutdown: Shutdown,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _kafka: TestKafka,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl System {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a system with extra `ticketing dev` flags.
    pub async fn start_with(extra: &[&str]) -> Self {
        Self::start_configured(extra, false).await
    }

    /// Starts a system as `ticketing dev` does, with `POST /dev/token`.
    pub async fn start_dev() -> Self {
        Self::start_configured(&[], true).await
    }

    async fn start_configured(extra: &[&str], dev_tokens: bool) -> Self {
        // Kept for the whole test process: dropping it would stop span export.
        std::mem::forget(edge::telemetry::init(edge::telemetry::LogFormat::Text, "ticketing-tests"));
        let kafka = TestKafka::start().unwrap();
        let prefix = format!("{}.", unique_name("e2e"));
        let booking_db = unique_name("t_e2e_booking");
        let payment_db = unique_name("t_e2e_payment");
        let secret = unique_name("secret");
        let mut args = vec![
            "harness".to_owned(),
            "--gateway-addr=127.0.0.1:0".into(),
            "--metrics-addr=127.0.0.1:0".into(),
            "--shutdown-drain-secs=0".into(),
            "--booking-grpc-addr=127.0.0.1:0".into(),
            "--payment-grpc-addr=127.0.0.1:0".into(),
            format!("--booking-database={booking_db}"),
            format!("--payment-database={payment_db}"),
            format!("--kafka-topic-prefix={prefix}"),
            format!("--jwt-secret={secret}"),
            "--sweep-interval-ms=200".into(),
            "--database-max-connections=12".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut harness = Harness::try_parse_from(args).unwrap();
        harness.dev.dev_tokens = dev_tokens;
        let topics = harness.dev.service.kafka.topics();
        kafka.create_topics(&topics.all(), 3).await.unwrap();
        let shutdown = Shutdown::new();
        let system = ticketing::start_system(harness.dev, kafka.brokers(), shutdown.clone()).await.unwrap();
        let base = format!("http://{}", system.gateway_addr);
        let metrics = format!("http://{}", system.metrics_addr);
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let ready = eventually(Duration::from_secs(20), || async {
            let r = client.get(format!("{base}/readyz")).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(())
        })
        .await;
        assert!(ready.is_some(), "system became ready");
        let payment_addr = system.payment_addr;
        let booking_addr = system.booking_addr;
        let brokers = kafka.brokers().to_owned();
        Self {
            topics,
            brokers,
            base,
            metrics,
            client,
            booking_db,
            payment_db,
            payment_addr,
            booking_addr,
            secret,
            shutdown,
            tasks: system.tasks,
            _kafka: kafka,
        }
    }

    /// Stops the system after `ticketing check` finds both stores consistent.
    pub async fn stop(self) {
        let violations = self.settled_violations().await;
        assert!(violations.is_empty(), "invariants violated: {violations:#?}");
        self.stop_without_check().await;
    }

    /// Stops the system (for tests that leave a violation on purpose).
    pub async fn stop_without_check(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            task.await.unwrap().unwrap();
        }
    }

    pub fn token(&self, user: &str) -> String {
        edge::auth::issue_token(&self.secret, user, false, 3600).unwrap()
    }

    pub fn admin_token(&self) -> String {
        edge::auth::issue_token(&self.secret, "admin_1", true, 3600).unwrap()
    }

    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body ({status}): {text}"));
        Reply { status, body, headers }
    }

    pub async fn get(&self, path: &str, user: &str) -> Reply {
        self.call(Method::GET, path, Some(&self.token(user)), None).await
    }

    pub async fn post(&self, path: &str, user: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(&self.token(user)), Some(body)).await
    }

    pub async fn delete(&self, path: &str, user: &str) -> Reply {
        self.call(Method::DELETE, path, Some(&self.token(user)), None).await
    }

    /// Books `seats` of `perf` for `user`; asserts 201 and returns (bookingId, paymentIntentId).
    pub async fn book(&self, user: &str, perf: &str, seats: &[&str]) -> (String, String) {
        let reply = self.try_book(user, perf, seats).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        (
            reply.body["bookingId"].as_str().unwrap().to_owned(),
            reply.body["paymentIntentId"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn try_book(&self, user: &str, perf: &str, seats: &[&str]) -> Reply {
        self.post("/bookings", user, json!({"performanceId": perf, "seatIds": seats, "userId": user})).await
    }

    pub async fn pay(&self, user: &str, intent: &str, token: &str) -> Reply {
        self.post(
            "/payments/execute",
            user,
            json!({"paymentIntentId": intent, "paymentMethodToken": token, "cvv": "123"}),
        )
        .await
    }

    /// Waits until `GET /bookings/{id}` shows `status`.
    pub async fn wait_status(&self, user: &str, booking: &str, status: &str) {
        let seen = eventually(Duration::from_secs(30), || async {
            let reply = self.get(&format!("/bookings/{booking}"), user).await;
            (reply.body["status"] == status).then_some(())
        })
        .await;
        let now = self.get(&format!("/bookings/{booking}"), user).await;
        assert!(seen.is_some(), "booking {booking} never became {status}: {}", now.body);
    }

    /// Waits until `GET /bookings/my` lists `booking` with `status`.
    pub async fn wait_listed(&self, user: &str, booking: &str, status: &str) -> Value {
        let found = eventually(Duration::from_secs(30), || async {
            let reply = self.get("/bookings/my", user).await;
            reply.body.as_array()?.iter().find(|b| b["bookingId"] == booking && b["status"] == status).cloned()
        })
        .await;
        found.unwrap_or_else(|| panic!("{booking} never listed as {status}"))
    }

    /// Waits until the occupiedSeats document of `doc` has `status` (or is gone for None).
    pub async fn wait_seat(&self, user: &str, doc: &str, status: Option<&str>) -> Reply {
        let path = format!("/occupiedSeats/{doc}");
        let ok = eventually(Duration::from_secs(30), || async {
            let reply = self.get(&path, user).await;
            let matches = match status {
                None => reply.status == StatusCode::NOT_FOUND,
                Some(s) => reply.status == StatusCode::OK && reply.body["status"] == s,
            };
            matches.then_some(())
        })
        .await;
        let reply = self.get(&path, user).await;
        assert!(ok.is_some(), "seat {doc} never reached {status:?}: {} {}", reply.status, reply.body);
        reply
    }

    /// A gRPC request carrying `user`'s bearer token, as the gateway sends it.
    pub fn as_user<T>(&self, user: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        edge::wire::forward_bearer(&mut request, &self.token(user));
        request
    }

    /// A plaintext client of the payment-service's gRPC API.
    pub async fn payment_grpc(
        &self,
    ) -> proto::payment::payment_service_client::PaymentServiceClient<tonic::transport::Channel> {
        let url = format!("http://127.0.0.1:{}", self.payment_addr.port());
        proto::payment::payment_service_client::PaymentServiceClient::connect(url).await.unwrap()
    }

    /// A plaintext client of the booking-service's gRPC API.
    pub async fn booking_grpc(
        &self,
    ) -> proto::booking::booking_service_client::BookingServiceClient<tonic::transport::Channel> {
        let url = format!("http://127.0.0.1:{}", self.booking_addr.port());
        proto::booking::booking_service_client::BookingServiceClient::connect(url).await.unwrap()
    }

    /// Waits until the payment-service has created `intent` from SeatLocked.
    pub async fn wait_intent(&self, user: &str, intent: &str) {
        let client = self.payment_grpc().await;
        let found = eventually(Duration::from_secs(30), || {
            let request = self.as_user(
                user,
                proto::payment::GetPaymentIntentRequest { payment_intent_id: intent.to_owned(), ..Default::default() },
            );
            let mut client = client.clone();
            async move { client.get_payment_intent(request).await.ok() }
        })
        .await;
        assert!(found.is_some(), "intent {intent} was never created");
    }

    /// The checker's findings once in-flight work (a refund, say) has settled.
    pub async fn settled_violations(&self) -> Vec<ticketing::audit::Violation> {
        let booking = self.booking_pool().await;
        let payment = self.payment_pool().await;
        let mut violations = Vec::new();
        for _ in 0..50 {
            violations = ticketing::audit::check(&booking, &payment).await.unwrap();
            if violations.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        violations
    }

    pub async fn payment_pool(&self) -> sqlx::PgPool {
        runtime::db::connect_service_db(
            &testkit::server_url(),
            &self.payment_db,
            4,
            &payment_service::store::MIGRATIONS,
        )
        .await
        .unwrap()
    }

    pub async fn booking_pool(&self) -> sqlx::PgPool {
        runtime::db::connect_service_db(
            &testkit::server_url(),
            &self.booking_db,
            4,
            &booking_service::store::MIGRATIONS,
        )
        .await
        .unwrap()
    }
}
