//! `ticketing dev` as the README runs it: killed and restarted, started
//! with no database running, and started wrongly.

use super::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_dev_with_its_embedded_broker_and_restarting_it_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = workdir("faults_dev_embedded");
    // Exactly as the README runs it: no KAFKA_BROKERS, so dev brings its own
    // broker, and that broker starts empty on every run while the
    // databases remember the last one.
    let mut d = Deployment::new(dir, "", server_url());
    d.unset("KAFKA_BROKERS");
    d.start("dev-a", &[]);
    d.wait_ready('a').await;
    let gateway = d.gateway('a');
    // Consumers store offsets past the first records of every partition.
    for n in 0..6 {
        new_purchase_completes(&d, &gateway, &format!("embedded_{n}"), &seat(100 + n), Duration::from_secs(30)).await;
    }
    let purchases = spawn_purchases(&d, std::slice::from_ref(&gateway), "embedded_mid", 12, 110);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    d.kill("dev-a");
    d.start("dev-a", &[]);
    let restarted = Instant::now();
    let took = new_purchase_completes(&d, &gateway, "embedded_after", "H7", Duration::from_secs(15)).await;
    println!(
        "after SIGKILL and restart of dev with its own broker, a new purchase completed {took:?} after the restart"
    );
    // What the old broker held is gone: every acknowledged purchase must
    // still be confirmed, and purchases on every partition must complete.
    for (user, task) in purchases {
        let booking = task.await.unwrap();
        let left = Duration::from_secs(15).saturating_sub(restarted.elapsed()).max(Duration::from_secs(1));
        wait_confirmed(&d, &gateway, &user, &booking, left).await;
    }
    for n in 0..6 {
        new_purchase_completes(&d, &gateway, &format!("embedded_new_{n}"), &seat(130 + n), Duration::from_secs(15))
            .await;
    }
    assert_check_passes(&d);
    d.stop_all();
}
