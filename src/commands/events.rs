//! `ticketing events tail`: a reader of a service's event feed for
//! operators and for teams trying it. Prints one JSON line per event, its
//! payload decoded from protobuf with the descriptors in `proto/`; a type
//! this build does not know is printed with its bytes in base64.

use std::io::Write;

use anyhow::Context;
use base64::Engine;
use prost_reflect::{DescriptorPool, DynamicMessage};
use proto::feed::{event_feed_client::EventFeedClient, FeedEvent, SubscribeRequest};
use serde_json::{json, Value};

use crate::cli::{EventsCommand, EventsTailArgs, FeedService};

/// Runs `ticketing events …`.
pub async fn run(command: EventsCommand) -> anyhow::Result<()> {
    match command {
        EventsCommand::Tail(args) => tail(args).await,
    }
}

async fn tail(args: EventsTailArgs) -> anyhow::Result<()> {
    let url = args.url.clone().unwrap_or_else(|| match args.service {
        FeedService::Booking => "http://127.0.0.1:50051".to_owned(),
        FeedService::Payment => "http://127.0.0.1:50052".to_owned(),
    });
    let token = match args.token {
        Some(token) => token,
        None => {
            let secret = super::token::secret(args.jwt_secret)?;
            edge::auth::issue_token_with_role(&secret, "events-tail", Some(edge::roles::EVENTS_ROLE), 3_600)?
        }
    };
    let channel = args.tls.endpoint("--url", &url)?.connect().await.with_context(|| format!("connecting to {url}"))?;
    let mut client = EventFeedClient::new(channel).max_decoding_message_size(16 << 20);
    let mut request = tonic::Request::new(SubscribeRequest { from_position: args.from, types: args.types });
    let bearer = format!("Bearer {token}").parse().context("the token is not a valid header value")?;
    request.metadata_mut().insert("authorization", bearer);
    let mut stream = client.subscribe(request).await.context("subscribing to the event feed")?.into_inner();
    let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).context("reading the protobuf descriptors")?;
    let mut out = std::io::stdout().lock();
    let mut printed = 0_u64;
    while args.count.is_none_or(|count| printed < count) {
        let Some(event) = stream.message().await.context("reading the event feed")? else { break };
        writeln!(out, "{}", line(&pool, &event))?;
        out.flush()?;
        printed += 1;
    }
    Ok(())
}

/// One event as a JSON line.
fn line(pool: &DescriptorPool, event: &FeedEvent) -> Value {
    let time = event.time.as_ref().and_then(proto::time::from_timestamp).map(|t| t.to_rfc3339());
    let mut line = json!({
        "position": event.position,
        "streamId": event.stream_id,
        "subject": event.subject,
        "sequence": event.sequence,
        "eventId": event.event_id,
        "type": event.r#type,
        "time": time,
        "contentType": event.content_type,
    });
    match decode(pool, event) {
        Some(data) => line["data"] = data,
        None => line["dataBase64"] = base64::engine::general_purpose::STANDARD.encode(&event.data).into(),
    }
    line
}

/// The payload as JSON, if its message is one this build knows: the
/// `ce_type` `ticketing.booking.v1.SeatLocked` is the message
/// `ticketing.events.v1.SeatLocked`.
fn decode(pool: &DescriptorPool, event: &FeedEvent) -> Option<Value> {
    let name = event.r#type.rsplit('.').next()?;
    let descriptor = pool.get_message_by_name(&format!("ticketing.events.v1.{name}"))?;
    let message = DynamicMessage::decode(descriptor, event.data.as_slice()).ok()?;
    serde_json::to_value(&message).ok()
}
