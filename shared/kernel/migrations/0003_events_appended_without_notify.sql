-- The statement-level pg_notify on every insert into `events` made every
-- event-appending commit take PostgreSQL's cluster-wide notify lock, so
-- commits could not be grouped (about a third of the database's capacity
-- in a booking-shaped pgbench). Readers are now woken in-process after
-- commit (`global_log::committed`) and poll for what other processes
-- append.
drop trigger if exists events_appended on events;
drop function if exists events_notify_appended();
