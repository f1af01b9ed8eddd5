//! What booking-service and payment-service must agree on beyond their
//! events: the payment rules both apply ([`PaymentPolicy`], set once for
//! both) and how a booking id and its payment intent id derive from each
//! other ([`ids`]). Business rules, kept out of any crate's configuration
//! plumbing.

pub mod ids;
mod policy;

pub use policy::PaymentPolicy;
