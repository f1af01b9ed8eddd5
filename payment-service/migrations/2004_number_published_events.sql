-- Numbers the payment events published before `events.sequence` existed
-- (the charge attempts, the intent's closing and the refund bookkeeping
-- stay unnumbered). Events are otherwise append-only.
alter table events disable trigger events_append_only;
update events e set sequence = n.sequence
  from (select global_position,
               row_number() over (partition by stream_id order by stream_version) as sequence
          from events
         where stream_type = 'payment_intent'
           and event_type in ('PaymentIntentCreated', 'PaymentSucceeded', 'PaymentFailed', 'PaymentRefunded')) n
 where e.global_position = n.global_position and e.sequence is null;
alter table events enable trigger events_append_only;
