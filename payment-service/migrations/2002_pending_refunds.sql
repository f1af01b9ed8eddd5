-- Refunds the worker still has to make, and when to try next. Written in
-- the same transaction as the events that open, retry and close them.
create table pending_refunds (
    payment_intent_id text        primary key,
    due_at            timestamptz not null,
    attempts          integer     not null default 0
);

create index pending_refunds_due on pending_refunds (due_at);
