//! The broker hangs (SIGSTOP) or refuses connections: nothing is lost, one
//! booking's events are never reordered, and new purchases complete.

use super::*;

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
