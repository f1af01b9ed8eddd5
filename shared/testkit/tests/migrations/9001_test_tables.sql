-- Tables used only by the shared crate's own tests.
create table handled_events (
    event_id   uuid primary key,
    ce_type    text not null,
    handled_at timestamptz not null default now()
);
