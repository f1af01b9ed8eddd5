//! The contract between the consumer and a service: a received record
//! ([`IncomingEvent`]), what a handler does with it ([`EventHandler`]), and
//! how a failure is classified ([`HandlerError`]): poison is dead-lettered
//! at once, a permanent failure after a few tries, a transient one is
//! retried for as long as it lasts.

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::kafka::CloudEventHeaders;

/// A received record with its CloudEvents attributes parsed.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    /// The topic it came from.
    pub topic: String,
    /// Its partition key.
    pub key: Option<String>,
    /// CloudEvents attributes and trace context.
    pub headers: CloudEventHeaders,
    /// The encoded integration event.
    pub value: Vec<u8>,
}

impl IncomingEvent {
    /// The event id as a UUID (the dedupe key).
    pub fn event_id(&self) -> Result<Uuid, HandlerError> {
        Uuid::parse_str(&self.headers.id)
            .map_err(|_| HandlerError::Poison(format!("ce_id `{}` is not a UUID", self.headers.id)))
    }

    /// Decodes the value as protobuf message `M`.
    pub fn decode<M: prost::Message + Default>(&self) -> Result<M, HandlerError> {
        M::decode(self.value.as_slice())
            .map_err(|e| HandlerError::Poison(format!("{} does not decode: {e}", self.headers.event_type)))
    }

    /// The metadata of events this one causes: its correlation id goes on,
    /// it becomes their causation, the trace continues, `actor` did it.
    pub fn caused_metadata(&self, actor: &str) -> kernel::event_store::EventMetadata {
        kernel::event_store::EventMetadata {
            correlation_id: self.headers.correlation_id.clone(),
            causation_id: Some(self.headers.id.clone()),
            traceparent: edge::trace_context::current_traceparent().or_else(|| self.headers.traceparent.clone()),
            actor: Some(actor.to_owned()),
        }
    }
}

/// Why a handler did not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The record can never be handled (undecodable, impossible facts): dead-letter it now.
    #[error("poison record: {0}")]
    Poison(String),
    /// The database refused the record's effects for a reason that does
    /// not go away by itself (a constraint, bad data, a bug in a query):
    /// tried a few times, then dead-lettered with the reason.
    #[error("permanent: {0}")]
    Permanent(String),
    /// Something that may work on a retry (database unreachable, a lock
    /// or serialization conflict, resources): retried for as long as it lasts.
    #[error("transient: {0}")]
    Transient(#[from] anyhow::Error),
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        if is_transient(&error) {
            Self::Transient(error.into())
        } else {
            Self::Permanent(describe(&error))
        }
    }
}

/// True when a database error may go away by itself: the connection or
/// the pool failed, or the server refused for now (SQLSTATE classes 08
/// connection, 40 serialization and deadlock, 53 resources, 57 operator
/// intervention and shutdown, 58 system errors; 55P03 and 55006 a lock or
/// an object in use). Data (22), integrity (23), syntax and access (42)
/// and everything else the server says about the statement itself will
/// fail the same way next time.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => {
                matches!(code.get(..2), Some("08" | "40" | "53" | "57" | "58")) || matches!(&*code, "55P03" | "55006")
            }
            // A database error without a SQLSTATE comes from the driver's side of the wire.
            None => true,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// A database error as one line, with its SQLSTATE when the server gave one.
fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("SQLSTATE {code}: {}", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}

/// A new event for [`EventHandler::handle_all`], with the span its
/// handling belongs to.
pub struct Fresh<'a> {
    /// The event.
    pub event: &'a IncomingEvent,
    /// Its `consume` span (the trace it continues).
    pub span: tracing::Span,
}

/// Applies one event's effects inside the transaction that records it in the inbox.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Whether records of this `ce_type` matter here; others are acknowledged
    /// without touching the database.
    fn wants(&self, _ce_type: &str) -> bool {
        true
    }

    /// Handles `event`; every write must go through `tx`.
    async fn handle(&self, tx: &mut PgConnection, event: &IncomingEvent) -> Result<(), HandlerError>;

    /// Handles new events of one partition in order, in one transaction
    /// (a consumer's shared transaction), each with its `consume` span; on
    /// failure, the index of the event that failed. By default one by one
    /// with [`EventHandler::handle`]; a handler may write several at once.
    async fn handle_all(&self, tx: &mut PgConnection, events: &[Fresh<'_>]) -> Result<(), (usize, HandlerError)> {
        for (index, fresh) in events.iter().enumerate() {
            tracing::Instrument::instrument(self.handle(tx, fresh.event), fresh.span.clone())
                .await
                .map_err(|error| (index, error))?;
        }
        Ok(())
    }

    /// Runs after `handle`'s transaction committed (wake whoever waits for
    /// its effects). Not run for duplicates or refused records.
    async fn committed(&self, _event: &IncomingEvent) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_pool_failures_are_transient_and_other_driver_errors_permanent() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::ColumnNotFound("x".into())));
        assert!(matches!(HandlerError::from(sqlx::Error::RowNotFound), HandlerError::Permanent(_)));
    }
}
