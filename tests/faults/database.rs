//! PostgreSQL restarts under load, alone and before another replica restarts.

use super::*;

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
