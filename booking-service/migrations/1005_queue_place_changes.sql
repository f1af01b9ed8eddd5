-- The warm copy of each booking-service reloads only the places changed
-- since its last load, not every place four times a second (20,000 rows
-- decoded four times a second were a quarter of the booking-service's CPU
-- at an on-sale's opening). Each place keeps the id of the transaction
-- that last wrote it; a load that began when the oldest transaction still
-- running was X has seen every change of a transaction before X, so the
-- next load reads the places changed at X or later. A trigger sets it on
-- every update, so no writer of places can forget to.
alter table queue_places add column changed_by xid8 not null default pg_current_xact_id();

create function queue_place_changed() returns trigger language plpgsql as $$
begin
    new.changed_by := pg_current_xact_id();
    return new;
end
$$;

create trigger queue_place_changed before update on queue_places
    for each row execute function queue_place_changed();
