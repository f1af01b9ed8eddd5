-- Each consumer's place in each partition, stored in the same transaction
-- as the effects of the records it handled (so the place moves exactly
-- with them), and which member leases the partition. The lease itself is a
-- session advisory lock (see shared/src/inbox/leases.rs); `epoch` grows at
-- every acquisition, and offsets are written only under the current epoch,
-- so a member that lost its lease can never move an offset.
create table consumer_partitions (
    consumer    text    not null,
    topic       text    not null,
    partition   integer not null,
    -- The next offset to handle; null until the first record (a first
    -- start begins at the Kafka group's committed offset, else the start).
    next_offset bigint,
    epoch       bigint  not null default 0,
    owner       text,
    primary key (consumer, topic, partition)
);
