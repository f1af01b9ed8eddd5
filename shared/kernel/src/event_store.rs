//! The event store: append to a stream with an expected version, load a
//! stream, and the shape of a stored event.
//!
//! Appends take a `&mut PgConnection` that is normally inside the caller's
//! transaction, so a command's events, its seat holds and its idempotency
//! record commit together or not at all.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

/// What the appender believes the stream's current version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the version is (no concurrency check).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(i64),
}

/// Context recorded with every event and carried to Kafka headers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Groups every event caused by one user request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The id of the event or request that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// W3C trace context of the request that appended the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Who acted: a user id, or `system:<component>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event's type name, e.g. `SeatLocked`.
    pub event_type: String,
    /// Version of the payload's schema, for upcasting old events.
    pub schema_version: i32,
    /// The event's facts.
    pub payload: serde_json::Value,
    /// Part of the service's public events (Kafka, the event feed): such
    /// events are numbered 1, 2, 3… within their stream (`sequence`).
    pub published: bool,
}

impl NewEvent {
    /// Serialises a published domain event into a schema-version-1 new event.
    pub fn from_serde<T: Serialize>(event_type: &str, payload: &T) -> Result<Self, serde_json::Error> {
        Ok(Self {
            event_type: event_type.to_owned(),
            schema_version: 1,
            payload: serde_json::to_value(payload)?,
            published: true,
        })
    }
}

/// New events as the columns of an insert over `unnest(…)`, each with a
/// fresh event id (UUIDv7).
pub struct Columns<'a> {
    /// The ids the events get.
    pub event_ids: Vec<Uuid>,
    /// Their type names.
    pub types: Vec<&'a str>,
    /// Their payloads' schema versions.
    pub schemas: Vec<i32>,
    /// Their payloads.
    pub payloads: Vec<&'a serde_json::Value>,
    /// Whether each is published.
    pub published: Vec<bool>,
}

impl<'a> Columns<'a> {
    /// The columns of `events`, in order.
    pub fn of(events: impl ExactSizeIterator<Item = &'a NewEvent>) -> Self {
        let mut columns = Self {
            event_ids: Vec::with_capacity(events.len()),
            types: Vec::with_capacity(events.len()),
            schemas: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            published: Vec::with_capacity(events.len()),
        };
        for event in events {
            columns.event_ids.push(Uuid::now_v7());
            columns.types.push(event.event_type.as_str());
            columns.schemas.push(event.schema_version);
            columns.payloads.push(&event.payload);
            columns.published.push(event.published);
        }
        columns
    }
}

/// An event as recorded in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Position in the global log (unique, increasing in insertion order).
    pub global_position: i64,
    /// The appending transaction's id; the global log is read in (tx_id, position) order.
    pub tx_id: i64,
    /// The event's id (UUIDv7); the CloudEvents `ce_id` and the dedupe key.
    pub event_id: Uuid,
    /// Aggregate kind, e.g. `booking`.
    pub stream_type: String,
    /// Aggregate id.
    pub stream_id: String,
    /// 1-based position of the event in its stream.
    pub stream_version: i64,
    /// For a published event, its number among its stream's published
    /// events (1, 2, 3… with no gaps): Kafka's `ce_sequence`.
    pub sequence: Option<i64>,
    /// Its place in the global log's commit-safe order as one number
    /// ([`log_position`]): Kafka's `ce_position`. Set when read from the
    /// global log, not on append or stream loads.
    pub log_position: Option<i64>,
    /// The event's type name.
    pub event_type: String,
    /// Version of the payload's schema.
    pub schema_version: i32,
    /// The event's facts.
    pub payload: serde_json::Value,
    /// Request context.
    pub metadata: EventMetadata,
    /// Commit-time clock of the database when appended.
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// Deserialises the payload into a domain event type.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.payload.clone())
    }
}

/// Errors of the event store.
#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    /// Someone else appended first; nothing was written.
    #[error("stream {stream_type}/{stream_id} is at version {actual}, expected {expected:?}")]
    Conflict {
        /// Aggregate kind.
        stream_type: String,
        /// Aggregate id.
        stream_id: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// What the store had (or `expected + 1` when a concurrent append won).
        actual: i64,
    },
    /// Metadata could not be serialised.
    #[error("serialising event metadata: {0}")]
    Metadata(#[from] serde_json::Error),
    /// The database failed.
    #[error("event store: {0}")]
    Database(#[from] sqlx::Error),
}

/// True when the error is a unique-constraint violation (SQLSTATE 23505).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some("23505"))
}

