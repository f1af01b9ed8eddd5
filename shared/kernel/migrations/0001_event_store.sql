-- The event store: one append-only table that is at once the event store,
-- the global log and the transactional outbox (the relay is a checkpointed
-- reader of it). See docs/ARCHITECTURE.md, "Commit-order gaps".
create table events (
    global_position bigserial primary key,
    -- The appending transaction's id. Readers of the global log only read
    -- below the oldest in-flight transaction, so an event whose transaction
    -- commits after a later-numbered one is never skipped.
    tx_id           xid8        not null default pg_current_xact_id(),
    event_id        uuid        not null unique,
    stream_type     text        not null,
    stream_id       text        not null,
    stream_version  bigint      not null check (stream_version > 0),
    event_type      text        not null,
    schema_version  integer     not null default 1,
    payload         jsonb       not null,
    metadata        jsonb       not null default '{}'::jsonb,
    recorded_at     timestamptz not null default now(),
    unique (stream_type, stream_id, stream_version)
);

create index events_commit_order on events (tx_id, global_position);

-- Events are facts: never updated, never deleted.
create function events_reject_change() returns trigger
language plpgsql as $$
begin
    raise exception 'events are append-only (% rejected)', tg_op;
end $$;

create trigger events_append_only
    before update or delete on events
    for each row execute function events_reject_change();

-- Wakes the outbox relay and the projection runners at commit time; they
-- also poll, so a lost notification only costs latency.
create function events_notify_appended() returns trigger
language plpgsql as $$
begin
    perform pg_notify('events_appended', '');
    return null;
end $$;

create trigger events_appended
    after insert on events
    for each statement execute function events_notify_appended();

-- Where each global-log reader (outbox relay, projection) has got to.
-- For projections, `schema_name` is the schema holding the live read tables.
create table subscription_checkpoints (
    subscription  text        primary key,
    last_tx       bigint      not null default 0,
    last_position bigint      not null default 0,
    schema_name   text,
    updated_at    timestamptz not null default now()
);

-- Kafka inbox: a record whose ce_id is here was handled by that consumer.
-- Written in the same transaction as the handler's effects.
create table inbox (
    consumer     text        not null,
    event_id     uuid        not null,
    topic        text        not null,
    processed_at timestamptz not null default now(),
    primary key (consumer, event_id)
);

create index inbox_processed_at on inbox (processed_at);

-- Numbers the schemas that projections build their tables in.
create sequence projection_schema_seq;
