//! The payment rules both services apply.

use clap::Args;

/// Payment rules both services apply (they must agree, so they are set once).
#[derive(Debug, Clone, Args)]
pub struct PaymentPolicy {
    /// Client-error declines after which a booking fails and its intent stops being payable.
    #[arg(long, env = "MAX_PAYMENT_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_payment_attempts: u32,
    /// No charge starts this close (seconds) to the end of a seat hold.
    #[arg(long, env = "PAYMENT_SAFETY_MARGIN_SECS", default_value_t = 5)]
    pub payment_safety_margin_secs: u32,
}

impl PaymentPolicy {
    /// `max_payment_attempts` as the domain's integer type.
    pub fn max_attempts(&self) -> i32 {
        i32::try_from(self.max_payment_attempts).unwrap_or(i32::MAX)
    }

    /// The safety margin as a duration.
    pub fn safety_margin(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::from(self.payment_safety_margin_secs))
    }
}
