//! Pure payment logic: the PaymentIntent aggregate and the double-entry
//! ledger postings. No I/O, no clock: `now` is an argument.

pub mod intent;
pub mod ledger;