/// Appends `events` to a stream if its version matches `expected`.
///
/// One statement, one round trip: it reads the stream's version, checks it
/// against `expected` and inserts every event, so the check and the insert
/// see the same snapshot. A concurrent append of the same version still
/// fails on the `(stream_type, stream_id, stream_version)` unique key.
///
/// On [`EventStoreError::Conflict`] nothing was written by this call; when it
/// comes from a unique violation the caller's transaction is aborted and
/// must be rolled back.
pub async fn append(
    conn: &mut PgConnection,
    stream_type: &str,
    stream_id: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
    metadata: &EventMetadata,
) -> Result<Vec<StoredEvent>, EventStoreError> {
    let conflict = |actual| EventStoreError::Conflict {
        stream_type: stream_type.to_owned(),
        stream_id: stream_id.to_owned(),
        expected,
        actual,
    };
    let expected_version = match expected {
        ExpectedVersion::Any => None,
        ExpectedVersion::NoStream => Some(0),
        ExpectedVersion::Exact(version) => Some(version),
    };
    if events.is_empty() {
        let current = stream_version(conn, stream_type, stream_id).await?;
        return match expected_version {
            Some(version) if version != current => Err(conflict(current)),
            _ => Ok(Vec::new()),
        };
    }
    let metadata_json = serde_json::to_value(metadata)?;
    let Columns { event_ids, types, schemas, payloads, published } = Columns::of(events.iter());
    let rows = sqlx::query(
        "with stream as ( \
           select coalesce(max(stream_version), 0) as version, coalesce(max(sequence), 0) as published \
             from events where stream_type = $1 and stream_id = $2) \
         insert into events \
           (event_id, stream_type, stream_id, stream_version, event_type, schema_version, payload, metadata, sequence) \
         select e.event_id, $1, $2, stream.version + e.n, e.event_type, e.schema_version, e.payload, $8, \
                case when e.published then stream.published + sum(e.published::int) over (order by e.n) end \
           from stream, unnest($4::uuid[], $5::text[], $6::int[], $7::jsonb[], $9::bool[]) \
                with ordinality as e(event_id, event_type, schema_version, payload, published, n) \
          where $3::bigint is null or stream.version = $3 \
          order by e.n \
         returning stream_version, global_position, tx_id::text::bigint as tx_id, recorded_at, sequence",
    )
    .bind(stream_type)
    .bind(stream_id)
    .bind(expected_version)
    .bind(&event_ids)
    .bind(&types)
    .bind(&schemas)
    .bind(&payloads)
    .bind(&metadata_json)
    .bind(&published)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| if is_unique_violation(&e) { conflict(expected_version.unwrap_or(0) + 1) } else { e.into() })?;
    if rows.is_empty() {
        // The version check failed: nothing was inserted, the transaction is intact.
        return Err(conflict(stream_version(conn, stream_type, stream_id).await?));
    }
    stored_events(&rows, events, &event_ids, (stream_type, stream_id), metadata)
}

/// Starts new streams in one statement, each with one event at version 1,
/// in the order given (a batch of creations, one round trip for all). A
/// stream that exists already is left as it is: its id is returned, and
/// nothing was written for it (a single event at version 1 conflicts
/// exactly when the stream exists, so this is the `NoStream` check).
pub async fn start_streams(
    conn: &mut PgConnection,
    stream_type: &str,
    starts: &[(&str, &NewEvent, &EventMetadata)],
) -> Result<Vec<String>, EventStoreError> {
    let ids: Vec<&str> = starts.iter().map(|(id, _, _)| *id).collect();
    let metadata = starts.iter().map(|(_, _, meta)| serde_json::to_value(meta)).collect::<Result<Vec<_>, _>>()?;
    let Columns { event_ids, types, schemas, payloads, published } =
        Columns::of(starts.iter().map(|(_, event, _)| *event));
    let inserted: Vec<String> = sqlx::query_scalar(
        "insert into events \
           (event_id, stream_type, stream_id, stream_version, event_type, schema_version, payload, metadata, sequence) \
         select e.event_id, $1, e.stream_id, 1, e.event_type, e.schema_version, e.payload, e.metadata, \
                case when e.published then 1 end \
           from unnest($2::text[], $3::uuid[], $4::text[], $5::int[], $6::jsonb[], $7::jsonb[], $8::bool[]) \
                with ordinality as e(stream_id, event_id, event_type, schema_version, payload, metadata, published, n) \
          order by e.n \
         on conflict (stream_type, stream_id, stream_version) do nothing \
         returning stream_id",
    )
    .bind(stream_type)
    .bind(&ids)
    .bind(&event_ids)
    .bind(&types)
    .bind(&schemas)
    .bind(&payloads)
    .bind(&metadata)
    .bind(&published)
    .fetch_all(&mut *conn)
    .await?;
    let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
    Ok(ids.into_iter().filter(|id| !inserted.contains(*id)).map(str::to_owned).collect())
}

