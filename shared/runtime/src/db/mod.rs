//! Connecting to PostgreSQL: each service owns one database on the server,
//! creates it when missing and runs the shared crates' migrations, then
//! its own.

use std::{str::FromStr, time::Duration};

mod kept;
pub use kept::{Kept, KeptConnection, KEEP_FOR};

use sqlx::{
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
    ConnectOptions, Connection, PgConnection, PgPool,
};

/// Errors while preparing a service database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL does not parse.
    #[error("DATABASE_URL is not a PostgreSQL URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// The server does not answer, or refuses the login.
    #[error("cannot connect to the PostgreSQL server at DATABASE_URL {url}: {source}")]
    Unreachable {
        /// The URL, its password masked.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database name is not a plain identifier.
    #[error("invalid database name `{0}`: use lowercase letters, digits and underscores")]
    InvalidName(String),
    /// PostgreSQL refused or failed a statement.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("running migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database does not exist, and this caller may not create it.
    #[error("database `{database}` does not exist on the server at DATABASE_URL {url}: run `ticketing migrate` first (or check the database name)")]
    Missing {
        /// The database asked for.
        database: String,
        /// The URL, its password masked.
        url: String,
    },
    /// The database lacks migrations this build needs.
    #[error("database `{database}` lacks migrations {missing:?}: run `ticketing migrate` (the migration job) first")]
    NotMigrated {
        /// The database.
        database: String,
        /// The versions not applied.
        missing: Vec<i64>,
    },
}

fn sql(context: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |source| DbError::Sql { context, source }
}

/// A pooled connection idle at least this long is pinged before use.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// Connects to `database` on the server named by `server_url`, creating it
/// first if it does not exist, and runs the shared migrations then `own`.
pub async fn connect_service_db(
    server_url: &str,
    database: &str,
    max_connections: u32,
    own: &Migrator,
) -> Result<PgPool, DbError> {
    create_database_if_missing(server_url, database).await?;
    let pool = connect(server_url, database, max_connections).await?;
    migrate(&pool, own).await?;
    Ok(pool)
}

/// A service's pool on `database`: prepared (created if missing, migrated)
/// when `args.database_migrate`, else only checked ([`connect_existing_db`]).
pub async fn open_service_db(
    args: &crate::config::DatabaseArgs,
    database: &str,
    own: &Migrator,
) -> Result<PgPool, DbError> {
    let (url, size) = (args.url(), args.database_max_connections);
    if args.database_migrate {
        connect_service_db(url, database, size, own).await
    } else {
        connect_existing_db(url, database, size, own).await
    }
}

/// Connects to `database`, which must exist and carry every migration this
/// build knows (the shared ones and `own`): never creates or migrates
/// anything, for read commands and for services whose migrations a job
/// with the owner role runs.
pub async fn connect_existing_db(
    server_url: &str,
    database: &str,
    max_connections: u32,
    own: &Migrator,
) -> Result<PgPool, DbError> {
    let pool = connect(server_url, database, max_connections).await.map_err(|error| match error {
        DbError::Sql { source: sqlx::Error::Database(e), .. } if e.code().as_deref() == Some("3D000") => {
            DbError::Missing { database: database.to_owned(), url: masked(server_url) }
        }
        other => other,
    })?;
    let applied: Vec<i64> =
        match sqlx::query_scalar("select version from _sqlx_migrations where success").fetch_all(&pool).await {
            Ok(applied) => applied,
            // No migrations table: nothing was ever migrated.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
            Err(e) => return Err(sql("reading the applied migrations")(e)),
        };
    let missing: Vec<i64> = [&kernel::MIGRATIONS, &messaging::MIGRATIONS, &crate::MIGRATIONS, own]
        .iter()
        .flat_map(|migrator| migrator.iter())
        .map(|migration| migration.version)
        .filter(|version| !applied.contains(version))
        .collect();
    if !missing.is_empty() {
        return Err(DbError::NotMigrated { database: database.to_owned(), missing });
    }
    Ok(pool)
}

