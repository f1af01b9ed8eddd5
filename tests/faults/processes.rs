//! Service processes killed mid-stream, a crash right after the PSP charged,
//! a replica lost, SIGTERM, and the bench against real processes.

use super::*;

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
    let (stdout, report) =
        run_bench(&["--clients", "4", "--duration", "1s", "--onsale-clients", "40", "--onsale-seats", "5"]);
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
async fn the_onsale_queue_bench_sells_every_seat_once_in_position_order() {
    let (stdout, report) = run_bench(&["--scenario", "onsale-queue", "--clients", "120", "--seats", "20"]);
    let r = &report["report"];
    assert_eq!((r["seats_sold"].as_u64(), r["bought"].as_u64()), (Some(20), Some(20)), "{stdout}");
    assert_eq!((r["position_inversions"].as_u64(), r["joins_5xx"].as_u64()), (Some(0), Some(0)), "{stdout}");
    assert!(r["last_waiter_told_sold_out_after_ms"].as_i64().is_some_and(|ms| ms < 2_000), "{stdout}");
    assert_eq!(report["violations"], json!([]));
}

/// `ticketing bench` with `args`, as a user runs it: against KAFKA_BROKERS
/// when set (tansu in CI), else with the bench's own embedded broker.
/// Returns its output and its JSON report; panics if it failed.
fn run_bench(args: &[&str]) -> (String, Value) {
    let output = std::env::temp_dir().join(format!("{}.json", unique_name("bench")));
    let mut bench = Command::new(env!("CARGO_BIN_EXE_ticketing"));
    bench
        .arg("bench")
        .args(args)
        .arg("--output")
        .arg(&output)
        .env("DATABASE_URL", server_url())
        .env("RUST_LOG", "error");
    match std::env::var("KAFKA_BROKERS").ok().filter(|b| !b.is_empty()) {
        Some(brokers) => bench.env("KAFKA_BROKERS", brokers),
        None => bench.env_remove("KAFKA_BROKERS"),
    };
    let run = bench.output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let report = serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
    (stdout, report)
}