/// What an append returned, as stored events in version order: row `i`
/// is the event sent at index `version - first version`.
fn stored_events(
    rows: &[sqlx::postgres::PgRow],
    events: &[NewEvent],
    event_ids: &[Uuid],
    (stream_type, stream_id): (&str, &str),
    metadata: &EventMetadata,
) -> Result<Vec<StoredEvent>, EventStoreError> {
    // Event i (0-based) was inserted as version `first + i`.
    let mut versions = Vec::with_capacity(rows.len());
    for row in rows {
        versions.push(row.try_get::<i64, _>("stream_version")?);
    }
    let first = versions.iter().copied().min().unwrap_or(1);
    let mut stored = Vec::with_capacity(events.len());
    for (row, stream_version) in rows.iter().zip(versions) {
        let index = usize::try_from(stream_version - first).unwrap_or(usize::MAX);
        let (Some(event), Some(event_id)) = (events.get(index), event_ids.get(index)) else {
            return Err(EventStoreError::Database(sqlx::Error::Protocol(format!(
                "the append returned version {stream_version}, outside the {} events sent",
                events.len()
            ))));
        };
        stored.push(StoredEvent {
            global_position: row.try_get("global_position")?,
            tx_id: row.try_get("tx_id")?,
            event_id: *event_id,
            stream_type: stream_type.to_owned(),
            stream_id: stream_id.to_owned(),
            stream_version,
            sequence: row.try_get("sequence")?,
            log_position: None,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            payload: event.payload.clone(),
            metadata: metadata.clone(),
            recorded_at: row.try_get("recorded_at")?,
        });
    }
    stored.sort_by_key(|e| e.stream_version);
    Ok(stored)
}

/// The stream's current version (0 when it does not exist).
async fn stream_version(conn: &mut PgConnection, stream_type: &str, stream_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select coalesce(max(stream_version), 0) from events where stream_type = $1 and stream_id = $2")
        .bind(stream_type)
        .bind(stream_id)
        .fetch_one(conn)
        .await
}

/// Loads every event of a stream in version order (empty if it does not exist).
pub async fn load_stream(
    conn: &mut PgConnection,
    stream_type: &str,
    stream_id: &str,
) -> Result<Vec<StoredEvent>, EventStoreError> {
    let rows = sqlx::query(&format!(
        "select {STORED_EVENT_COLUMNS} from events \
         where stream_type = $1 and stream_id = $2 order by stream_version"
    ))
    .bind(stream_type)
    .bind(stream_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(stored_event_from_row).collect()
}

/// Every event of every stream of `stream_type`, by stream and version
/// (audits such as `ticketing check`; not for request paths).
pub async fn load_all_streams(pool: &sqlx::PgPool, stream_type: &str) -> Result<Vec<StoredEvent>, EventStoreError> {
    let rows = sqlx::query(&format!(
        "select {STORED_EVENT_COLUMNS} from events where stream_type = $1 order by stream_id, stream_version"
    ))
    .bind(stream_type)
    .fetch_all(pool)
    .await?;
    rows.iter().map(stored_event_from_row).collect()
}

/// Which of `ids` (streams of `stream_type`) have an event of one of
/// `event_types` (one query for all of them).
pub async fn streams_having_event(
    pool: &sqlx::PgPool,
    stream_type: &str,
    ids: &[String],
    event_types: &[&str],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select distinct stream_id from events where stream_type = $1 and stream_id = any($2) and event_type = any($3)",
    )
    .bind(stream_type)
    .bind(ids)
    .bind(event_types)
    .fetch_all(pool)
    .await
}

/// Every stream of `stream_type` that holds an event of `event_type` (a
/// scan: for operator commands, not request paths).
pub async fn streams_with_event(
    pool: &sqlx::PgPool,
    stream_type: &str,
    event_type: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select distinct stream_id from events where stream_type = $1 and event_type = $2 order by stream_id",
    )
    .bind(stream_type)
    .bind(event_type)
    .fetch_all(pool)
    .await
}

/// Which of `ids` (streams of `stream_type`) exist (one indexed query for all of them).
pub async fn existing_streams(
    pool: &sqlx::PgPool,
    stream_type: &str,
    ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select stream_id from events where stream_type = $1 and stream_id = any($2) and stream_version = 1",
    )
    .bind(stream_type)
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// The select list that [`stored_event_from_row`] reads.
pub(crate) const STORED_EVENT_COLUMNS: &str = "global_position, tx_id::text::bigint as tx_id, event_id, \
     stream_type, stream_id, stream_version, sequence, null::bigint as log_position, event_type, schema_version, \
     payload, metadata, recorded_at";

