-- Numbers the booking events published before `events.sequence` existed
-- (internal events, PaymentAdmitted, PaymentDeclined and BookingRefunded,
-- stay unnumbered). Events are otherwise append-only.
alter table events disable trigger events_append_only;
update events e set sequence = n.sequence
  from (select global_position,
               row_number() over (partition by stream_id order by stream_version) as sequence
          from events
         where stream_type = 'booking'
           and event_type in ('SeatLocked', 'BookingConfirmed', 'BookingCancelled', 'BookingExpired', 'BookingFailed')) n
 where e.global_position = n.global_position and e.sequence is null;
alter table events enable trigger events_append_only;
