-- A published event's number among its stream's published events (1, 2,
-- 3… with no gaps), set on append; null for internal events. Kafka
-- consumers and feed subscribers check it (`ce_sequence`) to tell a
-- missing or reordered event from a normal one. Each service numbers the
-- events it had before this column in a migration of its own.
alter table events add column sequence bigint;
