-- Idempotency-Key records (decisions.md, "Idempotency"). A key is claimed
-- (`in_flight`) before the command runs; the command's own transaction
-- stores the outcome (`done`), so a crash can never leave a command's events
-- without their record. An in-flight claim whose lease lapsed (its holder
-- died) may be taken over.
create table idempotency_keys (
    scope          text        not null,   -- the caller (JWT subject)
    operation      text        not null,   -- e.g. create_booking
    idempotency_key text       not null,
    fingerprint    text        not null,   -- the request, minus secrets
    state          text        not null check (state in ('in_flight', 'done')),
    response       jsonb,
    lease_until    timestamptz not null,
    created_at     timestamptz not null default now(),
    primary key (scope, operation, idempotency_key)
);

create index idempotency_keys_created on idempotency_keys (created_at);
