//! Failpoints: named places where a fault test makes a process die the way
//! a crash would (no unwinding, no flush, no shutdown). Armed by listing
//! names, comma-separated, in `TICKETING_FAILPOINTS`; unset in production.
//!
//! | name | where |
//! |---|---|
//! | `payment.after_psp_charge` | the PSP accepted a charge; its outcome is not recorded yet |

/// The environment variable that arms failpoints.
pub const ENV: &str = "TICKETING_FAILPOINTS";

/// Aborts the process if failpoint `name` is armed.
pub fn crash_if_armed(name: &str) {
    if std::env::var(ENV).is_ok_and(|armed| armed.split(',').any(|armed| armed.trim() == name)) {
        tracing::error!(failpoint = name, "failpoint armed: aborting the process");
        std::process::abort();
    }
}