/// [`STORED_EVENT_COLUMNS`] with each event's [`log_position`], for
/// readers of the global log (a query `from events`).
pub(crate) const LOGGED_EVENT_COLUMNS: &str = "global_position, tx_id::text::bigint as tx_id, event_id, \
     stream_type, stream_id, stream_version, sequence, \
     (tx_id::text::bigint << 20) + (select count(*) from events x \
        where x.tx_id = events.tx_id and x.global_position < events.global_position) as log_position, \
     event_type, schema_version, payload, metadata, recorded_at";

/// Events one transaction may append at most, so that [`log_position`]
/// stays unique and ordered.
pub const MAX_EVENTS_PER_TRANSACTION: i64 = 1 << 20;

/// One number for an event's place in the global log's commit-safe order
/// (`tx_id`, then position): its transaction id times 2^20 plus its rank
/// among that transaction's events. It grows in the order readers of the
/// log see events, so a reader that resumes after the last position it
/// handled misses nothing; positions are unique but not dense.
pub fn log_position(tx_id: i64, rank_in_transaction: i64) -> i64 {
    tx_id.saturating_mul(MAX_EVENTS_PER_TRANSACTION).saturating_add(rank_in_transaction)
}

pub(crate) fn stored_event_from_row(row: &sqlx::postgres::PgRow) -> Result<StoredEvent, EventStoreError> {
    let metadata: serde_json::Value = row.try_get("metadata")?;
    Ok(StoredEvent {
        global_position: row.try_get("global_position")?,
        tx_id: row.try_get("tx_id")?,
        event_id: row.try_get("event_id")?,
        stream_type: row.try_get("stream_type")?,
        stream_id: row.try_get("stream_id")?,
        stream_version: row.try_get("stream_version")?,
        sequence: row.try_get("sequence")?,
        log_position: row.try_get("log_position")?,
        event_type: row.try_get("event_type")?,
        schema_version: row.try_get("schema_version")?,
        payload: row.try_get("payload")?,
        metadata: serde_json::from_value(metadata)?,
        recorded_at: row.try_get("recorded_at")?,
    })
}

/// A domain event stored as JSON under its type name.
pub trait DomainEvent: Serialize + serde::de::DeserializeOwned {
    /// The stored event-type name.
    fn event_type(&self) -> &'static str;
    /// Whether other services and teams see it (Kafka, the event feed);
    /// internal bookkeeping events are not published.
    fn published(&self) -> bool;
}

/// Errors of the typed helpers: the store's, or an event that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum TypedStreamError {
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] EventStoreError),
    /// A stored event does not decode into the domain type, or one does
    /// not encode, or the stream's first event does not create it.
    #[error("stream {stream_id}: {reason}")]
    Codec {
        /// The stream.
        stream_id: String,
        /// What failed.
        reason: String,
    },
}

/// Loads a stream's events decoded as `E`, with the version of the last one (0 if none).
pub async fn load_typed<E: DomainEvent>(
    conn: &mut PgConnection,
    stream_type: &str,
    stream_id: &str,
) -> Result<(Vec<E>, i64), TypedStreamError> {
    let stored = load_stream(conn, stream_type, stream_id).await?;
    let version = stored.last().map_or(0, |e| e.stream_version);
    let events = stored
        .iter()
        .map(StoredEvent::decode::<E>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TypedStreamError::Codec { stream_id: stream_id.to_owned(), reason: e.to_string() })?;
    Ok((events, version))
}

/// Domain events as the store writes them (type name, JSON payload,
/// published or not).
pub fn encode_new<E: DomainEvent>(events: &[E]) -> Result<Vec<NewEvent>, serde_json::Error> {
    events
        .iter()
        .map(|e| NewEvent::from_serde(e.event_type(), e).map(|new| NewEvent { published: e.published(), ..new }))
        .collect()
}

/// Appends domain events after `version` (0: the stream must not exist yet).
pub async fn append_typed<E: DomainEvent>(
    conn: &mut PgConnection,
    stream_type: &str,
    stream_id: &str,
    version: i64,
    events: &[E],
    metadata: &EventMetadata,
) -> Result<(), TypedStreamError> {
    let new_events = encode_new(events)
        .map_err(|e| TypedStreamError::Codec { stream_id: stream_id.to_owned(), reason: e.to_string() })?;
    let expected = if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(version) };
    append(conn, stream_type, stream_id, expected, &new_events, metadata).await?;
    Ok(())
}
