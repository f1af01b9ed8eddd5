-- payment-service write side: the double-entry ledger. Payment intents are
-- event-sourced in the shared `events` table (stream type `payment_intent`).

create table ledger_entries (
    entry_id       bigserial   primary key,
    -- Business id of the posting, e.g. payment:{intent}:capture.
    transaction_id text        not null,
    account        text        not null,
    direction      text        not null check (direction in ('debit', 'credit')),
    amount         bigint      not null check (amount > 0),
    currency       text        not null,
    created_at     timestamptz not null default now(),
    unique (transaction_id, account, direction)
);

-- The ledger is append-only: corrections are reversing postings.
create function ledger_reject_change() returns trigger
language plpgsql as $$
begin
    raise exception 'ledger entries are append-only (% rejected)', tg_op;
end $$;

create trigger ledger_append_only
    before update or delete on ledger_entries
    for each row execute function ledger_reject_change();

-- Booking events name the booking, not the intent: find an intent by its booking.
create index events_intent_by_booking on events ((payload->>'booking_id'))
    where stream_type = 'payment_intent' and stream_version = 1;
