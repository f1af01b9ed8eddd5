//! `ticketing redrive-dlq --topic <topic>`: re-publishes dead letters.

use crate::cli::RedriveArgs;

/// Re-publishes the topic's dead letters to it once their cause is fixed.
pub async fn run(args: &RedriveArgs) -> anyhow::Result<()> {
    let sent = messaging::inbox::redrive::redrive(
        &args.kafka_brokers,
        &args.topic,
        messaging::inbox::redrive::REDRIVE_GROUP,
        args.idle,
    )
    .await?;
    println!("re-drove {sent} dead letter(s) to {}", args.topic);
    Ok(())
}
