//! One way to run a command, for every aggregate of both services. A
//! domain type says what its stream is called, which events and commands
//! it has, how it decides and how it folds ([`Aggregate`], pure); a service
//! says what else its events change in the same transaction ([`Effects`]:
//! seat holds, read models, work queues). [`execute`] then loads the
//! stream, decides, appends, applies the effects, commits, wakes the log's
//! readers, and decides again on fresh state when another writer won the
//! race for the stream.

use std::marker::PhantomData;

use async_trait::async_trait;
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};

use crate::event_store::{self, DomainEvent, EventMetadata, EventStoreError, NewEvent, StoredEvent, TypedStreamError};

/// An event-sourced aggregate: `decide` and `apply` are pure.
pub trait Aggregate: Sized + Send + Sync {
    /// The stream type in the event store (`booking`, `payment_intent`).
    const STREAM_TYPE: &'static str;
    /// What happened to it.
    type Event: DomainEvent + Send + Sync;
    /// What may be asked of it.
    type Command: Send;
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

/// What a service's error must be able to say about running a command:
/// "lost a race" (decide again), and "a broken stream" (a bug). Each
/// service maps these to variants of its own error enum.
pub trait CommandFailure: From<sqlx::Error> + Send {
    /// Another writer appended to the stream first.
    fn contention() -> Self;
    /// Whether this is that.
    fn is_contention(&self) -> bool;
    /// A stream or event that cannot be what the domain says (an event that
    /// does not decode, a stream that does not begin with its creation).
    fn broken(reason: String) -> Self;

    /// What a store error means to the service.
    fn from_store(error: TypedStreamError) -> Self {
        match error {
            TypedStreamError::Store(EventStoreError::Conflict { .. }) => Self::contention(),
            TypedStreamError::Store(EventStoreError::Database(e)) => Self::from(e),
            other => Self::broken(other.to_string()),
        }
    }
}

/// What else a service keeps in step with an aggregate's events, in the
/// transaction that appends them.
#[async_trait]
pub trait Effects<A: Aggregate>: Send + Sync {
    /// The service's error.
    type Error: CommandFailure + From<A::Rejection>;

    /// Called for each appended event, in order: it is the stream's event
    /// number `version`, and `after` is the state it leads to.
    async fn follow(
        &self,
        conn: &mut PgConnection,
        id: &str,
        version: i64,
        event: &A::Event,
        after: &A,
    ) -> Result<(), Self::Error>;
}

/// A state and the stream version it was loaded at.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// `None` if the stream does not exist.
    pub state: Option<A>,
    /// Version of its last event (0 for none).
    pub version: i64,
}

/// What a command did: the state it led to and the events it appended.
#[derive(Debug, Clone)]
pub struct Executed<A: Aggregate> {
    /// The state after the events.
    pub state: A,
    /// The appended events (none when the command changed nothing).
    pub events: Vec<A::Event>,
}

/// Loads and folds the stream of `id`. A stream whose first event does not
/// create the aggregate is broken, not missing.
pub async fn load<A: Aggregate, E: CommandFailure>(conn: &mut PgConnection, id: &str) -> Result<Loaded<A>, E> {
    let (events, version) =
        event_store::load_typed::<A::Event>(conn, A::STREAM_TYPE, id).await.map_err(E::from_store)?;
    let state = A::replay(&events);
    if state.is_none() && !events.is_empty() {
        return Err(E::broken(format!("{} {id}: its first event does not create it", A::STREAM_TYPE)));
    }
    Ok(Loaded { state, version })
}

/// Ties a command builder's borrowed connection (`'c`) to the caller's
/// borrows (`'a`), so a builder may use both: it proves `'a` outlives `'c`.
pub struct Borrows<'c, 'a>(PhantomData<&'c &'a ()>);

/// A command builder for a command that needs nothing from the state or
/// the database.
pub fn just<'a, A: Aggregate, E: Send + 'a>(
    command: A::Command,
) -> impl for<'c> FnOnce(&'c mut PgConnection, Option<&'c A>, Borrows<'c, 'a>) -> BoxFuture<'c, Result<A::Command, E>>
where
    A::Command: 'a,
{
    move |_, _, _| Box::pin(std::future::ready(Ok(command)))
}

