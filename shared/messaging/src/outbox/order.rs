//! Which records of a batch may go now. A record is handed to the
//! producer only once every earlier record of its key is acknowledged, so
//! one booking's events reach Kafka in order whatever the producer does
//! after a timeout or a rebuild.

use kernel::event_store::StoredEvent;

use super::{published_record, IntegrationMapper, OutgoingRecord, RelaySettings};
use crate::kafka::CloudEventHeaders;

/// Records sent and not yet acknowledged, by key: a key's next record
/// waits until its count is back to zero.
#[derive(Default)]
pub(super) struct Unacknowledged(std::collections::HashMap<String, usize>);

impl Unacknowledged {
    pub(super) fn holds(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    pub(super) fn sent(&mut self, keys: &[String]) {
        for key in keys {
            *self.0.entry(key.clone()).or_default() += 1;
        }
    }

    pub(super) fn acknowledged(&mut self, keys: &[String]) {
        for key in keys {
            if let Some(count) = self.0.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    self.0.remove(key);
                }
            }
        }
    }
}

/// The records a batch may send now, in order: it ends before the first
/// event whose key still has a record in flight (earlier in this batch or
/// in an unacknowledged one), so a key's records are acknowledged one after
/// another and can never arrive out of order.
pub(super) struct Ready {
    /// Headers and record of each published event taken.
    pub(super) records: Vec<(CloudEventHeaders, OutgoingRecord)>,
    /// How many events of the batch are taken (published or not).
    pub(super) upto: usize,
    /// The batch ended early at an event whose key is busy.
    pub(super) blocked: bool,
    /// An event cannot be mapped (a bug): the relay stalls on it loudly.
    pub(super) unmappable: bool,
}

pub(super) fn ready_records(
    mapper: &impl IntegrationMapper,
    settings: &RelaySettings,
    batch: &[StoredEvent],
    unacknowledged: &Unacknowledged,
) -> Ready {
    let mut ready = Ready { records: Vec::with_capacity(batch.len()), upto: 0, blocked: false, unmappable: false };
    let mut taken = std::collections::HashSet::new();
    for event in batch {
        match published_record(mapper, event) {
            // The domain says which events are published (and numbers them);
            // the mapper must agree, or consumers would see gaps.
            Err(error) => {
                tracing::error!(%error, "outbox relay stalled on an event it cannot publish");
                ready.unmappable = true;
                ready.upto += 1;
                return ready;
            }
            Ok(Some(record)) => {
                if unacknowledged.holds(&record.key) || !taken.insert(record.key.clone()) {
                    ready.blocked = true;
                    return ready;
                }
                let headers = CloudEventHeaders {
                    id: event.event_id.to_string(),
                    source: settings.source.clone(),
                    event_type: record.ce_type.clone(),
                    time: CloudEventHeaders::format_time(event.recorded_at),
                    subject: record.subject.clone(),
                    traceparent: event.metadata.traceparent.clone(),
                    correlation_id: event.metadata.correlation_id.clone(),
                    causation_id: event.metadata.causation_id.clone(),
                    sequence: event.sequence,
                    position: event.log_position,
                };
                ready.records.push((headers, record));
            }
            Ok(None) => {}
        }
        ready.upto += 1;
    }
    ready
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::MappingError;

    /// Publishes every event, keyed by its stream.
    struct ByStream;

    impl IntegrationMapper for ByStream {
        fn to_record(&self, event: &StoredEvent) -> Result<Option<OutgoingRecord>, MappingError> {
            Ok((event.event_type != "Internal")
                .then(|| OutgoingRecord::keyed("t", event.stream_id.clone(), event.event_type.clone(), Vec::new())))
        }
    }

    fn event(stream: &str, event_type: &str, position: i64) -> StoredEvent {
        let published = event_type != "Internal";
        StoredEvent {
            global_position: position,
            tx_id: position,
            event_id: uuid::Uuid::now_v7(),
            stream_type: "test".into(),
            stream_id: stream.into(),
            stream_version: 1,
            sequence: published.then_some(1),
            log_position: Some(position << 20),
            event_type: event_type.into(),
            schema_version: 1,
            payload: serde_json::Value::Null,
            metadata: kernel::event_store::EventMetadata::default(),
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_batch_ends_before_the_second_record_of_a_key_and_before_a_key_still_in_flight() {
        let settings = RelaySettings::new("relay", "/test");
        let batch = [event("a", "E", 1), event("b", "Internal", 2), event("b", "E", 3), event("a", "E", 4)];
        let ready = ready_records(&ByStream, &settings, &batch, &Unacknowledged::default());
        let keys: Vec<&str> = ready.records.iter().map(|(_, r)| r.key.as_str()).collect();
        assert_eq!((keys, ready.upto, ready.blocked), (vec!["a", "b"], 3, true), "a's second record waits");
        assert_eq!(ready.records[0].0.position, Some(1 << 20));

        let mut in_flight = Unacknowledged::default();
        in_flight.sent(&["b".to_owned()]);
        let ready = ready_records(&ByStream, &settings, &batch, &in_flight);
        assert_eq!((ready.records.len(), ready.upto, ready.blocked), (1, 2, true), "b waits for its ack");
        in_flight.acknowledged(&["b".to_owned()]);
        assert!(!in_flight.holds("b"));
    }

    #[test]
    fn an_event_published_by_the_mapper_but_not_numbered_by_the_domain_stalls_the_relay() {
        let settings = RelaySettings::new("relay", "/test");
        let mut unnumbered = event("a", "E", 1);
        unnumbered.sequence = None;
        let ready = ready_records(&ByStream, &settings, &[unnumbered], &Unacknowledged::default());
        assert!(ready.unmappable && ready.records.is_empty());
    }
}
