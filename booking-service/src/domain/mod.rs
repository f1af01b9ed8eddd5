//! Pure booking logic: no I/O, no async, no clock. Every decision takes
//! `now` as an argument and returns events, so it is tested by
//! given-events / when-command / then-events.

pub mod booking;
pub mod catalog;
pub mod waiting_room;