/// How many times a command that lost a race on its stream is decided again.
pub const MAX_RACE_RETRIES: usize = 5;

/// Runs a command in a transaction of its own: loads `id`, builds the
/// command from the state (`command` may read the database, e.g. the
/// clock), decides, appends with `effects`, commits and wakes the log's
/// readers. A lost race is rolled back and decided again on fresh state, up
/// to [`MAX_RACE_RETRIES`] times.
pub async fn execute<'a, A, X, F>(
    pool: &PgPool,
    id: &str,
    metadata: &EventMetadata,
    effects: &X,
    mut command: F,
) -> Result<Executed<A>, X::Error>
where
    A: Aggregate,
    X: Effects<A>,
    F: for<'c> FnMut(
        &'c mut PgConnection,
        Option<&'c A>,
        Borrows<'c, 'a>,
    ) -> BoxFuture<'c, Result<A::Command, X::Error>>,
{
    for _ in 0..MAX_RACE_RETRIES {
        let mut tx = pool.begin().await?;
        match execute_in(&mut tx, id, metadata, effects, &mut command).await {
            Ok(executed) => {
                commit(tx).await?;
                return Ok(executed);
            }
            Err(error) if error.is_contention() => continue,
            Err(error) => return Err(error),
        }
    }
    Err(X::Error::contention())
}

/// [`execute`] on the caller's transaction (a consumer's inbox
/// transaction, say): nothing is committed or retried here.
pub async fn execute_in<'a, A, X, F>(
    conn: &mut PgConnection,
    id: &str,
    metadata: &EventMetadata,
    effects: &X,
    command: F,
) -> Result<Executed<A>, X::Error>
where
    A: Aggregate,
    X: Effects<A>,
    F: for<'c> FnOnce(
        &'c mut PgConnection,
        Option<&'c A>,
        Borrows<'c, 'a>,
    ) -> BoxFuture<'c, Result<A::Command, X::Error>>,
{
    let loaded = load::<A, X::Error>(conn, id).await?;
    let command = command(conn, loaded.state.as_ref(), Borrows(PhantomData)).await?;
    let events = A::decide(loaded.state.as_ref(), command)?;
    record(conn, id, loaded, events, metadata, effects).await
}

/// Starts the stream of `id` with `command` on the caller's transaction,
/// without reading it first: appending at version 0 fails with contention
/// if it exists.
pub async fn start_in<A: Aggregate, X: Effects<A>>(
    conn: &mut PgConnection,
    id: &str,
    metadata: &EventMetadata,
    effects: &X,
    command: A::Command,
) -> Result<Executed<A>, X::Error> {
    let events = A::decide(None, command)?;
    record(conn, id, Loaded { state: None, version: 0 }, events, metadata, effects).await
}

/// The first events of a new stream, decided and encoded but not written,
/// for a service that appends them in a database call of its own (the
/// booking-service holds a booking's seats and starts its stream in one
/// round trip). The caller appends them at versions 1, 2, 3… so that a
/// stream that exists fails, applies what its [`Effects`] would have done
/// for them in the same transaction, and calls [`commit`] or
/// [`global_log::committed`](crate::global_log::committed) after the commit.
pub fn decide_new<A: Aggregate, E: CommandFailure + From<A::Rejection>>(
    id: &str,
    command: A::Command,
) -> Result<Vec<NewEvent>, E> {
    let events = A::decide(None, command)?;
    if A::replay(&events).is_none() {
        return Err(E::broken(format!("{} {id}: its events leave no state", A::STREAM_TYPE)));
    }
    event_store::encode_new(&events)
        .map_err(|e| E::broken(format!("{} {id}: an event does not encode: {e}", A::STREAM_TYPE)))
}

/// One new stream for [`start_each_in`]: its id, the metadata of its event
/// and the command that creates it.
pub struct Start<A: Aggregate> {
    /// The stream's id.
    pub id: String,
    /// The metadata of its first event.
    pub metadata: EventMetadata,
    /// The command that creates it; it must decide exactly one event.
    pub command: A::Command,
}

