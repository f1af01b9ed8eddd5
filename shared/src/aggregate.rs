//! One aggregate abstraction for both services. A domain type says what its
//! stream is called, which events and commands it has, how it decides and
//! how it folds ([`Aggregate`], pure); this module loads, appends and runs
//! commands against the event store for any of them, and retries a command
//! that lost a race on its stream.

use sqlx::{PgConnection, PgPool};

use crate::event_store::{self, DomainEvent, EventMetadata, EventStoreError, TypedStreamError};

/// An event-sourced aggregate: `decide` and `apply` are pure.
pub trait Aggregate: Sized {
    /// The stream type in the event store (`booking`, `payment_intent`).
    const STREAM_TYPE: &'static str;
    /// What happened to it.
    type Event: DomainEvent;
    /// What may be asked of it.
    type Command;
    /// Why a command is refused.
    type Rejection;

    /// The events `command` produces from `state` (`None`: no stream yet).
    fn decide(state: Option<&Self>, command: Self::Command) -> Result<Vec<Self::Event>, Self::Rejection>;

    /// Folds one event into the state.
    fn apply(state: Option<Self>, event: &Self::Event) -> Option<Self>;

    /// Folds a whole history.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Option<Self>
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(None, Self::apply)
    }
}

/// A state and the stream version it was loaded at.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// `None` if the stream does not exist.
    pub state: Option<A>,
    /// Version of its last event (0 for none).
    pub version: i64,
}

/// Loads and folds the stream of `id`.
pub async fn load<A: Aggregate>(conn: &mut PgConnection, id: &str) -> Result<Loaded<A>, TypedStreamError> {
    let (events, version) = event_store::load_typed::<A::Event>(conn, A::STREAM_TYPE, id).await?;
    Ok(Loaded { state: A::replay(&events), version })
}

/// Appends `events` to the stream of `id` after `expected` (0: it must not exist).
pub async fn append<A: Aggregate>(
    conn: &mut PgConnection,
    id: &str,
    expected: i64,
    events: &[A::Event],
    metadata: &EventMetadata,
) -> Result<(), TypedStreamError> {
    event_store::append_typed(conn, A::STREAM_TYPE, id, expected, events, metadata).await
}

/// One aggregate folded from its whole stream, with the stored events.
pub struct Folded<A: Aggregate> {
    /// The aggregate's id.
    pub id: String,
    /// The state its events fold to (the domain's own `replay`).
    pub state: Option<A>,
    /// Its events as stored (type names, times).
    pub events: Vec<crate::event_store::StoredEvent>,
}

/// Every aggregate of type `A`, each folded by the domain's `replay`
/// (audits; this reads the whole event store of the type).
pub async fn load_all<A: Aggregate>(pool: &PgPool) -> Result<Vec<Folded<A>>, TypedStreamError> {
    let stored = event_store::load_all_streams(pool, A::STREAM_TYPE).await?;
    let mut folded: Vec<Folded<A>> = Vec::new();
    for event in stored {
        let decoded: A::Event = event
            .decode()
            .map_err(|e| TypedStreamError::Codec { stream_id: event.stream_id.clone(), reason: e.to_string() })?;
        match folded.last_mut() {
            Some(current) if current.id == event.stream_id => {
                current.state = A::apply(current.state.take(), &decoded);
                current.events.push(event);
            }
            _ => folded.push(Folded {
                id: event.stream_id.clone(),
                state: A::apply(None, &decoded),
                events: vec![event],
            }),
        }
    }
    Ok(folded)
}

/// Which of `ids` have an event of one of `event_types` in their stream
/// (one query for all of them).
pub async fn having_event<A: Aggregate>(
    pool: &PgPool,
    ids: &[String],
    event_types: &[&str],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select distinct stream_id from events where stream_type = $1 and stream_id = any($2) and event_type = any($3)",
    )
    .bind(A::STREAM_TYPE)
    .bind(ids)
    .bind(event_types)
    .fetch_all(pool)
    .await
}

/// Which of `ids` have a stream (one indexed query for all of them).
pub async fn existing<A: Aggregate>(pool: &PgPool, ids: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select stream_id from events where stream_type = $1 and stream_id = any($2) and stream_version = 1",
    )
    .bind(A::STREAM_TYPE)
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// A service's error type, as far as the store is concerned: it can say
/// "lost a race" (retry), "the database failed" and "a bug".
pub trait StoreFailure: From<sqlx::Error> {
    /// Someone else appended first.
    fn contention() -> Self;
    /// Whether this is that.
    fn is_contention(&self) -> bool;
    /// A broken invariant (an event that does not decode, say).
    fn internal(reason: String) -> Self;

    /// What a store error means to the service (its `From` impls call this).
    fn from_store(error: TypedStreamError) -> Self {
        match error {
            TypedStreamError::Store(EventStoreError::Conflict { .. }) => Self::contention(),
            TypedStreamError::Store(EventStoreError::Database(e)) => Self::from(e),
            other => Self::internal(other.to_string()),
        }
    }
}

/// Implements [`StoreFailure`] and `From<TypedStreamError>` for a service's
/// error enum that has a `Contention` variant and an `Internal(String)` one.
#[macro_export]
macro_rules! store_failure {
    ($error:ty) => {
        impl $crate::aggregate::StoreFailure for $error {
            fn contention() -> Self {
                Self::Contention
            }

            fn is_contention(&self) -> bool {
                matches!(self, Self::Contention)
            }

            fn internal(reason: String) -> Self {
                Self::Internal(reason)
            }
        }

        impl From<$crate::event_store::TypedStreamError> for $error {
            fn from(error: $crate::event_store::TypedStreamError) -> Self {
                <Self as $crate::aggregate::StoreFailure>::from_store(error)
            }
        }
    };
}

/// How many times a command that lost a race on its stream is decided again.
pub const MAX_RACE_RETRIES: usize = 5;

/// Ties an attempt's borrowed connection (`'c`) to the caller's borrows
/// (`'a`), so an attempt may use both: it proves `'a` outlives `'c`.
pub struct Borrows<'c, 'a>(std::marker::PhantomData<&'c &'a ()>);

/// Runs `attempt` in a transaction of its own and commits it; an attempt
/// that lost a race is rolled back and run again on fresh state, up to
/// [`MAX_RACE_RETRIES`] times.
pub async fn retry_on_contention<'a, T, E, F>(pool: &PgPool, mut attempt: F) -> Result<T, E>
where
    E: StoreFailure,
    F: for<'c> FnMut(&'c mut PgConnection, Borrows<'c, 'a>) -> futures::future::BoxFuture<'c, Result<T, E>>,
{
    for _ in 0..MAX_RACE_RETRIES {
        let mut tx = pool.begin().await?;
        match attempt(&mut tx, Borrows(std::marker::PhantomData)).await {
            Ok(value) => {
                tx.commit().await?;
                crate::global_log::committed();
                return Ok(value);
            }
            Err(error) if error.is_contention() => continue,
            Err(error) => return Err(error),
        }
    }
    Err(E::contention())
}
