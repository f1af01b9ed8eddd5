-- A new booking in one call: the quota lock, the quota count, the seat
-- holds, the sweeper's deadline, the `booking_view` row and the booking's
-- first events, in one round trip (and, called outside a transaction
-- block, in one transaction with no `BEGIN` or `COMMIT` of its own). It
-- was five round trips (`BEGIN`, the catalog read with the quota lock, the
-- hold, the event append, `COMMIT`), and each one is a wake-up of the
-- backend and of the service.
--
-- The function is volatile, so each statement in it takes a new snapshot
-- under read committed: the count below sees every booking of the user
-- that committed while the lock was awaited, as the separate statements
-- did. It raises (and so writes nothing) when the user would go over the
-- limit (`BK002`, detail: the seats held) or a seat is taken (`BK001`,
-- detail: the first taken seat in request order). The events' insert is
-- the event store's append at version 0 (`kernel::event_store::append`):
-- versions 1, 2, 3…, published events numbered 1, 2, 3… in `sequence`; a
-- stream that exists fails on the `(stream_type, stream_id,
-- stream_version)` key.
create function book_seats(
    p_performance_id    text,
    p_booking_id        text,
    p_user_id           text,
    p_seat_ids          text[],
    p_room              bigint,
    p_locked_until      timestamptz,
    p_total_amount      bigint,
    p_payment_intent_id text,
    p_created_at        timestamptz,
    p_stream_type       text,
    p_event_ids         uuid[],
    p_event_types       text[],
    p_schema_versions   integer[],
    p_payloads          jsonb[],
    p_published         boolean[],
    p_metadata          jsonb
) returns void
language plpgsql volatile as $$
declare
    held_before bigint;
    held_now    text[];
    first_taken text;
begin
    -- One user's bookings for one performance queue here: the limit is a
    -- count, then an insert. The same key as the separate statements used,
    -- so replicas of either release exclude each other during a rollout.
    perform pg_advisory_xact_lock(hashtextextended('quota:' || p_performance_id || ':' || p_user_id, 0));

    select count(*) into held_before
      from seat_holds
     where performance_id = p_performance_id and user_id = p_user_id
       and (status = 'booked' or locked_until > now() or admitted_until > now());
    if held_before > p_room then
        raise exception using errcode = 'BK002', message = 'over the seat limit', detail = held_before::text;
    end if;

    -- In one order for every booking (bytewise), so two requests that
    -- overlap lock their rows in the same order and cannot deadlock. A row
    -- that exists is taken over only if its hold has lapsed and no charge
    -- is admitted; the primary key does the rest.
    with hold as (
        insert into seat_holds (performance_id, seat_id, booking_id, user_id, status, locked_until)
        select p_performance_id, seat, p_booking_id, p_user_id, 'locked', p_locked_until
          from unnest(p_seat_ids) as s(seat)
         order by seat collate "C"
        on conflict (performance_id, seat_id) do update
           set booking_id = excluded.booking_id, user_id = excluded.user_id, status = 'locked',
               locked_until = excluded.locked_until, admitted_until = null
         where seat_holds.status = 'locked' and seat_holds.locked_until <= now()
           and (seat_holds.admitted_until is null or seat_holds.admitted_until <= now())
        returning seat_id)
    select coalesce(array_agg(seat_id), '{}') into held_now from hold;
    if cardinality(held_now) < cardinality(p_seat_ids) then
        select seat into first_taken
          from unnest(p_seat_ids) with ordinality as s(seat, n)
         where seat <> all(held_now)
         order by n
         limit 1;
        raise exception using errcode = 'BK001', message = 'a seat is taken', detail = first_taken;
    end if;

    insert into booking_deadlines (booking_id, due_at) values (p_booking_id, p_locked_until)
        on conflict (booking_id) do update set due_at = excluded.due_at;

    insert into booking_view (booking_id, user_id, performance_id, seat_ids, total_amount, status,
                              payment_intent_id, created_at, version)
    values (p_booking_id, p_user_id, p_performance_id, p_seat_ids, p_total_amount, 'pending',
            p_payment_intent_id, p_created_at, 1)
        on conflict (booking_id) do nothing;

    insert into events (event_id, stream_type, stream_id, stream_version, event_type, schema_version,
                        payload, metadata, sequence)
    select e.event_id, p_stream_type, p_booking_id, e.n, e.event_type, e.schema_version, e.payload, p_metadata,
           case when e.published then sum(e.published::int) over (order by e.n) end
      from unnest(p_event_ids, p_event_types, p_schema_versions, p_payloads, p_published)
           with ordinality as e(event_id, event_type, schema_version, payload, published, n)
     order by e.n;
end
$$;
