-- Which transaction applied each handled event, so a test can tell
-- records that shared a transaction from records that had one each.
alter table handled_events add column tx_id xid8 not null default pg_current_xact_id();
