//! The event feed through a SIGKILL of the service mid-catch-up: a
//! subscriber that resumes after the last position it got receives every
//! published event exactly once, in the store's order, and new events keep
//! coming after the restart.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use proto::feed::{event_feed_client::EventFeedClient, FeedEvent, SubscribeRequest};

use super::*;

/// Reads the booking feed from the start, slowly (a subscriber catching up
/// on a long history), reconnecting after the last position it got
/// whenever its stream breaks.
fn slow_subscriber(port: u16, token: String, got: Arc<Mutex<Vec<FeedEvent>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reconnects = 0;
        loop {
            let from = got.lock().unwrap().last().map_or(0, |e| e.position);
            let stream = async {
                let mut client = EventFeedClient::connect(format!("http://127.0.0.1:{port}")).await.ok()?;
                let mut request = tonic::Request::new(SubscribeRequest { from_position: from, types: vec![] });
                request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().ok()?);
                Some(client.subscribe(request).await.ok()?.into_inner())
            };
            if let Some(mut stream) = stream.await {
                while let Some(Ok(event)) = stream.next().await {
                    got.lock().unwrap().push(event);
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            }
            reconnects += 1;
            assert!(reconnects < 600, "the feed did not come back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resuming_by_position_after_a_kill_mid_catch_up_gets_every_event_once_in_order() {
    let _serial = SERIAL.lock().await;
    let dir = workdir("faults_feed");
    let Some(tansu) = Tansu::start(&dir) else { return };
    let mut d = Deployment::new(dir, &tansu.brokers, server_url());
    d.start_all().await;
    let gateway = d.gateway('a');
    let purchases = spawn_purchases(&d, std::slice::from_ref(&gateway), "feed", 20, 60);
    // A history to catch up on, then a subscriber reading it slowly.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let token = edge::auth::issue_token_with_role(&d.secret, "feed_team", Some("events"), 3600).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let subscriber = slow_subscriber(d.ports('a').booking, token, got.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = got.lock().unwrap().len();
    d.kill("booking-a");
    d.start("booking-a", &[]);
    new_purchase_completes(&d, &gateway, "feed_after", "H5", Duration::from_secs(120)).await;
    settle(&d, &gateway, purchases).await;
    assert_check_passes(&d);
    // Every published event of the store, in the log's order.
    let pool = sqlx::PgPool::connect(&d.db_url("BOOKING_DATABASE")).await.unwrap();
    let stored: Vec<String> = sqlx::query_scalar(
        "select event_id::text from events where sequence is not null order by tx_id, global_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let caught_up =
        eventually(Duration::from_secs(60), || async { (got.lock().unwrap().len() >= stored.len()).then_some(()) })
            .await;
    subscriber.abort();
    let got = got.lock().unwrap().clone();
    assert!(caught_up.is_some(), "the subscriber got {} of {} events", got.len(), stored.len());
    assert!(before_kill > 0 && before_kill < stored.len(), "killed mid-catch-up ({before_kill} read)");
    let ids: Vec<String> = got.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids, stored, "every event once, in the store's order");
    assert!(got.windows(2).all(|w| w[0].position < w[1].position));
    d.stop_all();
}
