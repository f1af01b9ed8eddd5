-- Charge attempts sent (or about to be sent) to the PSP whose outcome is
-- not recorded yet: the reconciler's to-do list. Written in the same
-- transaction as ChargeRequested, deleted with the outcome.
create table pending_charges (
    payment_intent_id text        primary key,
    attempt           integer     not null,
    attempt_key       text        not null,
    requested_at      timestamptz not null default now(),
    -- A reconciler working on the attempt holds it until then.
    leased_until      timestamptz
);

create index pending_charges_age on pending_charges (requested_at);

-- Refunds are claimed by pushing due_at forward, so workers on several
-- replicas never refund one intent at the same time (no session locks).

-- The simulated payment service provider (PSP). It is not part of the
-- payment-service's event store: it stands for the card processor's own
-- records, which the reconciler and `ticketing check` compare against.
create schema psp;

create table psp.charges (
    idempotency_key   text        primary key,
    payment_intent_id text        not null,
    amount            bigint      not null,
    currency          text        not null,
    -- succeeded | declined | voided (the key was closed unused: it never charges)
    status            text        not null check (status in ('succeeded', 'declined', 'voided')),
    failure_code      text,
    failure_concept   text,
    processed_at      timestamptz not null default now()
);

create index psp_charges_by_intent on psp.charges (payment_intent_id);

create table psp.refunds (
    idempotency_key   text        primary key,
    payment_intent_id text        not null,
    amount            bigint      not null,
    currency          text        not null,
    attempts          integer     not null default 0,
    refunded_at       timestamptz
);
