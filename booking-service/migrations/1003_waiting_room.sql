-- The on-sale waiting room (docs/WAITING-ROOM.md).
create table onsales (
    performance_id     text        primary key references performances,
    opens_at           timestamptz not null,
    max_active         integer     not null,
    admit_per_minute   integer     not null,
    admission_seconds  integer     not null,
    place_keep_seconds integer     not null,
    -- Drawn at the opening and kept, so the pre-queue's order can be audited.
    seed               bigint,
    opened_at          timestamptz,
    -- The last position handed out, and the largest one the admitter reached.
    next_position      bigint      not null default 0,
    reached            bigint      not null default 0,
    sold_out_at        timestamptz,
    closed_at          timestamptz
);

create table queue_places (
    performance_id       text        not null references onsales on delete cascade,
    user_id              text        not null,
    joined_at            timestamptz not null default clock_timestamp(),
    -- Null in the pre-queue, until the opening's shuffle.
    position             bigint,
    last_seen            timestamptz not null default now(),
    state                text        not null default 'waiting'
                         check (state in ('waiting', 'admitted', 'done', 'lapsed')),
    admission_id         uuid,
    admitted_at          timestamptz,
    admission_expires_at timestamptz,
    primary key (performance_id, user_id)
);

create index queue_places_turn on queue_places (performance_id, position) where state = 'waiting';
create index queue_places_admitted on queue_places (performance_id, admitted_at) where admitted_at is not null;