/// Starts many streams of `A` on the caller's transaction with one
/// statement, each with the one event its command decides on no state, and
/// applies the effects of each. Returns the ids of the streams that existed
/// already: nothing was written for them, and the caller decides on their
/// current state. A command that is refused, or that decides other than
/// one event, fails with its index (nothing of the batch was written).
pub async fn start_each_in<A: Aggregate, X: Effects<A>>(
    conn: &mut PgConnection,
    effects: &X,
    starts: Vec<Start<A>>,
) -> Result<Vec<String>, (usize, X::Error)> {
    let mut decided = Vec::with_capacity(starts.len());
    for (index, start) in starts.into_iter().enumerate() {
        let mut events = A::decide(None, start.command).map_err(|e| (index, X::Error::from(e)))?;
        let (Some(event), true) = (events.pop(), events.is_empty()) else {
            return Err((
                index,
                X::Error::broken(format!("{} {}: a start decides one event", A::STREAM_TYPE, start.id)),
            ));
        };
        let encoded = event_store::encode_new(std::slice::from_ref(&event))
            .ok()
            .and_then(|mut encoded| encoded.pop())
            .ok_or_else(|| {
                (index, X::Error::broken(format!("{} {}: its event does not encode", A::STREAM_TYPE, start.id)))
            })?;
        decided.push((start.id, start.metadata, event, encoded));
    }
    let rows: Vec<(&str, &NewEvent, &EventMetadata)> =
        decided.iter().map(|(id, metadata, _, encoded)| (id.as_str(), encoded, metadata)).collect();
    let existed = event_store::start_streams(conn, A::STREAM_TYPE, &rows)
        .await
        .map_err(|e| (0, X::Error::from_store(TypedStreamError::Store(e))))?;
    for (index, (id, _, event, _)) in decided.iter().enumerate() {
        if existed.contains(id) {
            continue;
        }
        let state = A::apply(None, event).ok_or_else(|| {
            (index, X::Error::broken(format!("{} {id}: its first event leaves no state", A::STREAM_TYPE)))
        })?;
        effects.follow(conn, id, 1, event, &state).await.map_err(|e| (index, e))?;
    }
    Ok(existed)
}

/// Commits a transaction that appended events and wakes the log's readers
/// (the relay) at once.
pub async fn commit(tx: sqlx::Transaction<'_, sqlx::Postgres>) -> Result<(), sqlx::Error> {
    tx.commit().await?;
    crate::global_log::committed();
    Ok(())
}

async fn record<A: Aggregate, X: Effects<A>>(
    conn: &mut PgConnection,
    id: &str,
    loaded: Loaded<A>,
    events: Vec<A::Event>,
    metadata: &EventMetadata,
    effects: &X,
) -> Result<Executed<A>, X::Error> {
    if !events.is_empty() {
        event_store::append_typed(conn, A::STREAM_TYPE, id, loaded.version, &events, metadata)
            .await
            .map_err(X::Error::from_store)?;
    }
    let mut state = loaded.state;
    for (version, event) in (loaded.version + 1..).zip(&events) {
        let after = A::apply(state, event)
            .ok_or_else(|| X::Error::broken(format!("{} {id}: event {version} leaves no state", A::STREAM_TYPE)))?;
        effects.follow(conn, id, version, event, &after).await?;
        state = Some(after);
    }
    let state = state.ok_or_else(|| X::Error::broken(format!("{} {id} does not exist", A::STREAM_TYPE)))?;
    Ok(Executed { state, events })
}

/// One aggregate folded from its whole stream, with the stored events.
pub struct Folded<A: Aggregate> {
    /// The aggregate's id.
    pub id: String,
    /// The state its events fold to (the domain's own `replay`).
    pub state: Option<A>,
    /// Its events as stored (type names, times).
    pub events: Vec<StoredEvent>,
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

/// Which of `ids` have an event of one of `event_types` in their stream.
pub async fn having_event<A: Aggregate>(
    pool: &PgPool,
    ids: &[String],
    event_types: &[&str],
) -> Result<Vec<String>, sqlx::Error> {
    event_store::streams_having_event(pool, A::STREAM_TYPE, ids, event_types).await
}

/// Which of `ids` have a stream.
pub async fn existing<A: Aggregate>(pool: &PgPool, ids: &[String]) -> Result<Vec<String>, sqlx::Error> {
    event_store::existing_streams(pool, A::STREAM_TYPE, ids).await
}
