//! The database settings every service has (a clap argument group with
//! env-var twins), and the duration syntax of the command line.

use std::time::Duration;

use clap::Args;

/// Where PostgreSQL is and which database this service owns.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL server URL; the service creates its own database on it if
    /// missing [default: postgres://postgres@localhost:5432/postgres]. Unset,
    /// `ticketing dev` starts a private PostgreSQL when nothing answers there.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Maximum connections in this service's pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// Connections of this service's background pool (outbox relay,
    /// consumer, sweeper, purge, readiness), beside the request pool. A
    /// replica opens at most both pools plus two sessions (relay and
    /// partition leases): see docs/PRODUCTION.md for the budget.
    #[arg(long, env = "DATABASE_BACKGROUND_CONNECTIONS", default_value_t = 12,
        value_parser = clap::value_parser!(u32).range(4..))]
    pub database_background_connections: u32,
    /// Whether a service creates its database and runs its migrations at
    /// start. With false it only checks that they ran, so its role needs
    /// neither CREATEDB nor ownership: `ticketing migrate`, run by a job
    /// with the owner role, prepares the database before a rollout.
    #[arg(long, env = "DATABASE_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub database_migrate: bool,
}

/// The server `DatabaseArgs` names when `DATABASE_URL` is unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/postgres";

impl DatabaseArgs {
    /// The PostgreSQL server URL (the default when none was given).
    pub fn url(&self) -> &str {
        self.database_url.as_deref().unwrap_or(DEFAULT_DATABASE_URL)
    }
}

/// Parses durations such as `500ms`, `30s`, `10m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration such as 30s, 10m or 1h"))?;
    let per_unit: u64 = match unit {
        "ms" => return Ok(Duration::from_millis(value)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit `{unit}` in `{text}` (use ms, s, m, h or d)")),
    };
    let seconds = value.checked_mul(per_unit).ok_or_else(|| format!("`{text}` is too long a duration"))?;
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("42"), Ok(Duration::from_secs(42)));
        assert!(parse_duration("1 fortnight").is_err());
        assert!(parse_duration("18446744073709551615h").is_err());
        assert!(parse_duration("").is_err());
    }
}
