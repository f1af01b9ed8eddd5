-- booking-service write side: the catalog and the seat holds. Events live
-- in the shared `events` table; these tables are written in the same
-- transaction as the events they follow from.

create table performances (
    performance_id text        primary key,
    title          text        not null,
    starts_at      timestamptz,
    seat_count     integer     not null,
    created_at     timestamptz not null default now()
);

create table seats (
    performance_id text    not null references performances,
    seat_id        text    not null,
    row_label      text    not null,
    seat_number    integer not null,
    price          bigint  not null check (price > 0),
    primary key (performance_id, seat_id)
);

-- THE no-double-sale invariant: at most one row per performance seat, so
-- two bookings can never hold or own the same seat. A `locked` row whose
-- `locked_until` has passed (and whose admission, if any, has ended) may be
-- taken over by a new booking in the same statement that checks it.
create table seat_holds (
    performance_id text        not null,
    seat_id        text        not null,
    booking_id     text        not null,
    user_id        text        not null,
    status         text        not null check (status in ('locked', 'booked')),
    locked_until   timestamptz,
    -- While a payment is being charged the hold cannot be taken over.
    admitted_until timestamptz,
    primary key (performance_id, seat_id),
    foreign key (performance_id, seat_id) references seats,
    check ((status = 'locked') = (locked_until is not null))
);

create index seat_holds_booking on seat_holds (booking_id);
create index seat_holds_user on seat_holds (performance_id, user_id);

-- Pending bookings and when the sweeper should look at them.
create table booking_deadlines (
    booking_id text        primary key,
    due_at     timestamptz not null
);

create index booking_deadlines_due on booking_deadlines (due_at);