async fn connect(server_url: &str, database: &str, max_connections: u32) -> Result<PgPool, DbError> {
    if database.is_empty() || !database.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(DbError::InvalidName(database.to_owned()));
    }
    let options = PgConnectOptions::from_str(server_url)
        .map_err(DbError::InvalidUrl)?
        .database(database)
        // No JIT: every statement here is short, and PostgreSQL's cost
        // guess sent the global log's read (1,000 events) to LLVM, which
        // spent 105 of its 146 ms compiling.
        //
        // Generic plans: every statement is prepared once per connection,
        // but under the default (`auto`) a statement over `unnest($n)` or
        // `= any($n)` (the hold, the event append, the catalog read, the
        // batched joins) never earns its generic plan: with the array unknown the
        // plan's estimate is ten rows against the custom plans' one, so
        // PostgreSQL planned it again on every execution, a tenth of its
        // CPU per booking. Every statement here is by key or by index
        // range, where the plan does not depend on the values.
        .options([("jit", "off"), ("plan_cache_mode", "force_generic_plan")])
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    pool_options(max_connections).connect_with(options).await.map_err(sql("connecting to the service database"))
}

/// A second, small pool on the same database for the work beside requests
/// (outbox relay, consumer, projection, sweeper, purge, readiness), so that
/// a burst of requests never waits behind it, nor it behind them.
/// Connections open on first use.
pub fn background_pool(requests: &PgPool, connections: u32) -> PgPool {
    pool_options(connections).connect_lazy_with(requests.connect_options().as_ref().clone())
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        // No ping on every checkout (a round trip per request under load):
        // only a connection that sat idle for a while is checked, which is
        // when the server may have gone away (a restart, an idle cut-off).
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// Runs the shared crates' migrations (kernel, messaging, runtime), then
/// the service's own. All sets live in one `_sqlx_migrations` table, so
/// each ignores the others' versions.
pub async fn migrate(pool: &PgPool, own: &Migrator) -> Result<(), DbError> {
    for shared in [&kernel::MIGRATIONS, &messaging::MIGRATIONS, &crate::MIGRATIONS] {
        run_ignoring_missing(shared, pool).await?;
    }
    run_ignoring_missing(own, pool).await?;
    Ok(())
}

async fn run_ignoring_missing(migrator: &Migrator, pool: &PgPool) -> Result<(), DbError> {
    let migrator = Migrator {
        migrations: migrator.migrations.clone(),
        ignore_missing: true,
        locking: migrator.locking,
        no_tx: migrator.no_tx,
    };
    migrator.run(pool).await?;
    Ok(())
}

/// `url` with its password replaced by `***`, for messages and logs.
pub fn masked(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// Creates `database` on the server if it does not exist yet. Safe to race:
/// a concurrent creator's "already exists" counts as success.
pub async fn create_database_if_missing(server_url: &str, database: &str) -> Result<(), DbError> {
    if database.is_empty() || !database.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(DbError::InvalidName(database.to_owned()));
    }
    let options = PgConnectOptions::from_str(server_url).map_err(DbError::InvalidUrl)?;
    let mut conn = PgConnection::connect_with(&options)
        .await
        .map_err(|source| DbError::Unreachable { url: masked(server_url), source })?;
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(database)
        .fetch_one(&mut conn)
        .await
        .map_err(sql("looking up the service database"))?;
    if !exists {
        // The name is checked above to be a plain identifier.
        let created = sqlx::query(&format!("create database {database}")).execute(&mut conn).await;
        match created {
            Ok(_) => tracing::info!(database, "created database"),
            // duplicate_database, or the catalog's unique index when two
            // replicas create it at the same instant.
            Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(e) => return Err(sql("creating the service database")(e)),
        }
    }
    let _ = conn.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::masked;

    #[test]
    fn a_url_in_a_message_never_shows_its_password() {
        assert_eq!(masked("postgres://app:s3cret@db:5432/postgres"), "postgres://app:***@db:5432/postgres");
        assert_eq!(masked("postgres://postgres@localhost/postgres"), "postgres://postgres@localhost/postgres");
        assert_eq!(masked("::"), "(not a URL)");
    }
}
