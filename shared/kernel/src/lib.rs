//! The event-sourcing kernel. A domain type says what its stream is
//! called, how it decides and how it folds ([`aggregate::Aggregate`], pure);
//! this crate stores its events in PostgreSQL with optimistic concurrency
//! ([`event_store`]), runs a command against it and retries one that lost a
//! race ([`aggregate::execute`]), reads every stream's events as one log
//! in commit order ([`global_log`]), and keeps read models in step with
//! that log ([`projection`]). It knows nothing of Kafka or gRPC: the
//! outbox relay and the consumers build on it from `messaging`.

pub mod aggregate;
pub mod event_store;
pub mod global_log;
pub mod projection;

pub use global_log::{LogPosition, WakeUp};

/// The migrations of the kernel's tables (events, checkpoints, the inbox
/// table its first migration also created). Run by `runtime::db::migrate`
/// beside the other crates' and each service's own.
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A stable 64-bit PostgreSQL advisory-lock key for a name (FNV-1a: the
/// same in every build and process, unlike `DefaultHasher`).
pub fn advisory_key(name: &str) -> i64 {
    use std::hash::Hasher;
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(name.as_bytes());
    i64::from_ne_bytes(hasher.finish().to_ne_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn advisory_keys_are_fnv_1a_and_stable_across_releases() {
        // FNV-1a of "a" is 0xaf63dc4c8601ec8c; a changed key would let an
        // old and a new process hold "the same" lock at once.
        assert_eq!(super::advisory_key("a"), i64::from_ne_bytes(0xaf63_dc4c_8601_ec8c_u64.to_ne_bytes()));
    }
}
